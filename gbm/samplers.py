"""Generic reverse-time samplers any SDE of the interface can use (SPEC §5): Euler–Maruyama,
predictor–corrector and the probability-flow ODE.

A sampler is a function ``(sde, score_fn, x, *, steps, generator, **options) -> (x, stats)``; methods list
the samplers they accept (``gbm.methods``), and ``gbm.sampling.sample`` runs one. Time runs from ``sde.T``
down to the end time on a named grid (``gbm.grids``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gbm.grids import time_grid
from gbm.seeding import randn_like

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SamplerFn = Callable[..., tuple[torch.Tensor, dict]]


def times_like(t: float, x: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of the time ``t``, one per sample of ``x``."""
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def levels(steps: int, progress: bool, desc: str):
    """``range(steps)`` with an optional progress bar."""
    return tqdm(range(steps), desc=desc, disable=not progress, leave=False)


def reverse_diffusion_step(sde, score_fn, x, t, dt, generator, last):
    """One Euler–Maruyama step of the reverse SDE from ``t`` to ``t - dt``; the last returns the mean."""
    tt = times_like(t, x)
    x_mean = x - sde.reverse_drift(x, tt, score_fn(x, tt)) * dt
    if last:
        return x_mean
    return x_mean + sde.drift_diffusion(x, tt)[1] * math.sqrt(dt) * randn_like(x, generator)


def euler_maruyama(sde, score_fn, x, *, steps, generator=None, progress=False):
    """Euler–Maruyama on the reverse-time SDE."""
    times = time_grid(sde, steps).tolist()
    for k in levels(steps, progress, "em"):
        x = reverse_diffusion_step(sde, score_fn, x, times[k], times[k] - times[k + 1], generator, k == steps - 1)
    return x, {}


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def predictor_corrector(sde, score_fn, x, *, steps, generator=None, snr=0.16, corrector_steps=1, progress=False):
    """Predictor–corrector: Langevin corrector (signal-to-noise ``snr``) then a reverse-diffusion predictor.

    The Langevin step size uses each sample's own gradient and noise norms (score_sde uses batch means),
    so an image does not depend on the rest of its batch.
    """
    times = time_grid(sde, steps).tolist()
    for k in levels(steps, progress, "pc"):
        t, dt = times[k], times[k] - times[k + 1]
        tt = times_like(t, x)
        alpha = sde.langevin_alpha(t, dt)
        for _ in range(corrector_steps):
            grad = score_fn(x, tt)
            noise = randn_like(x, generator)
            step = 2 * alpha * (snr * _per_sample_norm(noise) / _per_sample_norm(grad).clamp_min(1e-12)) ** 2
            x = x + step * grad + torch.sqrt(2 * step) * noise
        x = reverse_diffusion_step(sde, score_fn, x, t, dt, generator, k == steps - 1)
    return x, {}


def probability_flow(sde, score_fn, x, *, steps, generator=None, solver="rk45", rtol=1e-5, atol=1e-5, progress=False):
    """Probability-flow ODE from ``T`` to the end time: adaptive RK45 (SciPy, ``rtol``/``atol``), or
    fixed-step Heun on ``steps`` intervals with ``solver="heun"``. Deterministic; ``generator`` unused."""
    if solver == "heun":
        times = time_grid(sde, steps).tolist()
        for k in levels(steps, progress, "ode"):
            t0, t1 = times[k], times[k + 1]
            d0 = sde.probability_flow_drift(x, times_like(t0, x), score_fn(x, times_like(t0, x)))
            x_pred = x + (t1 - t0) * d0
            d1 = sde.probability_flow_drift(x_pred, times_like(t1, x), score_fn(x_pred, times_like(t1, x)))
            x = x + (t1 - t0) * 0.5 * (d0 + d1)
        return x, {"solver": "heun"}
    if solver != "rk45":
        raise ValueError(f"solver: unknown ODE solver {solver!r}; choose 'rk45' or 'heun'")
    from scipy.integrate import solve_ivp

    shape, device, dtype = x.shape, x.device, x.dtype

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        tt = times_like(t, xt)
        return sde.probability_flow_drift(xt, tt, score_fn(xt, tt)).reshape(-1).double().cpu().numpy()

    solution = solve_ivp(rhs, (sde.T, sde.end_time), x.reshape(-1).double().cpu().numpy(), rtol=rtol, atol=atol,
                         method="RK45")
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE failed: {solution.message}")
    x = torch.from_numpy(solution.y[:, -1]).to(device=device, dtype=dtype).reshape(shape)
    return x, {"solver": "rk45", "rtol": rtol, "atol": atol}


def check_generic_options(sde, sampler: str, steps: int, options: dict) -> None:
    """Refuse generic-sampler settings that cannot be stable: the predictor–corrector's Langevin step size is
    ``2 alpha (snr |z| / |s|)^2`` with ``alpha = sde.langevin_alpha(t, dt)``; where ``alpha <= 0`` (VP:
    ``beta(t) dt >= 1``) the corrector's noise ``sqrt(2 step)`` is NaN from the first level on."""
    if sampler != "pc":
        return
    times = time_grid(sde, steps).tolist()
    worst = min((sde.langevin_alpha(times[k], times[k] - times[k + 1]), times[k]) for k in range(steps))
    if worst[0] <= 0:
        raise ValueError(f"steps: {steps} is too few for the predictor-corrector sampler on the {sde.name!r} SDE: "
                         f"its Langevin step factor 1 - beta(t) dt is {worst[0]:.3g} <= 0 at t = {worst[1]:.3g} "
                         f"(dt = {times[0] - times[1]:.3g}), which makes the corrector's noise NaN; use more steps")


#: The generic samplers by name, for methods to list.
GENERIC_SAMPLERS: dict[str, SamplerFn] = {"em": euler_maruyama, "pc": predictor_corrector, "ode": probability_flow}
