"""Score parameterisation: wraps any backbone so it returns the score its SDE declares (SPEC §2, §5).

The backbone sees ``sde.network_input(x)`` (GBM: ``log |x|``) and a 1-D tensor of times. With the ``"eps"``
parameterisation its output is a noise prediction turned into a score by ``sde.score_from_eps`` (GBM:
``h = -1 - eps / (sigma sqrt t)``; VP/VE: ``-eps / std``); with ``"score"`` the output is the score itself.
The backbone may run under bf16 autocast and take channels_last input (``gbm.speed``; off by default).
"""

from __future__ import annotations

import torch
from torch import nn

from gbm.sde import SDE

PARAMETERISATIONS = ("eps", "score")


class ScoreModel(nn.Module):
    """``forward(x, t)`` returns the score ``sde`` declares, computed from ``backbone``'s output."""

    def __init__(self, sde: SDE, backbone: nn.Module, parameterisation: str = "eps"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"model.parameterisation: unknown {parameterisation!r}; choose one of {list(PARAMETERISATIONS)}"
            )
        self.sde, self.backbone, self.parameterisation = sde, backbone, parameterisation
        self.autocast_dtype: torch.dtype | None = None  # gbm.speed.apply_to_model sets these two
        self.channels_last = False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None and not self.channels_last:
            output = self.backbone(self.sde.network_input(x), t)
        else:
            output = self._fast_backbone(self.sde.network_input(x), t)
        if self.parameterisation == "eps":
            return self.sde.score_from_eps(output, x, t)
        return output

    def _fast_backbone(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The backbone on channels_last input and/or under autocast; its output back in float32."""
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.backbone(inputs, t)
        with torch.autocast(inputs.device.type, dtype=self.autocast_dtype):
            output = self.backbone(inputs, t)
        return output.float()


def state_shape(sde: SDE, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample of the SDE's state (``sde.initial_state``: the data's, or CLD's (x, v) stacked)."""
    return tuple(sde.initial_state(torch.zeros(1, *shape)).shape[1:])
