"""Exponential moving average of model weights, with the warm-up of score_sde (SPEC §5)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy ``s <- d s + (1 - d) w`` with ``d = min(decay, (1 + n) / (10 + n))`` after update n.

    Floating-point parameters and buffers are averaged; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        state = model.state_dict()
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], 1.0 - decay)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(state[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
