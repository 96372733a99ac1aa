"""The PyTorch backend: the network in eager mode or under :func:`torch.compile`.

Reduced precision goes through :func:`torch.autocast` (the weights stay fp32; autocast keeps
softmax, normalisations and sums in fp32).  On CUDA, ``cudnn.benchmark`` picks the fastest
convolution for the tile shape, which the engine keeps fixed over an image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..devices import DTYPES
from ..models.loaded import LoadedModel

if TYPE_CHECKING:
    from . import Setting

def _compile(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``torch.compile`` with its defaults (Inductor); the one place a test swaps for a lighter backend."""
    return torch.compile(fn)


class TorchBackend:
    """Runs ``model`` in the setting's precision and layout; compiled once when asked."""

    name = "torch"

    def __init__(self, model: LoadedModel, setting: Setting) -> None:
        self.model = model
        self.setting = setting
        self.net = _compile(model.__call__) if setting.compile else model.__call__
        if setting.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def __call__(self, x: Tensor) -> Tensor:
        if self.setting.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.setting.precision == "fp32":
            return self.net(x).float()
        with torch.autocast(self.setting.device.type, dtype=DTYPES[self.setting.precision]):
            return self.net(x).float()
