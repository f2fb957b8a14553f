"""Random streams for reproducible sampling: image i depends on seed i alone (STYLE: NVlabs/edm)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generator = Union[torch.Generator, "PerSampleGenerator", None]


class PerSampleGenerator:
    """One CPU ``torch.Generator`` per image, so a sample depends on its own seed only.

    Noise is drawn on the CPU and moved to the target device, so the result does not depend on the
    batch size, the position in the batch or the device.
    """

    def __init__(self, seeds: Sequence[int]):
        if len(seeds) == 0:
            raise ValueError("seeds: need at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype=torch.float32, device="cpu") -> torch.Tensor:
        """Standard normal noise of ``(len(seeds), *shape)``; row i from seed i."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` from a batch generator, a per-sample one, or the global one."""
    if isinstance(generator, PerSampleGenerator):
        if len(generator) != x.shape[0]:
            raise ValueError(f"generator: {len(generator)} seeds for a batch of {x.shape[0]}")
        return generator.randn(x.shape[1:], dtype=x.dtype, device=x.device)
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return noise.to(x.device)


def randn(shape: Sequence[int], generator: Generator = None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (first axis = batch) on the CPU."""
    return randn_like(torch.empty(tuple(shape), dtype=dtype), generator)
