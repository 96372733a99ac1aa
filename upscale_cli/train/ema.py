"""Exponential moving average of the weights (Polyak & Juditsky 1992; used for SR by ESRGAN's
successors, e.g. Real-ESRGAN's ``params_ema``).

After every optimiser step ``ema = d_t * ema + (1 - d_t) * w`` with the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=t)``: ``d_t = min(decay, (1 + t) / (10 + t))``, so that a
short run's average is not dominated by the random initialisation.  Buffers (batch-norm
statistics) are copied.  The average is kept in fp32 on the model's device and is what
validation scores and export writes when ``--ema`` is on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """An averaged copy of ``model``.

    Args:
        model: the network being trained (not a DDP wrapper).
        decay: the target decay ``d`` (e.g. 0.999).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
