"""Generic reverse-time samplers any SDE of the interface can use (SPEC §5): Euler–Maruyama,
predictor–corrector and the probability-flow ODE.

A sampler is a function ``(sde, score_fn, x, *, steps, generator, **options) -> (x, stats)``; methods list
the samplers they accept (``gbm.methods``), and ``gbm.sampling.sample`` runs one. Time runs from ``sde.T``
down to the end time on a named grid, and one noise-free final update takes the state from the end time to
t = 0 (``gbm.grids.sampling_levels``: the one meaning of a grid's end for every sampler).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from gbm.grids import resolve_end_time, sampling_levels, time_grid
from gbm.ode import solve_per_sample
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
    """One Euler–Maruyama step of the reverse SDE from ``t`` to ``t - dt``; the last (to t = 0) returns the
    mean."""
    tt = times_like(t, x)
    x_mean = x - sde.reverse_drift(x, tt, score_fn(x, tt)) * dt
    if last:
        return x_mean
    return x_mean + sde.drift_diffusion(x, tt)[1] * math.sqrt(dt) * randn_like(x, generator)


def euler_maruyama(sde, score_fn, x, *, steps, generator=None, grid="uniform-t", end_time=None, progress=False):
    """Euler–Maruyama on the reverse-time SDE: ``steps`` levels of the named time ``grid``, the last at
    ``end_time``, and the final step from it to t = 0 returns the mean (gbm.grids.sampling_levels)."""
    times = sampling_levels(sde, steps, grid, end_time).tolist()
    for k in levels(steps, progress, "em"):
        x = reverse_diffusion_step(sde, score_fn, x, times[k], times[k] - times[k + 1], generator, k == steps - 1)
    return x, {}


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def predictor_corrector(sde, score_fn, x, *, steps, generator=None, snr=0.16, corrector_steps=1, grid="uniform-t",
                        end_time=None, progress=False):
    """Predictor–corrector: Langevin corrector (signal-to-noise ``snr``) then a reverse-diffusion predictor.

    The Langevin step size uses each sample's own gradient and noise norms (score_sde uses batch means),
    so an image does not depend on the rest of its batch. Levels on the named time ``grid``, the last at
    ``end_time``; the last predictor step goes to t = 0 and returns the mean (gbm.grids.sampling_levels).
    """
    times = sampling_levels(sde, steps, grid, end_time).tolist()
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


def probability_flow(sde, score_fn, x, *, steps, generator=None, solver="rk45", rtol=1e-5, atol=1e-5, grid=None,
                     end_time=None, progress=False):
    """Probability-flow ODE from ``T`` to the end time, then the final noise-free reverse-diffusion step (the
    mean) from the end time to t = 0, as every sampler ends (gbm.grids; score_sde's ``denoise``): one network
    call more. Deterministic; ``generator`` unused.

    ``solver="rk45"``: adaptive Dormand–Prince with SciPy's controller and tolerances ``rtol``/``atol``, each
    image with its own step sizes (gbm.ode), so an image does not depend on its batch; ``steps`` and ``grid``
    do not apply. ``solver="heun"``: fixed-step Heun on ``steps`` intervals of the named ``grid``.
    """
    if solver == "heun":
        times = time_grid(sde, steps, grid or "uniform-t", end_time).tolist()
        for k in levels(steps, progress, "ode"):
            t0, t1 = times[k], times[k + 1]
            d0 = sde.probability_flow_drift(x, times_like(t0, x), score_fn(x, times_like(t0, x)))
            x_pred = x + (t1 - t0) * d0
            d1 = sde.probability_flow_drift(x_pred, times_like(t1, x), score_fn(x_pred, times_like(t1, x)))
            x = x + (t1 - t0) * 0.5 * (d0 + d1)
        return final_update(sde, score_fn, x, times[-1]), {"solver": "heun", "grid": grid or "uniform-t"}
    if solver != "rk45":
        raise ValueError(f"solver: unknown ODE solver {solver!r}; choose 'rk45' or 'heun'")
    if grid is not None:
        raise ValueError("grid: the adaptive rk45 solver chooses its own times; a grid needs solver='heun'")
    end = resolve_end_time(sde, end_time)
    shape, dtype = x.shape, x.dtype

    def rhs(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xt = y.to(dtype).reshape(-1, *shape[1:])
        tt = t.to(dtype)
        return sde.probability_flow_drift(xt, tt, score_fn(xt, tt)).reshape(y.shape[0], -1).double()

    y, evaluations = solve_per_sample(rhs, x.reshape(shape[0], -1), sde.T, end, rtol, atol)
    stats = {"solver": "rk45", "rtol": rtol, "atol": atol, "error_control": "per image",
             "nfe_per_image_mean": evaluations.double().mean().item(), "nfe_per_image_max": int(evaluations.max())}
    return final_update(sde, score_fn, y.to(dtype).reshape(shape), end), stats


probability_flow.final_update_from_end_time = True  # recorded by gbm.sampling.time_discretisation


def final_update(sde, score_fn, x, end: float) -> torch.Tensor:
    """The noise-free reverse-diffusion step (its mean) from the end time ``end`` to t = 0."""
    return reverse_diffusion_step(sde, score_fn, x, end, end, None, True) if end > 0 else x


def check_generic_options(sde, sampler: str, steps: int, options: dict) -> None:
    """Refuse generic-sampler settings that cannot be stable: the predictor–corrector's Langevin step size is
    ``2 alpha (snr |z| / |s|)^2`` with ``alpha = sde.langevin_alpha(t, dt)``; where ``alpha <= 0`` (VP:
    ``beta(t) dt >= 1``) the corrector's noise ``sqrt(2 step)`` is NaN from the first level on. Checked on the
    levels the sampler will visit: its ``grid`` and ``end_time`` options."""
    if sampler != "pc":
        return
    times = sampling_levels(sde, steps, options.get("grid") or "uniform-t", options.get("end_time")).tolist()
    worst = min((sde.langevin_alpha(times[k], times[k] - times[k + 1]), times[k]) for k in range(steps))
    if worst[0] <= 0:
        raise ValueError(f"steps: {steps} is too few for the predictor-corrector sampler on the {sde.name!r} SDE: "
                         f"its Langevin step factor 1 - beta(t) dt is {worst[0]:.3g} <= 0 at t = {worst[1]:.3g} "
                         f"(dt = {times[0] - times[1]:.3g}), which makes the corrector's noise NaN; use more steps")


#: The generic samplers by name, for methods to list.
GENERIC_SAMPLERS: dict[str, SamplerFn] = {"em": euler_maruyama, "pc": predictor_corrector, "ode": probability_flow}
