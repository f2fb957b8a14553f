"""Conversions between uint8 images and the data space each SDE works in (SPEC §1, §5, §6)."""

from __future__ import annotations

import torch


def to_positive(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> ``x_0 = img / 255 + 1`` in [1, 2], the positive data GBM needs (SPEC §1)."""
    _check_uint8(images)
    return images.float() / 255.0 + 1.0


def from_positive(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """GBM samples -> uint8 images via ``clamp(x, 1, 2) - 1``; also the fraction of clamped values."""
    clamped = ((x < 1) | (x > 2)).float().mean().item()
    return _quantise(x.clamp(1, 2) - 1), clamped


def to_centered(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1], the data space of the additive SDEs."""
    _check_uint8(images)
    return images.float() / 127.5 - 1.0


def from_centered(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Additive-SDE samples in [-1, 1] -> uint8 images; also the fraction of clamped values."""
    clamped = ((x < -1) | (x > 1)).float().mean().item()
    return _quantise((x.clamp(-1, 1) + 1) / 2), clamped


DATA_SPACE = {"positive": (to_positive, from_positive), "centered": (to_centered, from_centered)}


def _quantise(unit: torch.Tensor) -> torch.Tensor:
    return (unit * 255).round().to(torch.uint8)


def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8:
        raise ValueError(f"images: expected dtype uint8, got {images.dtype}")
