"""Score-matching losses: M-DSM and M-ESM for GBM (SPEC §2), DSM for the additive SDEs (SPEC §5).

Each loss samples a time, perturbs the data with the SDE's closed-form kernel and weights an error;
``score_fn(x_t, t)`` returns the score the SDE declares (Hyvärinen for GBM, Stein for additive).
"""

from __future__ import annotations

from typing import Callable

import torch

from gbm.sde import GBM, SDE, check_positive
from gbm.seeding import Generator, randn

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pixel_sum_batch_mean(weight: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """``mean_b weight_b * sum_pixels error_b^2``."""
    return (weight * error.pow(2).flatten(1).sum(dim=1)).mean()


class MDSMLoss:
    """Multiplicative denoising score matching (SPEC §2).

    ``E_t lambda(t) E ||h_theta(x_t, t) - x_t * grad log p(x_t | x_0)||^2`` with ``lambda = (sigma^2 t)^2``,
    ``t = k / num_levels`` for ``k ~ U{1, ..., num_levels - 1}``; the same ``t`` perturbs and weights.
    """

    def __init__(self, sde: GBM, num_levels: int = 1000):
        if not isinstance(sde, GBM):
            raise ValueError(f"loss: M-DSM needs the GBM SDE, got {sde.name!r}")
        if num_levels < 2:
            raise ValueError(f"loss.num_levels must be >= 2, got {num_levels}")
        self.sde, self.num_levels = sde, num_levels

    def sample_time(self, n: int, generator: Generator = None) -> torch.Tensor:
        k = torch.randint(1, self.num_levels, (n,), generator=generator if isinstance(generator, torch.Generator) else None)
        return k.float() * (self.sde.T / self.num_levels)

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        t = self.sample_time(x0.shape[0], generator).to(x0.device)
        z = randn(x0.shape, generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, z)
        target = self.sde.conditional_score(x0, t, z)
        return _pixel_sum_batch_mean(self.sde.loss_weight(t), score_fn(x_t, t) - target)


class MESMLoss(MDSMLoss):
    """Multiplicative explicit score matching: M-DSM with the true marginal Hyvärinen score as target.

    ``true_score(x_t, t)`` is the exact ``x * grad log p_t(x)``. The paper proves
    ``M-DSM = M-ESM + const`` (constant in the model).
    """

    def __init__(self, sde: GBM, true_score: ScoreFn, num_levels: int = 1000):
        super().__init__(sde, num_levels)
        self.true_score = true_score

    def __call__(self, score_fn, x0, generator=None):
        t = self.sample_time(x0.shape[0], generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, randn(x0.shape, generator).to(x0.device))
        return _pixel_sum_batch_mean(self.sde.loss_weight(t), score_fn(x_t, t) - self.true_score(x_t, t))


class DSMLoss:
    """Denoising score matching for additive SDEs (SPEC §5): ``t ~ U(eps, T)``, weight ``std^2``
    (epsilon prediction) or, with ``likelihood_weighting``, ``g(t)^2``."""

    def __init__(self, sde: SDE, likelihood_weighting: bool = False, eps: float = 1e-5):
        if sde.score_kind != "stein":
            raise ValueError(f"loss: DSM needs an additive SDE, got {sde.name!r}")
        self.sde, self.likelihood_weighting, self.eps = sde, likelihood_weighting, eps

    def __call__(self, score_fn, x0, generator=None):
        u = torch.rand(x0.shape[0], generator=generator if isinstance(generator, torch.Generator) else None)
        t = (self.eps + u * (self.sde.T - self.eps)).to(x0.device)
        z = randn(x0.shape, generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, z)
        target = self.sde.conditional_score(x0, t, z)
        weight = self.sde.likelihood_weight(t) if self.likelihood_weighting else self.sde.loss_weight(t)
        return _pixel_sum_batch_mean(weight, score_fn(x_t, t) - target)


def make_loss(sde: SDE, *, num_levels: int = 1000, likelihood_weighting: bool = False):
    """The training loss for ``sde``: M-DSM for GBM, hybrid score matching for CLD, DSM for the additive SDEs."""
    if sde.name == "cld":
        from gbm.cld import HSMLoss

        if likelihood_weighting:
            raise ValueError("loss.likelihood_weighting: not defined for CLD's hybrid score matching")
        return HSMLoss(sde)
    if isinstance(sde, GBM):
        if likelihood_weighting:
            raise ValueError("loss.likelihood_weighting: only defined for the additive SDEs")
        return MDSMLoss(sde, num_levels)
    return DSMLoss(sde, likelihood_weighting)


def check_training_data(sde: SDE, x0: torch.Tensor) -> None:
    """Refuse data the SDE cannot model (non-positive values for GBM), before training starts."""
    if isinstance(sde, GBM):
        check_positive(x0, "data")
