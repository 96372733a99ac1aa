"""``upscale convert FILE``: any supported checkpoint to our own safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import UpscaleError, UsageError
from .models import _fail


def _output(source: Path, out: Path | None) -> Path:
    target = out if out is not None else source.with_suffix(".safetensors")
    if target.resolve() == source.resolve():
        raise UsageError(f"{target}: the output would overwrite the input; pass -o OUT.safetensors")
    return target


def convert(
    file: Path = typer.Argument(
        ..., help="A checkpoint of any supported format (.pth, .safetensors, .mat, .caffemodel, .params, ...)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write (default: FILE's stem + .safetensors beside it)."
    ),
    arch: str | None = typer.Option(
        None, "--arch", help="Model name or architecture family, when the keys do not tell."
    ),
    scale: int | None = typer.Option(None, "--scale", "-s", help="The scale, when the file does not tell."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object describing the result."),
) -> None:
    """Convert a checkpoint into a safetensors file that loads with no other flag.

    Nothing in the file is executed. The network is recognised from the keys
    (or named with --arch), loaded strictly, and written with its architecture,
    kwargs and scale in the metadata, as `upscale train` exports.
    Exit codes: 2 usage error, 3 unreadable file or weights that fit no network.
    """
    from ..convert import export
    from ..formats import sniff
    from ..loader import known_scales, load_model

    try:
        target = _output(file, output)
        if target.exists() and not overwrite:
            raise UsageError(f"{target} exists; pass --overwrite to replace it")
        fmt = sniff(file) if file.is_file() else None
        try:
            loaded = load_model(weights=str(file), arch=arch, scale=scale, progress=False)
        except UpscaleError as err:
            kind = f" ({fmt.name} file)" if fmt is not None else ""
            raise type(err)(f"{err}{kind}") from None
        scales = known_scales(loaded.arch, loaded.kwargs) or [loaded.scale]
        source = {"source": file.name, "source_sha256": loaded.sha256, "source_format": fmt.name if fmt else None}
        digest = export(loaded, target, scales, {**loaded.extra, **source})
    except UpscaleError as err:
        raise _fail(err) from None
    facts = {
        "output": str(target),
        "sha256": digest,
        "arch": loaded.arch.name,
        "kwargs": dict(loaded.kwargs),
        "scale": loaded.scale,
        "scales": scales,
        "source_format": source["source_format"],
        "source_sha256": loaded.sha256,
    }
    if json_out:
        typer.echo(json.dumps(facts, indent=2))
    else:
        Console(stderr=True).print(
            f"{escape(str(file))} ({facts['source_format']}) -> {escape(str(target))}: "
            f"{loaded.arch.name} x{loaded.scale} {json.dumps(facts['kwargs'], sort_keys=True)}",
            highlight=False,
            soft_wrap=True,
        )
        typer.echo(str(target))


def register(app: typer.Typer) -> None:
    """Add ``convert`` to the ``upscale`` command group."""
    app.command("convert")(convert)
