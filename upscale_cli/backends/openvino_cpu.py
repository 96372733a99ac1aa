"""The OpenVINO backend (CPU plugin), for CPUs where PyTorch's fp32 is the best it has.

The PyTorch module is converted once (:func:`upscale_cli.export.openvino_model`: dynamic batch,
height and width, so one compiled model serves every tile size) and kept as IR in
``<weights cache>/openvino/``, named by the weights' sha256 (or the tensors' own hash for
weights without a file), the model, scale and OpenVINO version; OpenVINO's ``CACHE_DIR`` keeps
the compiled blob beside it.  The precision follows the engine's (``INFERENCE_PRECISION_HINT``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import UpscaleError
from ..models.loaded import LoadedModel

if TYPE_CHECKING:
    from . import Setting

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` for each engine precision."""


NOT_INSTALLED = "not installed (pip install 'upscale-cli[openvino]')"


def available() -> str | None:
    """None when OpenVINO can be imported, else why not (:data:`NOT_INSTALLED`)."""
    return None if importlib.util.find_spec("openvino") is not None else NOT_INSTALLED


def weights_key(model: LoadedModel) -> str:
    """What names the converted IR: the weights, the network built around them, the converter."""
    import openvino

    digest = model.sha256
    if digest is None:  # random or in-memory weights: hash the tensors themselves
        h = hashlib.sha256()
        for name, t in sorted(model.module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest = h.hexdigest()
    facts = json.dumps([model.arch.name, dict(model.kwargs), model.scale, openvino.__version__], sort_keys=True,
                       default=str)
    return hashlib.sha256(f"{digest}:{facts}".encode()).hexdigest()[:32]


def ir_dir() -> Path:
    """Where converted models and OpenVINO's compiled blobs live."""
    from ..download import cache_dir

    return cache_dir() / "openvino"


def _read_or_convert(core: Any, model: LoadedModel, folder: Path) -> Any:
    """The IR of ``model`` from ``folder``, converted (and checked) and saved there when absent."""
    from ..export import openvino_model, write_openvino

    xml = folder / f"{weights_key(model)}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        try:
            return core.read_model(xml)
        except RuntimeError:  # damaged: convert again
            pass
    try:
        write_openvino(model, xml)
    except OSError:  # a read-only cache: run without keeping it
        return openvino_model(model)
    return core.read_model(xml)


_COMPILED: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
"""Compiled models of this process by (weights key, precision, threads), the latest few: the
API builds an engine per call, and compiling again for each would cost more than the image."""
KEEP_COMPILED = 4
_REFUSED: dict[tuple[str, str, int], str] = {}
"""Why a model did not convert or compile, so that it is not tried again in this process."""


def _compile(model: LoadedModel, precision: str) -> Any:
    """The model compiled for OpenVINO's CPU plugin (converted or read from the IR cache)."""
    import openvino

    folder = ir_dir()
    core = openvino.Core()
    ov_model = _read_or_convert(core, model, folder)
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
    }
    if folder.is_dir():
        config["CACHE_DIR"] = str(folder)
    try:
        return core.compile_model(ov_model, "CPU", config)
    except RuntimeError as err:
        raise UpscaleError(f"OpenVINO cannot compile {model.name}: {str(err).strip().splitlines()[0]}") from None


class OpenVINOBackend:
    """Runs ``model`` through OpenVINO's CPU plugin in the setting's precision.

    Raises:
        UpscaleError: the model does not convert, or OpenVINO refuses to compile it (one line).
    """

    name = "openvino"

    def __init__(self, model: LoadedModel, setting: Setting) -> None:
        key = (weights_key(model), setting.precision, torch.get_num_threads())
        if key in _REFUSED:
            raise UpscaleError(_REFUSED[key])
        compiled = _COMPILED.get(key)
        if compiled is None:
            try:
                compiled = _compile(model, setting.precision)
            except UpscaleError as err:
                _REFUSED[key] = str(err)
                raise
            _COMPILED[key] = compiled
            while len(_COMPILED) > KEEP_COMPILED:
                _COMPILED.popitem(last=False)
        _COMPILED.move_to_end(key)
        self.request = compiled.create_infer_request()

    def __call__(self, x: Tensor) -> Tensor:
        out = self.request.infer([x.detach().to("cpu", torch.float32).contiguous().numpy()], share_inputs=True)
        return torch.from_numpy(next(iter(out.values())).copy())
