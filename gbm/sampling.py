"""Reverse-time samplers behind one entry point, ``sample`` (SPEC §3, §5).

Each sampler is a function ``(sde, score_fn, x, *, steps, generator, **options) -> (x, stats)`` registered
by name; ``sample`` validates the request before any work, counts network calls (NFE) and returns a
``SampleResult``. Time runs from ``sde.T`` down to ``sde.end_time`` on ``steps`` equal intervals.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gbm.sde import GBM, SDE, check_positive
from gbm.seeding import Generator, randn_like

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SamplerFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclass
class SampleResult:
    """Samples ``x`` at the end time, the number of network calls used, and sampler statistics."""

    x: torch.Tensor
    nfe: int
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerSpec:
    fn: SamplerFn
    sde_kind: str  # "gbm" (multiplicative), "additive", or an SDE name such as "cld"


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, sde_kind: str) -> Callable[[SamplerFn], SamplerFn]:
    """Register a sampler function under ``name`` for SDEs of ``sde_kind``."""

    def decorate(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name] = SamplerSpec(fn, sde_kind)
        return fn

    return decorate


def _sde_kind(sde: SDE) -> str:
    if isinstance(sde, GBM):
        return "gbm"
    return "additive" if sde.score_kind == "stein" and sde.name in ("vp", "subvp", "ve") else sde.name


def validate_request(sde: SDE, method: str, steps: int, options: dict) -> SamplerSpec:
    """Check a sampling request, naming the offending field; returns the sampler."""
    if method not in SAMPLERS:
        raise ValueError(f"sampler: unknown method {method!r}; choose one of {sorted(SAMPLERS)}")
    spec = SAMPLERS[method]
    if spec.sde_kind != _sde_kind(sde):
        usable = sorted(n for n, s in SAMPLERS.items() if s.sde_kind == _sde_kind(sde))
        raise ValueError(f"sampler: method {method!r} does not apply to the {sde.name!r} SDE; use one of {usable}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps: must be a positive integer, got {steps!r}")
    accepted = {
        p.name for p in inspect.signature(spec.fn).parameters.values() if p.kind == p.KEYWORD_ONLY
    } - {"steps", "generator"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"sampler options: {sorted(unknown)} not understood by {method!r}; known: {sorted(accepted)}")
    return spec


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: torch.Tensor,
    *,
    method: str,
    steps: int,
    generator: Generator = None,
    **options,
) -> SampleResult:
    """Run the reverse-time sampler ``method`` for ``steps`` levels from ``x_T`` (given by the caller).

    ``score_fn(x, t)`` takes a batch and a 1-D tensor of times and returns the score ``sde`` declares.
    ``generator``: a ``torch.Generator`` or a ``gbm.seeding.PerSampleGenerator`` (image i from seed i).
    """
    spec = validate_request(sde, method, steps, options)
    if isinstance(sde, GBM):
        check_positive(x_T, "x_T")
    calls = 0

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return score_fn(x, t)

    with torch.no_grad():
        x, stats = spec.fn(sde, counted, x_T.clone(), steps=steps, generator=generator, **options)
    return SampleResult(x=x, nfe=calls, stats=stats)


def time_grid(sde: SDE, steps: int, device=None) -> torch.Tensor:
    """``steps + 1`` equally spaced times from ``T`` down to the SDE's end time."""
    return torch.linspace(sde.T, sde.end_time, steps + 1, dtype=torch.float64, device=device)


