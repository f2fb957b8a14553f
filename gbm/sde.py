"""The forward-SDE interface every diffusion method implements (STYLE: score_sde's abstract SDE).

Every SDE says which score its samplers consume (``score_kind``): the Hyvärinen score
``x * grad log p_t(x)`` for GBM, the Stein score ``grad log p_t(x)`` for the additive SDEs (SPEC §1, §2, §5).
Samplers, losses, guidance and the network parameterisation ask only for what is defined here; the
concrete SDEs live with their methods in ``gbm.methods``.
"""

from __future__ import annotations

import abc
from typing import Literal, Sequence

import torch

ScoreKind = Literal["hyvarinen", "stein"]


def per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a 1-D tensor of per-sample times (or a scalar) so it broadcasts against ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def per_channel(values: Sequence[float] | float, x: torch.Tensor) -> torch.Tensor:
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

    def langevin_alpha(self, t: float, dt: float) -> float:
        """Step-size factor of the Langevin corrector at ``t`` (score_sde: ``1 - beta(t) dt`` for VP, else 1)."""
        return 1.0

    def initial_state(self, x0: torch.Tensor) -> torch.Tensor:
        """The diffusion state of data ``x0`` (the data itself; CLD stacks a velocity)."""
        return x0

    def positions(self, state: torch.Tensor) -> torch.Tensor:
        """The data part of a state (what a sampler's output images are)."""
        return state

    def add_stein_term(self, score: torch.Tensor, state: torch.Tensor, stein: torch.Tensor) -> torch.Tensor:
        """Add a Stein-score term ``stein`` (shaped like ``state``) to the declared ``score`` (guidance, SPEC §7)."""
        return score + stein

    def describe(self) -> dict:
        """Hyper-parameters for run records."""
        return {"name": self.name, "score_kind": self.score_kind, "T": self.T, "end_time": self.end_time}
