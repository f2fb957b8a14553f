"""Pieces every score-matching loss shares: the time draw and the weighted pixel-sum error.

The losses themselves live with their methods (``gbm.methods``): M-DSM/M-ESM for GBM (SPEC §2), DSM for the
additive SDEs (SPEC §5), hybrid score matching for CLD (SPEC §6). Each samples a time, perturbs the data
with the SDE's closed-form kernel and weights an error.
"""

from __future__ import annotations

from typing import Callable

import torch

from gbm.seeding import Generator

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pixel_sum_batch_mean(weight: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """``mean_b weight_b * sum_pixels error_b^2``."""
    return (weight * error.pow(2).flatten(1).sum(dim=1)).mean()


def uniform_time(n: int, eps: float, T: float, generator: Generator = None) -> torch.Tensor:
    """``n`` times ``t ~ U(eps, T)`` (on the CPU; a per-sample generator falls back to the global stream)."""
    u = torch.rand(n, generator=generator if isinstance(generator, torch.Generator) else None)
    return eps + u * (T - eps)
