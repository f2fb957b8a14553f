"""Distributions with known answers, for testing samplers and losses: exact diffused scores.

``LogNormalMixture`` diffused by GBM and ``GaussianMixture`` diffused by an additive SDE or by CLD stay
mixtures of the same family with closed-form parameters, so their exact scores at every ``t`` are known.
Test helpers (tests import them as ``from toy_distributions import ...``; ``benchmarks/bench_grids.py`` too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gbm.methods.cld import CLD
from gbm.methods.gbm import GBM
from gbm.sde import SDE


def _mixture_log_density_and_grad(y, weights, means, variances):
    """``log sum_k w_k N(y; m_k, v_k I)`` and its gradient in ``y``; y (B, D), weights (K,), means (B or 1, K, D),
    variances (B or 1, K): a mixture per sample (one time per sample) or one for all."""
    d = y.shape[1]
    diff = y[:, None, :] - means  # B, K, D
    log_comp = (
        weights.log()[None]
        - 0.5 * (diff**2).sum(-1) / variances
        - 0.5 * d * torch.log(2 * math.pi * variances)
    )
    log_density = torch.logsumexp(log_comp, dim=1)
    resp = torch.softmax(log_comp, dim=1)  # B, K
    grad = -(resp[..., None] * diff / variances[..., None]).sum(1)
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
        """Exact ``grad log p_t(x)`` of the diffused mixture, as a ``score_fn(x, t)`` (one time per sample)."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha, std = sde.mean_coeff_std(t.double()[:, None])  # B, 1
            means = alpha[..., None] * self.means[None]
            variances = alpha**2 * self.stds[None] ** 2 + std**2
            _, grad = _mixture_log_density_and_grad(x.double(), self.weights, means, variances)
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
        """Exact ``x * grad log p_t(x) = d/dy log p_Y(y) - 1`` (``y = log x``), as a ``score_fn(x, t)`` (one time
        per sample)."""

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            mix, tt = self.log_mixture, t.double()[:, None]  # B, 1
            means = mix.means[None] + sde.log_drift * tt[..., None]
            variances = mix.stds[None] ** 2 + sde.sigma**2 * tt
            _, grad = _mixture_log_density_and_grad(x.double().abs().log(), mix.weights, means, variances)
            return (grad - 1.0).to(x.dtype)

        return score_fn

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_mixture.assign(x.log())

    def log_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-coordinate mean and std of ``log x``."""
        mix = self.log_mixture
        w, m, s = mix.weights[:, None], mix.means, mix.stds[:, None]
        mean = (w * m).sum(0)
        return mean, ((w * (s**2 + m**2)).sum(0) - mean**2).sqrt()

    def log_moment_error(self, x: torch.Tensor) -> float:
        """Largest error of the per-coordinate mean and std of ``log x`` over samples ``x`` (N, D) against
        the exact ones; infinite if any sample is not positive."""
        if not (x > 0).all():
            return math.inf
        y = x.double().log()
        mean, std = self.log_moments()
        return max((y.mean(0) - mean).abs().max().item(), (y.std(0) - std).abs().max().item())


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


def mixture_velocity_score(sde: CLD, mixture: GaussianMixture):
    """Exact ``grad_v log p_t(u)`` when the data is an isotropic Gaussian mixture (points (N, D)).

    Each component ``N(m_k, s_k^2 I)`` stays Gaussian under CLD: per coordinate, mean
    ``(a_x m_k, a_v m_k)`` and 2x2 covariance ``Sigma_t + s_k^2 [a_x, a_v]^T [a_x, a_v]``, coordinates
    independent; the score is the responsibility-weighted sum of the components' velocity scores.
    """

    def score_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, v = sde.positions(u).double(), sde.velocities(u).double()  # B, D
        (ax, av), (sxx, sxv, svv) = (
            [c[:, None, None].to(u.device) for c in pair] for pair in sde.kernel(t.double().cpu())
        )  # each B, 1, 1
        var = (mixture.stds.double() ** 2)[None, :, None]  # 1, K, 1
        cxx, cxv, cvv = sxx + var * ax**2, sxv + var * ax * av, svv + var * av**2  # B, K, 1
        det = cxx * cvv - cxv**2
        means = mixture.means.double()[None]  # 1, K, D
        dx, dv = x[:, None] - ax * means, v[:, None] - av * means  # B, K, D
        px, pv = (cvv * dx - cxv * dv) / det, (cxx * dv - cxv * dx) / det  # precision times residual
        log_comp = mixture.weights.double().log()[None] - 0.5 * (dx * px + dv * pv).sum(-1) \
            - 0.5 * x.shape[1] * det[..., 0].log()
        resp = torch.softmax(log_comp, dim=1)  # B, K
        return -(resp[..., None] * pv).sum(1).to(u.dtype)

    return score_fn


