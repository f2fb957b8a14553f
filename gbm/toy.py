"""Toy distributions with known answers: exact diffused scores for testing samplers, and 2-D data.

``LogNormalMixture`` diffused by GBM and ``GaussianMixture`` diffused by an additive SDE stay mixtures of
the same family with closed-form parameters, so their exact scores at every ``t`` are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gbm.sde import GBM, SDE


def _mixture_log_density_and_grad(y, weights, means, variances):
    """``log sum_k w_k N(y; m_k, v_k I)`` and its gradient in ``y``; y (B, D), means (K, D), variances (K,)."""
    d = y.shape[1]
    diff = y[:, None, :] - means[None]  # B, K, D
    log_comp = (
        weights.log()[None]
        - 0.5 * (diff**2).sum(-1) / variances[None]
        - 0.5 * d * torch.log(2 * math.pi * variances)[None]
    )
    log_density = torch.logsumexp(log_comp, dim=1)
    resp = torch.softmax(log_comp, dim=1)  # B, K
    grad = -(resp[..., None] * diff / variances[None, :, None]).sum(1)
    return log_density, grad


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k w_k N(m_k, s_k^2 I)`` in ``D`` dimensions."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    stds: torch.Tensor  # (K,)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[labels] + self.stds[labels, None] * z, labels

    def diffused(self, sde: SDE, t: float) -> "GaussianMixture":
        """The marginal at time ``t`` under an additive SDE with kernel ``alpha x_0 + std z``."""
        alpha, std = sde.mean_coeff_std(torch.tensor(float(t), dtype=torch.float64))
        return GaussianMixture(self.weights, alpha * self.means, torch.sqrt(alpha**2 * self.stds**2 + std**2))

    def stein_score(self, sde: SDE):
        """Exact ``grad log p_t(x)`` of the diffused mixture, as a ``score_fn(x, t)``."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            mix = self.diffused(sde, t[0].item())
            _, grad = _mixture_log_density_and_grad(x.double(), mix.weights, mix.means, mix.stds**2)
            return grad.to(x.dtype)

        return score_fn

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The most responsible component of each point."""
        diff = x.double()[:, None, :] - self.means[None]
        log_comp = self.weights.log()[None] - 0.5 * (diff**2).sum(-1) / self.stds[None] ** 2 \
            - x.shape[1] * self.stds.log()[None]
        return log_comp.argmax(dim=1)


@dataclass(frozen=True)
class LogNormalMixture:
    """``x = exp(y)`` with ``y`` an isotropic Gaussian mixture: a positive distribution for GBM."""

    log_mixture: GaussianMixture

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y, labels = self.log_mixture.sample(n, generator)
        return y.exp(), labels

    def diffused(self, sde: GBM, t: float) -> "LogNormalMixture":
        """Marginal at ``t``: log-means shift by ``(mu - sigma^2/2) t``, log-variances grow by ``sigma^2 t``."""
        mix = self.log_mixture
        return LogNormalMixture(
            GaussianMixture(mix.weights, mix.means + sde.log_drift * t, torch.sqrt(mix.stds**2 + sde.sigma**2 * t))
        )

    def hyvarinen_score(self, sde: GBM):
        """Exact ``x * grad log p_t(x) = d/dy log p_Y(y) - 1`` (``y = log x``), as a ``score_fn(x, t)``."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            mix = self.diffused(sde, t[0].item()).log_mixture
            _, grad = _mixture_log_density_and_grad(x.double().abs().log(), mix.weights, mix.means, mix.stds**2)
            return (grad - 1.0).to(x.dtype)

        return score_fn

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_mixture.assign(x.log())


def two_spirals(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved spirals shifted into the positive quadrant (SPEC §10): ``(n, 2)``, all > 0."""
    u = torch.rand(n, generator=generator)
    arm = torch.randint(0, 2, (n,), generator=generator)
    angle = 0.5 * math.pi + 3 * math.pi * u  # 1.5 turns per arm
    radius = angle / (3.5 * math.pi)
    sign = 1 - 2 * arm.float()
    xy = sign[:, None] * torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    xy = xy + noise * torch.randn(n, 2, generator=generator)
    return xy + 1.5  # spirals lie within radius ~1.1 of the origin: all coordinates end up in ~[0.3, 2.7]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equally sized point clouds (N, D)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa = (a.double() @ directions).sort(dim=0).values
    pb = (b.double() @ directions).sort(dim=0).values
    return (pa - pb).abs().mean().item()
