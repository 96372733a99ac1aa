"""Backends that run one batch of tiles: PyTorch (eager or compiled) and OpenVINO (CPU).

The engine (:class:`upscale_cli.engine.Upscaler`) cuts, batches, blends and handles
out-of-memory and NaN tiles; a backend only maps a batch ``(N, 3, h, w)`` of RGB 0..1 tiles on
the engine's device to its float32 output ``(N, 3, s*h, s*w)``.  :func:`make_backend` turns
``--backend auto|torch|openvino`` into one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..errors import UpscaleError, UsageError
from ..models.loaded import LoadedModel
from .pytorch import TorchBackend

BACKENDS = ("auto", "torch", "openvino")
ENV_VAR = "UPSCALE_BACKEND"
"""Sets what ``--backend auto`` means (``torch`` or ``openvino``), e.g. to pin one in tests."""


class Backend(Protocol):
    """Runs a batch of tiles (see the module docstring)."""

    name: str

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Setting:
    """What a backend runs in: the engine's resolved device, precision and layout."""

    device: torch.device
    precision: str
    channels_last: bool
    compile: bool = False


def make_backend(choice: str, model: LoadedModel, setting: Setting) -> tuple[Backend, str | None]:
    """The backend for ``--backend choice`` and a one-line note when ``auto`` fell back to torch.

    ``auto``: ``$UPSCALE_BACKEND`` when set; else OpenVINO on the CPU when it is installed, not
    compiling, and the model converts; else torch.  An explicit ``openvino`` that cannot run is an
    error; an ``auto`` one falls back to torch with the reason in the note.

    Raises:
        UsageError: an unknown backend, or ``openvino`` asked for where it cannot run.
    """
    name = choice.strip().lower()
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {choice!r}; use {', '.join(BACKENDS)}")
    explicit = name != "auto"
    if not explicit:
        name = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        if name not in BACKENDS:
            raise UsageError(f"${ENV_VAR}={os.environ[ENV_VAR]!r}: use {', '.join(BACKENDS[1:])}")
    if name == "torch":
        return TorchBackend(model, setting), None
    from .openvino_cpu import NOT_INSTALLED, OpenVINOBackend, available

    why = _openvino_unfit(setting)
    if why is None:
        why = available()
        if why is None:
            try:
                return OpenVINOBackend(model, setting), None
            except UpscaleError as err:
                why = str(err)
    if explicit:
        raise UsageError(f"--backend openvino: {why}")
    note = None if why == NOT_INSTALLED else f"OpenVINO not used ({why}); running on PyTorch"
    return TorchBackend(model, setting), note


def _openvino_unfit(setting: Setting) -> str | None:
    if setting.device.type != "cpu":
        return f"it runs on the CPU, not on {setting.device.type}"
    if setting.compile:
        return "--compile is a PyTorch option"
    return None


__all__ = ["BACKENDS", "ENV_VAR", "Backend", "Setting", "make_backend"]
