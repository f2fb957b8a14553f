"""Time grids of the reverse-time samplers: named, shared by every sampler of every method.

A grid is ``steps + 1`` times in float64, strictly decreasing from ``sde.T`` to the sampler's end time.
"""

from __future__ import annotations

import torch

from gbm.sde import SDE


def uniform_t(T: float, end_time: float, steps: int) -> torch.Tensor:
    """Equally spaced times (score_sde's grid)."""
    return torch.linspace(T, end_time, steps + 1, dtype=torch.float64)


def quadratic(T: float, end_time: float, steps: int) -> torch.Tensor:
    """Times quadratic in the step index: finer near the data end (CLD's default, SPEC §6)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return end_time + (T - end_time) * s**2


GRIDS = {"uniform-t": uniform_t, "quadratic": quadratic}
ALIASES = {"uniform": "uniform-t"}


def time_grid(sde: SDE, steps: int, grid: str = "uniform-t", end_time: float | None = None) -> torch.Tensor:
    """``steps + 1`` times of the named ``grid`` from ``sde.T`` down to ``end_time`` (default the SDE's)."""
    name = ALIASES.get(grid, grid)
    if name not in GRIDS:
        raise ValueError(f"grid: unknown time grid {grid!r}; choose one of {sorted(GRIDS)}")
    end = sde.end_time if end_time is None else end_time
    if not 0 <= end < sde.T:
        raise ValueError(f"end_time: must lie in [0, T = {sde.T}), got {end}")
    return GRIDS[name](sde.T, end, steps)
