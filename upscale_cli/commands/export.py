"""``upscale export MODEL --format onnx|openvino``: a model as an ONNX file or OpenVINO IR."""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path

import typer

from ..errors import UsageError
from ..reporting import reported


class Format(str, Enum):
    onnx = "onnx"
    openvino = "openvino"


SUFFIX = {Format.onnx: ".onnx", Format.openvino: ".xml"}


def default_output(name: str, scale: int, fmt: Format, from_file: bool) -> Path:
    """``<model>_x<scale>.onnx`` / ``.xml`` in the current folder (a weights file's stem for ``--weights``)."""
    stem = Path(name).stem if from_file else name
    return Path(f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)}_x{scale}{SUFFIX[fmt]}")


def _targets(path: Path, fmt: Format) -> list[Path]:
    return [path, path.with_suffix(".bin")] if fmt is Format.openvino else [path]


def export(
    model: str | None = typer.Argument(None, help="Model name (see `upscale models`); optional with --weights."),
    fmt: Format = typer.Option(..., "--format", "-f", help="onnx (ONNX file) or openvino (IR .xml + .bin)."),
    scale: int | None = typer.Option(None, "--scale", "-s", help="Upscaling factor (default: 4, or the model's own, as for upscale)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write (default: <model>_x<scale>.onnx or .xml here)."
    ),
    weights: str | None = typer.Option(None, "--weights", help="Weights file, URL or hf://repo/file."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture for --weights, when the file does not tell."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the one in the README)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object describing the result."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks."),
) -> None:
    """Export a model for ONNX Runtime, OpenVINO, TensorRT and the like.

    The graph takes RGB, NCHW, float32 in 0..1 with dynamic batch, height and width, and gives
    the image at the model's scale (not clamped); the metadata says so. Models with a size
    multiple above 1 need height and width to be multiples of it. Every file is checked against
    PyTorch at another size (ONNX Runtime when installed, OpenVINO) before it is kept.
    Exit codes: 1 the model does not convert, 2 usage error, 3 weights unavailable.
    """
    with reported(verbose):
        from ..export import ONNX_OPSET, describe, write_onnx, write_openvino
        from ..options import ModelOptions

        if model is None and weights is None:
            raise UsageError("give a MODEL name or --weights FILE")
        if opset is not None and fmt is not Format.onnx:
            raise UsageError("--opset applies to --format onnx only")
        loaded = ModelOptions(model, scale, weights, arch).load(progress=not json_out)
        target = output if output is not None else default_output(loaded.name, loaded.scale, fmt, weights is not None)
        if target.suffix != SUFFIX[fmt]:
            raise UsageError(f"{target}: a {fmt.value} output ends in {SUFFIX[fmt]}")
        existing = [str(p) for p in _targets(target, fmt) if p.exists()]
        if existing and not overwrite:
            raise UsageError(f"{existing[0]} exists; pass --overwrite to replace it")
        if fmt is Format.onnx:
            result = write_onnx(loaded, target, opset=opset or ONNX_OPSET)
        else:
            result = write_openvino(loaded, target)
    typer.echo(json.dumps(result, indent=2) if json_out else describe(result))


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``upscale`` command group."""
    app.command("export")(export)
