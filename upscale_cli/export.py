"""Converting a :class:`~upscale_cli.models.loaded.LoadedModel` to ONNX and OpenVINO.

The exported graph is :meth:`LoadedModel.__call__`: **RGB, NCHW, float32, 0..1** in and the
same at ``scale`` times the size out (not clamped), with dynamic batch, height and width.
Y-only families keep their bicubic chroma inside the graph (the dense form of
:func:`~upscale_cli.resize.imresize`, see :func:`~upscale_cli.resize.exporting`).

Size rule: models with ``size_multiple > 1`` (window attention: SwinIR, HAT, DAT) are exported
without the padding that ``LoadedModel`` does with Python control flow, so their height and width
must be multiples of ``size_multiple`` (stored in the metadata; the engine pads whole images to
it already, so every tile it runs is one).

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at
:data:`ONNX_OPSET`, the same tracer OpenVINO's ``convert_model`` uses for a module, so the two
formats see one graph (``dynamo=True`` works too, from a batch-2 example, but is slower).
Each file is checked before it is kept: ONNX Runtime (or OpenVINO) must reproduce our fp32
output within :data:`TOLERANCE` at a size other than the export size.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import UpscaleError, UsageError
from .files import atomic_path
from .models.loaded import LoadedModel, in_convention

if TYPE_CHECKING:
    import openvino

ONNX_OPSET = 17
"""ONNX opset of the exported files (ONNX Runtime >= 1.11, TensorRT >= 8.6, OpenVINO read it)."""

TOLERANCE = 1e-4
"""Largest max-abs difference from our fp32 output that an exported file may show."""

EXAMPLE_SIDE = 64
"""Default side of the example input the graph is traced at (rounded up to ``size_multiple``)."""

INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportError(UpscaleError):
    """The model cannot be converted, or the converted graph is wrong (exit 1); the message is one line."""


class ExportModule(nn.Module):
    """``forward(x) = model(x)`` for inputs whose H and W are multiples of ``size_multiple``.

    No crop and no padding: with that size rule :meth:`LoadedModel.__call__` does neither, and
    leaving out its shape arithmetic keeps every size out of the traced graph.
    """

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.net = model.module
        self.scale = model.scale
        self.multiscale = model.arch.multiscale
        self.convention = model.convention

    def _run(self, x: Tensor) -> list[Tensor]:
        return [self.net(x, self.scale) if self.multiscale else self.net(x)]

    def forward(self, x: Tensor) -> Tensor:
        return in_convention(self._run, x, self.convention)[0]


def export_module(model: LoadedModel) -> nn.Module:
    """A module whose ``forward(x)`` is ``model(x)``; the network is put in fp32 eval mode, in place."""
    model.module.float().eval()
    return ExportModule(model).eval()


def traced_side(model: LoadedModel, side: int = EXAMPLE_SIDE) -> int:
    """``side`` rounded up to the model's size multiple."""
    m = model.size_multiple
    return -(-side // m) * m


def check_side(model: LoadedModel, side: int) -> tuple[int, int]:
    """A (height, width) unlike ``side`` x ``side``, both multiples of ``size_multiple``: what checks run at.

    Both are larger than ``side``: some networks pad small inputs inside (OmniSR's ESA needs 15 px),
    Python control flow that a trace at ``side`` does not keep.
    """
    m = model.size_multiple
    return (traced_side(model, side + 1), traced_side(model, side + m + 1))


def metadata(model: LoadedModel) -> dict[str, str]:
    """The facts stored in every exported file (ONNX ``metadata_props``, OpenVINO ``rt_info``)."""
    facts = {
        "model": model.name,
        "arch": model.arch.name,
        "scale": str(model.scale),
        "input_convention": "RGB, NCHW, float32",
        "value_range": "0..1 in, 0..1 out (not clamped)",
        "size_multiple": str(model.size_multiple),
        "dynamic_axes": "N, H, W",
        "producer": "upscale-cli",
    }
    if model.sha256:
        facts["weights_sha256"] = model.sha256
    return facts


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{module} is not installed; pip install 'upscale-cli[{extra}]'")


@contextmanager
def _converting(model: LoadedModel, what: str) -> Iterator[None]:
    """Turn any failure inside the tracer or converter into a one-line :class:`ExportError`."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings; a wrong graph fails the numeric check instead
            yield
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - converters raise anything; the user gets one line
        raise ExportError(f"{model.name}: {what} failed: {_first_line(err)}") from err


def _reference(model: LoadedModel, x: Tensor) -> Tensor:
    with torch.no_grad():
        return export_module(model)(x)


def _checked(model: LoadedModel, diff: float, runtime: str) -> float:
    if not diff <= TOLERANCE:  # NaN fails too
        raise ExportError(
            f"{model.name}: {runtime} output differs from PyTorch by {diff:.3g} (> {TOLERANCE:g}); "
            "the graph does not hold at other sizes"
        )
    return diff


def _input(model: LoadedModel, size: tuple[int, int], batch: int = 1) -> Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))


def openvino_model(model: LoadedModel, example_side: int = EXAMPLE_SIDE, check: bool = True) -> openvino.Model:
    """``model`` as an ``openvino.Model`` with dynamic batch, height and width (input ``[-1, 3, -1, -1]``).

    With ``check`` the converted model is compiled on OpenVINO's CPU plugin and run at a size other
    than the example's; a difference above :data:`TOLERANCE` raises :class:`ExportError`, as does
    any conversion failure (the engine then runs the model with PyTorch).
    """
    _require("openvino", "openvino")
    import openvino as ov

    side = traced_side(model, example_side)
    with _converting(model, "OpenVINO conversion"):
        ov_model = ov.convert_model(
            export_module(model),
            example_input=_input(model, (side, side)),
            input=[ov.PartialShape([-1, 3, -1, -1])],
        )
        ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
        ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    if check:
        check_openvino(model, ov_model, side)
    return ov_model


def check_openvino(model: LoadedModel, ov_model: openvino.Model, side: int = EXAMPLE_SIDE) -> float:
    """Max abs difference between OpenVINO (CPU plugin, fp32) and PyTorch at :func:`check_side`."""
    import openvino as ov

    x = _input(model, check_side(model, side), batch=2)
    with _converting(model, "OpenVINO check"):
        compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = torch.from_numpy(compiled(x.numpy())[0])
    return _checked(model, (got - _reference(model, x)).abs().max().item(), "OpenVINO")


def check_onnx(model: LoadedModel, path: Path, side: int = EXAMPLE_SIDE) -> float | None:
    """Max abs difference between ONNX Runtime (CPU) on ``path`` and PyTorch at :func:`check_side`;
    ``None`` when onnxruntime is not installed.  Above :data:`TOLERANCE`: :class:`ExportError`."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    x = _input(model, check_side(model, side), batch=2)
    with _converting(model, "ONNX Runtime check"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    return _checked(model, (got - _reference(model, x)).abs().max().item(), "ONNX Runtime")


def _add_onnx_metadata(path: Path, facts: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def write_onnx(model: LoadedModel, path: Path, opset: int = ONNX_OPSET, side: int = EXAMPLE_SIDE) -> dict[str, Any]:
    """Write ``model`` as an ONNX file (dynamic N, H, W; :func:`metadata` in ``metadata_props``).

    The file is checked with :func:`check_onnx` before it replaces ``path``; on any failure nothing
    is left at ``path``.  Returns what was written: path, opset, metadata, the check's difference.
    """
    _require("onnx", "onnx")
    path = Path(path)
    side = traced_side(model, side)
    facts = metadata(model)
    with atomic_path(path) as tmp:
        with _converting(model, "ONNX export"):
            torch.onnx.export(
                export_module(model),
                (_input(model, (side, side)),),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "sH", 3: "sW"}},
            )
            _add_onnx_metadata(tmp, facts)
        diff = check_onnx(model, tmp, side)
    return {"path": str(path), "format": "onnx", "opset": opset, "metadata": facts, "max_abs_diff": diff,
            "checked_with": "onnxruntime" if diff is not None else None}


def write_openvino(model: LoadedModel, path: Path, side: int = EXAMPLE_SIDE) -> dict[str, Any]:
    """Write ``model`` as OpenVINO IR (``path`` ``.xml`` and its ``.bin``; :func:`metadata` in ``rt_info``).

    Both files are written atomically (the ``.bin`` first); the model is checked with
    :func:`check_openvino` before anything is written.
    """
    _require("openvino", "openvino")
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise UsageError(f"{path}: an OpenVINO IR path ends in .xml")
    ov_model = openvino_model(model, side, check=False)
    diff = check_openvino(model, ov_model, traced_side(model, side))
    facts = metadata(model)
    for key, value in facts.items():
        ov_model.set_rt_info(value, ["upscale_cli", key])
    bin_path = path.with_suffix(".bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as folder:
        staged = Path(folder) / "model.xml"
        with _converting(model, "OpenVINO save"):
            ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        # the .xml implies its .bin by name: the .bin goes in first, then the .xml that makes the pair visible
        with atomic_path(path) as tmp_xml, atomic_path(bin_path) as tmp_bin:
            os.replace(staged.with_suffix(".bin"), tmp_bin)
            os.replace(staged, tmp_xml)
    return {"path": str(path), "weights_path": str(bin_path), "format": "openvino", "opset": None,
            "metadata": facts, "max_abs_diff": diff, "checked_with": "openvino"}


def describe(result: dict[str, Any]) -> str:
    """One line for the user: what was written, the opset and the check."""
    check = result["max_abs_diff"]
    checked = "not checked (onnxruntime not installed)" if check is None else (
        f"{result['checked_with']} max abs diff {check:.2g}")
    opset = f", opset {result['opset']}" if result["opset"] else ""
    meta = result["metadata"]
    return (f"{result['path']}: {meta['model']} x{meta['scale']} ({result['format']}{opset}, "
            f"size multiple {meta['size_multiple']}); {checked}")

