"""Speed switches of the network's arithmetic: bf16 autocast, TF32 matmuls and channels_last (CUDA only).

Three config keys, ``train.precision`` (``fp32`` | ``bf16``), ``train.tf32`` and ``train.channels_last``, set
how the backbone computes during training; ``gbm sample`` uses the model's settings unless told otherwise
(``--precision``, ``--tf32``, ``--channels-last``). At their defaults (fp32, off, off) nothing changes: the
network runs exactly as before these switches existed. On the CPU, ``bf16`` is refused (naming the key) and
``tf32`` and ``channels_last`` are recorded as not applied. Only the backbone's forward pass runs under
autocast; its output is cast back to float32 before the SDE turns it into a score, and every sampler update
and every noise draw stays float32. Noise is still drawn per image on the CPU and copied to the device
(``gbm.seeding``), so image i depends on seed i alone at every setting.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Speed:
    """The switches in effect on one device (``resolve`` turns the requested ones into these)."""

    precision: str = "fp32"
    tf32: bool = False
    channels_last: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def record(self, requested: "Speed") -> dict:
        """What a model or sample file records: the requested and the applied switches."""
        return {"precision": self.precision, "tf32": self.tf32, "channels_last": self.channels_last,
                "requested": {"precision": requested.precision, "tf32": requested.tf32,
                              "channels_last": requested.channels_last}}


def check_precision(precision: str, key: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{key}: unknown precision {precision!r}; choose one of {list(PRECISIONS)}")


def resolve(requested: Speed, device: torch.device, keys: tuple[str, str, str]) -> Speed:
    """The switches applied on ``device``: bf16 refused off CUDA (naming ``keys[0]``); TF32 and channels_last
    applied on CUDA only. ``keys`` name the precision, tf32 and channels_last settings in errors."""
    check_precision(requested.precision, keys[0])
    on_cuda = torch.device(device).type == "cuda"
    if requested.precision == "bf16" and not on_cuda:
        raise ValueError(f"{keys[0]}: bf16 autocast runs only on CUDA and this job's device is "
                         f"{torch.device(device)}; use fp32 on the CPU")
    return Speed(requested.precision, requested.tf32 and on_cuda, requested.channels_last and on_cuda)


def apply_to_model(model, speed: Speed):
    """Set ``model`` (a ``gbm.models.ScoreModel``) to compute with ``speed``; returns it."""
    model.autocast_dtype = speed.autocast_dtype
    model.channels_last = speed.channels_last
    if speed.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    return model


@contextmanager
def tf32_matmuls(speed: Speed):
    """TF32 matmuls while the block runs when ``speed.tf32`` (CUDA); restores the previous setting after.
    cuDNN's convolutions use TF32 by torch's default (``torch.backends.cudnn.allow_tf32``) either way."""
    if not speed.tf32:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
