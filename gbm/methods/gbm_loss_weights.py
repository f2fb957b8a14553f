"""Weightings lambda(t) of the M-DSM loss (SPEC §2, §1a), by name: the loss option ``loss.weighting``.

With ``h = -1 - eps / (sigma sqrt t)`` the M-DSM error ``||h_theta - target||^2`` is the noise-prediction
error ``||eps_theta - z||^2`` divided by ``sigma^2 t``, so

- ``paper``: ``(sigma^2 t)^2`` (the authors' weight) is the eps error weighted by ``sigma^2 t``: the levels
  below 10 % relative noise get almost no training weight (SPEC §1a);
- ``uniform-eps``: ``sigma^2 t`` is the eps error with a uniform weight over t (what VP's ``std^2`` is for DSM).
"""

from __future__ import annotations

from typing import Callable

import torch


def paper_weight(sigma: float, t: torch.Tensor) -> torch.Tensor:
    """The authors' weight ``(sigma^2 t)^2`` (SPEC §2)."""
    return (sigma**2 * t) ** 2


def uniform_eps_weight(sigma: float, t: torch.Tensor) -> torch.Tensor:
    """``sigma^2 t``: a uniform weight on the noise-prediction error (SPEC §1a)."""
    return sigma**2 * t


WEIGHTINGS: dict[str, Callable[[float, torch.Tensor], torch.Tensor]] = {
    "paper": paper_weight,
    "uniform-eps": uniform_eps_weight,
}


def check_weighting(name: str) -> str:
    """``name`` if it is a known weighting; otherwise an error naming ``loss.weighting``."""
    if name not in WEIGHTINGS:
        raise ValueError(f"loss.weighting: unknown M-DSM weighting {name!r}; choose one of {sorted(WEIGHTINGS)}")
    return name
