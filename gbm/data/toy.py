"""Toy data sets for training runs on points instead of images (SPEC §10: the 2-D GBM figure)."""

from __future__ import annotations

import math

import torch


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
