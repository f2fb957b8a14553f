"""Time grids of the reverse-time samplers: named, shared by every sampler of every method.

A grid is ``steps + 1`` times in float64, strictly decreasing from ``sde.T`` to an end time. The grids:

- ``uniform-t``: equally spaced in t (score_sde's grid; the paper's);
- ``sqrt-t``: equally spaced in sqrt(t), finer near the data (GBM's log-noise std is sigma sqrt(t), so this
  grid is uniform in GBM's noise scale; SPEC §1a);
- ``quadratic``: quadratic in the step index (CLD's default, SPEC §6);
- ``rho``: Karras et al. (2022)'s schedule in the SDE's noise scale ``s = sde.noise_scale(t)``,
  ``s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho`` with ``rho = 7``, mapped back to t
  by ``sde.time_of_noise_scale``.

The end of sampling means one thing for every method and sampler: the state ends at t = 0, and the last
update, from the last network level, is noise-free (GBM Dale–Langevin: the exact log-space Tweedie step;
additive SDEs: the reverse-diffusion mean, like score_sde's last step; CLD: its denoising step). A fixed-grid
sampler's levels are the named grid's times from ``T`` towards ``end_time`` (default ``sde.end_time``), and
its final update goes from the last of them to 0 instead of to ``end_time`` (``sampling_levels``); samplers
that integrate to ``end_time`` (the ODE solvers, CLD's) take their final update from ``end_time`` to 0.
"""

from __future__ import annotations

from typing import Callable

import torch

from gbm.sde import SDE

#: Karras et al. (2022)'s exponent of the ``rho`` grid.
RHO = 7.0


def _fraction(steps: int) -> torch.Tensor:
    """``i / steps`` for ``i = 0..steps`` in float64."""
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


def uniform_t(sde: SDE, end_time: float, steps: int) -> torch.Tensor:
    """Equally spaced times (score_sde's grid)."""
    return torch.linspace(sde.T, end_time, steps + 1, dtype=torch.float64)


def sqrt_t(sde: SDE, end_time: float, steps: int) -> torch.Tensor:
    """Times equally spaced in ``sqrt(t)``: ``t_i = (sqrt(T) + i/N (sqrt(end) - sqrt(T)))^2`` (SPEC §1a)."""
    root_T, root_end = sde.T**0.5, end_time**0.5
    return (root_T + (root_end - root_T) * _fraction(steps)) ** 2


def quadratic(sde: SDE, end_time: float, steps: int) -> torch.Tensor:
    """Times quadratic in the step index: ``t_i = end + (T - end) (1 - i/N)^2`` (CLD's default, SPEC §6)."""
    return end_time + (sde.T - end_time) * torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** 2


def rho(sde: SDE, end_time: float, steps: int) -> torch.Tensor:
    """Karras et al. (2022)'s rho = 7 schedule in the SDE's noise scale, mapped back to times."""
    s_max = sde.noise_scale(torch.tensor(sde.T, dtype=torch.float64)) ** (1 / RHO)
    s_min = sde.noise_scale(torch.tensor(end_time, dtype=torch.float64)) ** (1 / RHO)
    if not s_min > 0:
        raise ValueError(f"end_time: the 'rho' grid needs an end time with a positive noise scale; {end_time} has "
                         f"none for the {sde.name!r} SDE (set end_time, e.g. 1e-3)")
    levels = (s_max + (s_min - s_max) * _fraction(steps)) ** RHO
    return sde.time_of_noise_scale(levels).to(torch.float64)


GRIDS: dict[str, Callable[[SDE, float, int], torch.Tensor]] = {
    "uniform-t": uniform_t,
    "sqrt-t": sqrt_t,
    "quadratic": quadratic,
    "rho": rho,
}
ALIASES = {"uniform": "uniform-t"}


def check_grid(grid: str) -> str:
    """The canonical name of ``grid``; an unknown name is an error naming the ``grid`` option."""
    name = ALIASES.get(grid, grid)
    if name not in GRIDS:
        raise ValueError(f"grid: unknown time grid {grid!r}; choose one of {sorted(GRIDS)}")
    return name


def resolve_end_time(sde: SDE, end_time: float | None) -> float:
    """The sampler's end time: ``end_time`` if given (checked to lie in ``[0, T)``), else ``sde.end_time``."""
    end = sde.end_time if end_time is None else end_time
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0 <= end < sde.T:
        raise ValueError(f"end_time: must be a number in [0, T = {sde.T}), got {end!r}")
    return float(end)


#: The one meaning of the end of sampling, recorded with every sample set.
END_OF_SAMPLING = ("the state ends at t = 0: the grid runs from T to end_time, and the update from its last network "
                   "level, noise-free, goes to t = 0 instead of end_time")


def sampling_levels(sde: SDE, steps: int, grid: str = "uniform-t", end_time: float | None = None) -> torch.Tensor:
    """The times a fixed-grid sampler visits: the named grid's ``steps + 1`` times from ``T`` to ``end_time``
    (default ``sde.end_time``) with the last replaced by 0. Its first ``steps`` times are the network levels;
    the update from the last of them is the sampler's final, noise-free one, and it lands at t = 0.

    ``end_time`` shapes the grid (how close to 0 its levels come); the state never stops there. Why not a
    last network level at ``end_time`` followed by a tiny step to 0: on VP's uniform grid that puts a long
    Euler–Maruyama step with noise just before it (from 0.054 to 0.001 at 20 steps), whose excess noise the
    tiny final step cannot remove (measured on the default benchmark's VP models: FID +15 to +35)."""
    levels = time_grid(sde, steps, grid, end_time)
    levels[-1] = 0.0
    return levels


def last_network_level(sde: SDE, steps: int, grid: str = "uniform-t", end_time: float | None = None) -> float:
    """The time of a fixed-grid sampler's last network call (``sampling_levels``), from which it steps to 0."""
    return float(sampling_levels(sde, steps, grid, end_time)[-2])


def time_grid(sde: SDE, steps: int, grid: str = "uniform-t", end_time: float | None = None) -> torch.Tensor:
    """``steps + 1`` strictly decreasing times of the named ``grid`` from ``sde.T`` down to ``end_time``
    (default the SDE's)."""
    name = check_grid(grid)
    end = resolve_end_time(sde, end_time)
    times = GRIDS[name](sde, end, steps)
    times[0], times[-1] = sde.T, end
    if not (times[1:] < times[:-1]).all():
        raise ValueError(f"grid: the {name!r} grid of {steps} steps down to {end} has repeated times "
                         "(too many steps for float64 or for the SDE's noise-scale inverse)")
    return times
