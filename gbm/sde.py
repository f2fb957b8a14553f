"""Forward SDEs behind one interface: GBM (multiplicative) and the additive VP, sub-VP and VE SDEs.

Every SDE says which score its samplers consume (``score_kind``): the Hyvärinen score
``x * grad log p_t(x)`` for GBM, the Stein score ``grad log p_t(x)`` for the additive SDEs (SPEC §1, §2, §5).
Samplers, losses and the network parameterisation ask only for what is defined here.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import torch

ScoreKind = Literal["hyvarinen", "stein"]


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a 1-D tensor of per-sample times (or a scalar) so it broadcasts against ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def _per_channel(values: Sequence[float] | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-channel list (channel axis 1) against ``x``."""
    v = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(1, -1, *([1] * (x.ndim - 2)))


class SDE(abc.ABC):
    """Forward diffusion ``dX = f(X, t) dt + g(X, t) dW`` on ``[0, T]`` with a closed-form kernel."""

    name: str
    score_kind: ScoreKind
    T: float
    end_time: float  # where reverse-time sampling stops

    @abc.abstractmethod
    def drift_diffusion(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward drift ``f(x, t)`` and elementwise diffusion ``g(x, t)``."""

    @abc.abstractmethod
    def perturb(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Closed-form draw of ``x_t`` given ``x_0`` and standard normal ``z`` (``t`` one per sample)."""

    @abc.abstractmethod
    def conditional_score(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The declared score of ``p(x_t | x_0)`` at ``x_t = perturb(x0, t, z)``: the M-DSM/DSM target."""

    @abc.abstractmethod
    def score_from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The declared score from a noise prediction ``eps`` (the network's output)."""

    @abc.abstractmethod
    def prior_sample(self, shape: Sequence[int], noise: torch.Tensor | None = None) -> torch.Tensor:
        """A draw of ``x_T`` from the prior; ``noise`` (standard normal of ``shape``) makes it reproducible."""

    def reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse-time SDE (run with ``dt < 0``): ``f - div(g^2) - g^2 * grad log p``."""
        f, g = self.drift_diffusion(x, t)
        return f - g**2 * score

    def probability_flow_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Drift of the probability-flow ODE: ``f - 0.5 g^2 grad log p`` (additive SDEs)."""
        f, g = self.drift_diffusion(x, t)
        return f - 0.5 * g**2 * score

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Default weight of the score-matching loss at time ``t``."""
        raise NotImplementedError

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone sees of ``x`` (a well-scaled version of the state)."""
        return x

    def describe(self) -> dict:
        """Hyper-parameters for run records."""
        return {"name": self.name, "score_kind": self.score_kind, "T": self.T, "end_time": self.end_time}


@dataclass(frozen=True)
class GBM(SDE):
    """Geometric Brownian motion ``dX = mu X dt + sigma X dW`` elementwise (SPEC §1).

    ``mu`` defaults to ``sigma^2 / 2`` (no drift in log space). The log-normal prior
    ``x_T = exp(m + s z)`` uses per-channel ``prior_log_mean`` (m) and ``prior_log_std`` (s);
    ``with_prior_from_data`` fits them from training data. Without data the prior is that of ``x_0 = 1``.
    """

    sigma: float = 0.8
    mu: float | None = None
    T: float = 1.0
    prior_log_mean: tuple[float, ...] | float = 0.0
    prior_log_std: tuple[float, ...] | float | None = None
    name: str = field(default="gbm", init=False)
    score_kind: ScoreKind = field(default="hyvarinen", init=False)
    end_time: float = field(default=0.0, init=False)

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sde.sigma must be positive, got {self.sigma}")
        if not self.T > 0:
            raise ValueError(f"sde.T must be positive, got {self.T}")
        if self.mu is None:
            object.__setattr__(self, "mu", self.sigma**2 / 2)
        if self.prior_log_std is None:
            object.__setattr__(self, "prior_log_std", self.sigma * math.sqrt(self.T))

    @property
    def log_drift(self) -> float:
        """Drift of ``log X``: ``mu - sigma^2 / 2``."""
        return self.mu - self.sigma**2 / 2

    def with_prior_from_data(self, x0: torch.Tensor) -> "GBM":
        """A copy whose log-normal prior is fitted to positive training data ``x0`` (N, C, ...).

        ``m = mean log x_0 + (mu - sigma^2/2) T`` and ``s = sqrt(sigma^2 T + Var log x_0)`` per channel:
        the exact first two log-moments of ``x_T`` (SPEC §1).
        """
        check_positive(x0, "data")
        total = torch.zeros(x0.shape[1], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        for chunk in x0.split(4096):  # chunked float64 sums: no full-size double copy of the data
            logs = chunk.double().log().transpose(0, 1).reshape(x0.shape[1], -1)
            total += logs.sum(dim=1).cpu()
            total_sq += logs.pow(2).sum(dim=1).cpu()
        count = x0.numel() // x0.shape[1]
        mean = total / count
        m = mean + self.log_drift * self.T
        s = (self.sigma**2 * self.T + (total_sq / count - mean**2).clamp_min(0)).sqrt()
        return replace(self, prior_log_mean=tuple(m.tolist()), prior_log_std=tuple(s.tolist()))

    def drift_diffusion(self, x, t):
        return self.mu * x, self.sigma * x

    def reverse_drift(self, x, t, score):
        """Ambient reverse drift with Hyvärinen score ``h``: ``mu x - 2 sigma^2 x - sigma^2 x h`` (SPEC §3)."""
        return x * (self.mu - 2 * self.sigma**2 - self.sigma**2 * score)

    def log_reverse_drift(self, t, score):
        """Reverse drift of ``Y = log X``: ``mu - 1.5 sigma^2 - sigma^2 h`` (SPEC §3, Lamperti)."""
        return self.mu - 1.5 * self.sigma**2 - self.sigma**2 * score

    def perturb(self, x0, t, z):
        """``x_t = x_0 exp((mu - sigma^2/2) t + sigma sqrt(t) z)``."""
        t = _per_sample(t, x0)
        return x0 * torch.exp(self.log_drift * t + self.sigma * t.sqrt() * z)

    def conditional_score(self, x0, t, z):
        """``x_t * grad log p(x_t | x_0) = -1 - z / (sigma sqrt t)`` (SPEC §2)."""
        t = _per_sample(t, z)
        return -1.0 - z / (self.sigma * t.sqrt())

    def score_from_eps(self, eps, x, t):
        """``h = -1 - eps / (sigma sqrt t)``."""
        return -1.0 - eps / (self.sigma * _per_sample(t, x).sqrt())

    def eps_from_score(self, score, x, t):
        """Inverse of ``score_from_eps``."""
        return -(score + 1.0) * self.sigma * _per_sample(t, x).sqrt()

    def prior_sample(self, shape, noise=None):
        if noise is None:
            noise = torch.randn(shape)
        m = _per_channel(self.prior_log_mean, noise)
        s = _per_channel(self.prior_log_std, noise)
        return torch.exp(m + s * noise)

    def loss_weight(self, t):
        """Authors' M-DSM weight ``(sigma^2 t)^2`` (SPEC §2)."""
        return (self.sigma**2 * t) ** 2

    def network_input(self, x):
        """The backbone sees ``log |x|`` (the sign-agnostic sampler can visit negative values)."""
        return x.abs().clamp_min(torch.finfo(x.dtype).tiny).log()

    def log_tweedie(self, x, t, score):
        """``E[log x_0 | x_t] = log x_t + sigma^2 t (h + 1) - (mu - sigma^2/2) t`` (SPEC §3)."""
        t = _per_sample(t, x)
        return x.log() + self.sigma**2 * t * (score + 1.0) - self.log_drift * t

    def describe(self):
        return super().describe() | {
            "sigma": self.sigma,
            "mu": self.mu,
            "prior_log_mean": self.prior_log_mean,
            "prior_log_std": self.prior_log_std,
        }


class _AdditiveSDE(SDE):
    """Additive Gaussian SDE with kernel ``x_t = alpha(t) x_0 + std(t) z``."""

    score_kind: ScoreKind = "stein"

    @abc.abstractmethod
    def mean_coeff_std(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha(t)`` and ``std(t)`` of the Gaussian kernel."""

    def perturb(self, x0, t, z):
        alpha, std = self.mean_coeff_std(_per_sample(t, x0))
        return alpha * x0 + std * z

    def conditional_score(self, x0, t, z):
        _, std = self.mean_coeff_std(_per_sample(t, z))
        return -z / std

    def score_from_eps(self, eps, x, t):
        _, std = self.mean_coeff_std(_per_sample(t, x))
        return -eps / std

    def loss_weight(self, t):
        """``std(t)^2``: the DSM loss becomes the epsilon-prediction error (SPEC §5)."""
        return self.mean_coeff_std(t)[1] ** 2

    def likelihood_weight(self, t):
        """``g(t)^2``, the likelihood weighting of Song et al. (2021)."""
        return self.drift_diffusion(torch.zeros_like(t), t)[1] ** 2


@dataclass(frozen=True)
class VPSDE(_AdditiveSDE):
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
        b = self.beta(_per_sample(t, x))
        return -0.5 * b * x, torch.sqrt(b) * torch.ones_like(x)

    def mean_coeff_std(self, t):
        lm = self.log_mean_coeff(t)
        return torch.exp(lm), torch.sqrt(-torch.expm1(2 * lm))

    def prior_sample(self, shape, noise=None):
        return torch.randn(shape) if noise is None else noise.clone()

    def describe(self):
        return super().describe() | {"beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP SDE: VP drift, diffusion ``sqrt(beta(t) (1 - exp(-2 int beta)))`` (SPEC §5)."""

    name: str = field(default="subvp", init=False)

    def drift_diffusion(self, x, t):
        tt = _per_sample(t, x)
        b = self.beta(tt)
        discount = 1.0 - torch.exp(-2 * self.beta_min * tt - (self.beta_max - self.beta_min) * tt**2)
        return -0.5 * b * x, torch.sqrt(b * discount) * torch.ones_like(x)

    def mean_coeff_std(self, t):
        lm = self.log_mean_coeff(t)
        return torch.exp(lm), -torch.expm1(2 * lm)


@dataclass(frozen=True)
class VESDE(_AdditiveSDE):
    """Variance-exploding SDE, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t`` (SPEC §5)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    end_time: float = 1e-5
    name: str = field(default="ve", init=False)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_diffusion(self, x, t):
        tt = _per_sample(t, x)
        g = self.sigma(tt) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g * torch.ones_like(x)

    def mean_coeff_std(self, t):
        return torch.ones_like(t), self.sigma(t)

    def prior_sample(self, shape, noise=None):
        noise = torch.randn(shape) if noise is None else noise
        return self.sigma_max * noise

    def describe(self):
        return super().describe() | {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def check_positive(x: torch.Tensor, what: str) -> None:
    """Refuse non-positive or non-finite input to a multiplicative (GBM) model, naming it."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: GBM needs finite values; found NaN or infinity")
    if (x <= 0).any():
        raise ValueError(
            f"{what}: GBM needs strictly positive values; min is {x.min().item():.4g} "
            "(shift images into [1, 2] with gbm.data.to_positive)"
        )


SDES: dict[str, type[SDE]] = {"gbm": GBM, "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_sde(name: str, **params) -> SDE:
    """Build an SDE by name (``gbm``, ``vp``, ``subvp``, ``ve``, ``cld``), naming the field on bad input."""
    if name == "cld":
        import gbm.cld  # noqa: F401  (adds CLD to SDES; it imports this module, so not at the top)
    if name not in SDES:
        raise ValueError(f"sde.name: unknown SDE {name!r}; choose one of {sorted(SDES)}")
    cls = SDES[name]
    allowed = {f.name for f in cls.__dataclass_fields__.values() if f.init}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"sde: unknown parameter(s) {sorted(unknown)} for {name!r}; allowed: {sorted(allowed)}")
    return cls(**params)