def _times(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _levels(steps: int, progress: bool, desc: str):
    return tqdm(range(steps), desc=desc, disable=not progress, leave=False)


# --- Multiplicative (GBM) samplers, SPEC §3 -------------------------------------------------------


def sign_agnostic_update(sde: GBM, x, h, delta, noise):
    """Euler–Maruyama step of the ambient reverse SDE:
    ``x <- x [(1 + 2 delta sigma^2 - delta mu) + delta sigma^2 h + sqrt(delta) sigma a z]`` (signs can flip)."""
    s2 = sde.sigma**2
    return x * ((1 + 2 * delta * s2 - delta * sde.mu) + delta * s2 * h + math.sqrt(delta) * sde.sigma * noise)


def dale_langevin_update(sde: GBM, x, h, delta, noise):
    """Exponentiated Euler–Maruyama step in log space (sign-preserving):
    ``x <- x exp(delta sigma^2 h - delta (mu - 1.5 sigma^2) + sqrt(delta) sigma a z)``."""
    s2 = sde.sigma**2
    return x * torch.exp(delta * s2 * h - delta * (sde.mu - 1.5 * s2) + math.sqrt(delta) * sde.sigma * noise)


def _gbm_sampler(update, sde: GBM, score_fn, x, steps, generator, delta, inner_steps, gamma, noise_scale,
                 final_denoise_steps, progress):
    """Levels ``t_k`` from ``T`` down; at each, ``inner_steps`` updates, then ``a <- a * gamma``.

    With the defaults (``delta=None`` -> ``T/steps``, one inner step, ``gamma=1``) this is the exact
    Euler–Maruyama discretisation of the reverse SDE. The final update adds no noise.
    """
    if delta is not None and not delta > 0:
        raise ValueError(f"delta: must be positive, got {delta}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps: must be >= 1, got {inner_steps}")
    if final_denoise_steps < 0:
        raise ValueError(f"final_denoise_steps: must be >= 0, got {final_denoise_steps}")
    times = time_grid(sde, steps).tolist()
    a = noise_scale
    updates = [(times[k], delta or times[k] - times[k + 1], a * gamma**k)
               for k in range(steps) for _ in range(inner_steps)]
    updates += [(times[steps - 1], delta or times[steps - 1] - times[steps], 0.0)] * final_denoise_steps
    for i in _levels(len(updates), progress, "sampling"):
        t, d, scale = updates[i]
        h = score_fn(x, _times(t, x))
        noise = 0.0 if i == len(updates) - 1 or scale == 0 else scale * randn_like(x, generator)
        x = update(sde, x, h, d, noise)
    return x


@register_sampler("sign-agnostic", "gbm")
def sign_agnostic(sde, score_fn, x, *, steps, generator=None, delta=None, inner_steps=1, gamma=1.0,
                  noise_scale=1.0, final_denoise_steps=0, progress=False):
    """Sign-agnostic multiplicative sampler (ambient Euler–Maruyama, SPEC §3)."""
    x = _gbm_sampler(sign_agnostic_update, sde, score_fn, x, steps, generator, delta, inner_steps, gamma,
                     noise_scale, final_denoise_steps, progress)
    return x, {"fraction_negative": (x < 0).float().mean().item()}


@register_sampler("dale-langevin", "gbm")
def dale_langevin(sde, score_fn, x, *, steps, generator=None, delta=None, inner_steps=1, gamma=1.0,
                  noise_scale=1.0, final_denoise_steps=0, progress=False):
    """Sign-preserving Dale–Langevin sampler (exponentiated-gradient update, SPEC §3)."""
    x = _gbm_sampler(dale_langevin_update, sde, score_fn, x, steps, generator, delta, inner_steps, gamma,
                     noise_scale, final_denoise_steps, progress)
    return x, {"fraction_negative": (x <= 0).float().mean().item()}


# --- Additive-SDE samplers, SPEC §5 --------------------------------------------------------------


def _reverse_diffusion_step(sde: SDE, score_fn, x, t, dt, generator, last):
    """One Euler–Maruyama step of the reverse SDE from ``t`` to ``t - dt``; the last returns the mean."""
    tt = _times(t, x)
    x_mean = x - sde.reverse_drift(x, tt, score_fn(x, tt)) * dt
    if last:
        return x_mean
    return x_mean + sde.drift_diffusion(x, tt)[1] * math.sqrt(dt) * randn_like(x, generator)


@register_sampler("em", "additive")
def euler_maruyama(sde, score_fn, x, *, steps, generator=None, progress=False):
    """Euler–Maruyama on the reverse-time SDE."""
    times = time_grid(sde, steps).tolist()
    for k in _levels(steps, progress, "em"):
        x = _reverse_diffusion_step(sde, score_fn, x, times[k], times[k] - times[k + 1], generator, k == steps - 1)
    return x, {}


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


@register_sampler("pc", "additive")
def predictor_corrector(sde, score_fn, x, *, steps, generator=None, snr=0.16, corrector_steps=1, progress=False):
    """Predictor–corrector: Langevin corrector (signal-to-noise ``snr``) then a reverse-diffusion predictor.

    The Langevin step size uses each sample's own gradient and noise norms (score_sde uses batch means),
    so an image does not depend on the rest of its batch.
    """
    times = time_grid(sde, steps).tolist()
    for k in _levels(steps, progress, "pc"):
        t, dt = times[k], times[k] - times[k + 1]
        tt = _times(t, x)
        alpha = 1.0 - sde.beta(t) * dt if hasattr(sde, "beta") else 1.0
        for _ in range(corrector_steps):
            grad = score_fn(x, tt)
            noise = randn_like(x, generator)
            step = 2 * alpha * (snr * _per_sample_norm(noise) / _per_sample_norm(grad).clamp_min(1e-12)) ** 2
            x = x + step * grad + torch.sqrt(2 * step) * noise
        x = _reverse_diffusion_step(sde, score_fn, x, t, dt, generator, k == steps - 1)
    return x, {}


@register_sampler("ode", "additive")
def probability_flow(sde, score_fn, x, *, steps, generator=None, solver="rk45", rtol=1e-5, atol=1e-5, progress=False):
    """Probability-flow ODE from ``T`` to the end time: adaptive RK45 (SciPy, ``rtol``/``atol``), or
    fixed-step Heun on ``steps`` intervals with ``solver="heun"``. Deterministic; ``generator`` unused."""
    if solver == "heun":
        times = time_grid(sde, steps).tolist()
        for k in _levels(steps, progress, "ode"):
            t0, t1 = times[k], times[k + 1]
            d0 = sde.probability_flow_drift(x, _times(t0, x), score_fn(x, _times(t0, x)))
            x_pred = x + (t1 - t0) * d0
            d1 = sde.probability_flow_drift(x_pred, _times(t1, x), score_fn(x_pred, _times(t1, x)))
            x = x + (t1 - t0) * 0.5 * (d0 + d1)
        return x, {"solver": "heun"}
    if solver != "rk45":
        raise ValueError(f"solver: unknown ODE solver {solver!r}; choose 'rk45' or 'heun'")
    from scipy.integrate import solve_ivp

    shape, device, dtype = x.shape, x.device, x.dtype

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        tt = _times(t, xt)
        return sde.probability_flow_drift(xt, tt, score_fn(xt, tt)).reshape(-1).double().cpu().numpy()

    solution = solve_ivp(rhs, (sde.T, sde.end_time), x.reshape(-1).double().cpu().numpy(), rtol=rtol, atol=atol,
                         method="RK45")
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE failed: {solution.message}")
    x = torch.from_numpy(solution.y[:, -1]).to(device=device, dtype=dtype).reshape(shape)
    return x, {"solver": "rk45", "rtol": rtol, "atol": atol}


import gbm.cld  # noqa: E402,F401  (registers CLD's samplers "sscs" and "cld-em"; gbm/cld.py imports this module)
