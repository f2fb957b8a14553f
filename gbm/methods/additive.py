"""The additive-noise baselines of score_sde (SPEC §5): the VP, sub-VP and VE SDEs, denoising score
matching (DSM) and the generic samplers (Euler–Maruyama, predictor–corrector, probability-flow ODE);
data in [-1, 1]. Declared once each in ``METHODS``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import torch

from gbm.losses import pixel_sum_batch_mean, uniform_time
from gbm.methods.base import Method
from gbm.samplers import GENERIC_SAMPLERS, check_generic_options
from gbm.sde import SDE, ScoreKind, per_sample
from gbm.seeding import randn


class AdditiveSDE(SDE):
    """Additive Gaussian SDE with kernel ``x_t = alpha(t) x_0 + std(t) z``."""

    score_kind: ScoreKind = "stein"

    @abc.abstractmethod
    def mean_coeff_std(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha(t)`` and ``std(t)`` of the Gaussian kernel."""

    def perturb(self, x0, t, z):
        alpha, std = self.mean_coeff_std(per_sample(t, x0))
        return alpha * x0 + std * z

    def conditional_score(self, x0, t, z):
        _, std = self.mean_coeff_std(per_sample(t, z))
        return -z / std

    def score_from_eps(self, eps, x, t):
        _, std = self.mean_coeff_std(per_sample(t, x))
        return -eps / std

    def noise_scale(self, t):
        """Noise-to-signal ratio ``std(t) / alpha(t)`` (VE: ``sigma(t)``; gbm.grids ``rho``)."""
        alpha, std = self.mean_coeff_std(torch.as_tensor(t))
        return std / alpha

    def loss_weight(self, t):
        """``std(t)^2``: the DSM loss becomes the epsilon-prediction error (SPEC §5)."""
        return self.mean_coeff_std(t)[1] ** 2

    def likelihood_weight(self, t):
        """``g(t)^2``, the likelihood weighting of Song et al. (2021)."""
        return self.drift_diffusion(torch.zeros_like(t), t)[1] ** 2


@dataclass(frozen=True)
class VPSDE(AdditiveSDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``, linear beta (SPEC §5)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    end_time: float = 1e-3
    name: str = field(default="vp", init=False)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_diffusion(self, x, t):
        b = self.beta(per_sample(t, x))
        return -0.5 * b * x, torch.sqrt(b) * torch.ones_like(x)

    def mean_coeff_std(self, t):
        lm = self.log_mean_coeff(t)
        return torch.exp(lm), torch.sqrt(-torch.expm1(2 * lm))

    def prior_sample(self, shape, noise=None):
        return torch.randn(shape) if noise is None else noise.clone()

    def langevin_alpha(self, t, dt):
        """score_sde's corrector factor ``1 - beta(t) dt`` (the discrete VP's alpha)."""
        return 1.0 - self.beta(t) * dt

    def describe(self):
        return super().describe() | {"beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP SDE: VP drift, diffusion ``sqrt(beta(t) (1 - exp(-2 int beta)))`` (SPEC §5)."""

    name: str = field(default="subvp", init=False)

    def drift_diffusion(self, x, t):
        tt = per_sample(t, x)
        b = self.beta(tt)
        discount = 1.0 - torch.exp(-2 * self.beta_min * tt - (self.beta_max - self.beta_min) * tt**2)
        return -0.5 * b * x, torch.sqrt(b * discount) * torch.ones_like(x)

    def mean_coeff_std(self, t):
        lm = self.log_mean_coeff(t)
        return torch.exp(lm), -torch.expm1(2 * lm)


@dataclass(frozen=True)
class VESDE(AdditiveSDE):
    """Variance-exploding SDE, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t`` (SPEC §5)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    end_time: float = 1e-5
    name: str = field(default="ve", init=False)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_diffusion(self, x, t):
        tt = per_sample(t, x)
        g = self.sigma(tt) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g * torch.ones_like(x)

    def mean_coeff_std(self, t):
        return torch.ones_like(t), self.sigma(t)

    def prior_sample(self, shape, noise=None):
        noise = torch.randn(shape) if noise is None else noise
        return self.sigma_max * noise

    def describe(self):
        return super().describe() | {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


# --- loss (SPEC §5) -----------------------------------------------------------------------------


class DSMLoss:
    """Denoising score matching for additive SDEs (SPEC §5): ``t ~ U(eps, T)``, weight ``std^2``
    (epsilon prediction) or, with ``likelihood_weighting``, ``g(t)^2``."""

    def __init__(self, sde: SDE, likelihood_weighting: bool = False, eps: float = 1e-5):
        if sde.score_kind != "stein":
            raise ValueError(f"loss: DSM needs an additive SDE, got {sde.name!r}")
        self.sde, self.likelihood_weighting, self.eps = sde, likelihood_weighting, eps

    def __call__(self, score_fn, x0, generator=None):
        t = uniform_time(x0.shape[0], self.eps, self.sde.T, generator).to(x0.device)
        z = randn(x0.shape, generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, z)
        target = self.sde.conditional_score(x0, t, z)
        weight = self.sde.likelihood_weight(t) if self.likelihood_weighting else self.sde.loss_weight(t)
        return pixel_sum_batch_mean(weight, score_fn(x_t, t) - target)


def fixed_prior_mismatch(method: Method, sde_params: dict, fit_images, labels, held_images, dataset: str,
                         sigma2_T_grid=()) -> list[dict]:
    """The prior-mismatch row of an additive SDE (``Method.prior_mismatch``): its fixed Gaussian prior against p_T
    of the held-out images in its own data space (``gbm.methods.gbm_priors.additive_prior_mismatch``)."""
    from gbm.methods.gbm_priors import additive_prior_mismatch

    result = additive_prior_mismatch(method.make_sde(**sde_params), method.to_data(held_images))
    return [{"prior": "fixed", "paper": True, "sigma2_T": math.nan, "frechet": result["frechet"],
             "relative_frechet": result["relative_frechet"], "at_config": True}]


METHODS = tuple(
    Method(name=cls.name, label=label, sde=cls, loss=DSMLoss, samplers=GENERIC_SAMPLERS, data_space="centered",
           check_sampler_options=check_generic_options, prior_mismatch=fixed_prior_mismatch,
           description=description)
    for cls, label, description in (
        (VPSDE, "VP", "variance-preserving SDE (score_sde)"),
        (SubVPSDE, "sub-VP", "sub-VP SDE (score_sde)"),
        (VESDE, "VE", "variance-exploding SDE (score_sde)"),
    )
)
