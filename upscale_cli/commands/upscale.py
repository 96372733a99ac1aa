"""The main command: ``upscale INPUT... [options]``."""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_FAILED, EXIT_OK, UpscaleError, UsageError
from ..reporting import reported

DEFAULT_MODEL = "default"
"""Model used when ``--model`` is not given: the in-house network shipped inside the package
(``upscale_cli/weights/default.safetensors``), so a first run needs no download."""

_EPILOG = (
    "Subcommands: [bold]upscale models[/], [bold]upscale download[/], [bold]upscale bench[/], "
    "[bold]upscale train[/] (each has --help). "
    "Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 3 weights unavailable, 130 interrupted."
)

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Job:
    """One input image and what becomes of it."""

    input: Path
    output: Path | None
    status: str = "pending"  # pending | done | skipped | failed | planned
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def record(self, model: str, scale: int, device: str, precision: str) -> dict[str, Any]:
        rec = {
            "input": str(self.input),
            "output": str(self.output) if self.output else None,
            "width": None,
            "height": None,
            "out_width": None,
            "out_height": None,
            "model": model,
            "scale": scale,
            "device": device,
            "precision": precision,
            "tile": None,
            "seconds": None,
            "status": self.status,
            "error": self.error,
        }
        rec.update(self.info)
        return rec


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"upscale-cli {__version__}")
        raise typer.Exit()


def _output_path(
    src_relative: Path, input_path: Path, output: Path | None, single_file_output: bool, suffix: str, ext: str
) -> Path:
    if single_file_output:
        assert output is not None
        return output
    name = f"{src_relative.stem}{suffix}{ext}"
    if output is None:
        return input_path.parent / name
    return output / src_relative.parent / name


def _fmt_suffix(template: str, model: str, scale: int, outscale: float | None) -> str:
    factor = f"{outscale:g}" if outscale is not None else str(scale)
    try:
        return template.format(scale=factor, model=model)
    except (KeyError, IndexError, ValueError):
        raise UsageError(f"--suffix {template!r}: only {{scale}} and {{model}} may be used as placeholders") from None


@app.command(help="Upscale images with a super-resolution model.", epilog=_EPILOG)
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns ('photos/*.jpg').", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file (one input) or folder (created). Default: beside each input.", rich_help_panel="Output")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help=f"Model name (see `upscale models`). Default: {DEFAULT_MODEL}.", rich_help_panel="Model")] = None,
    scale: Annotated[int | None, typer.Option("--scale", "-s", help="Upscaling factor of the model (default: 4, or the model's own).", rich_help_panel="Model")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Weights file, URL or hf://repo/file; overrides the manifest.", rich_help_panel="Model")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture of --weights when it cannot be told from the file.", rich_help_panel="Model")] = None,
    outscale: Annotated[float | None, typer.Option("--outscale", help="Final scale: run the model, then resample (antialiased bicubic).", rich_help_panel="Output")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Final width in pixels (aspect kept if --height is not given).", rich_help_panel="Output")] = None,
    height: Annotated[int | None, typer.Option("--height", help="Final height in pixels (aspect kept if --width is not given).", rich_help_panel="Output")] = None,
    suffix: Annotated[str, typer.Option("--suffix", help="Output name suffix; {scale} and {model} are filled in.", rich_help_panel="Output")] = "_x{scale}",
    fmt: Annotated[str, typer.Option("--format", help="auto|png|jpg|webp|tiff (auto keeps the input's, PNG when there is alpha).", rich_help_panel="Output")] = "auto",
    quality: Annotated[int | None, typer.Option("--quality", help="JPEG/WebP quality 1-100.", rich_help_panel="Output")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk folders and mirror their tree under --output.", rich_help_panel="Input")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (inputs are never overwritten).", rich_help_panel="Output")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists (resume a run).", rich_help_panel="Output")] = False,
    continue_on_error: Annotated[bool, typer.Option("--continue-on-error", help="Go on with the other inputs after a failure.", rich_help_panel="Input")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.", rich_help_panel="Input")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="K/N: process the K-th of N disjoint slices of the inputs (job arrays).", rich_help_panel="Input")] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse larger inputs (default: Pillow's limit; 0 = none).", rich_help_panel="Input")] = None,
    tile: Annotated[str, typer.Option("--tile", help="Tile side in input pixels, 'auto' (fits free memory) or 0 (whole image).", rich_help_panel="Engine")] = "auto",
    tile_overlap: Annotated[int | None, typer.Option("--tile-overlap", help="Context pixels per tile side (default: from the model's receptive field).", rich_help_panel="Engine")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.", rich_help_panel="Engine")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N|mps.", rich_help_panel="Engine")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto|fp32|fp16|bf16 (auto: fp16/bf16 on GPU, bf16 on CPUs with native bf16, else fp32).", rich_help_panel="Engine")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary (errors still shown).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks and details on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    console = Console(stderr=True, soft_wrap=True)
    with reported(verbose):
        code = _run(
            console,
            inputs=inputs, output=output, model=model, scale=scale, weights=weights, arch=arch,
            outscale=outscale, width=width, height=height, suffix=suffix, fmt=fmt, quality=quality,
            recursive=recursive, overwrite=overwrite, skip_existing=skip_existing,
            continue_on_error=continue_on_error, dry_run=dry_run, shard=shard, max_pixels=max_pixels,
            tile=tile, tile_overlap=tile_overlap, batch_size=batch_size, device=device,
            precision=precision, as_json=as_json, verbose=verbose, quiet=quiet,
        )
    raise typer.Exit(code)


def _run(console: Console, *, inputs: list[str], output: Path | None, model: str | None, scale: int | None,
         weights: str | None, arch: str | None, outscale: float | None, width: int | None, height: int | None,
         suffix: str, fmt: str, quality: int | None, recursive: bool, overwrite: bool, skip_existing: bool,
         continue_on_error: bool, dry_run: bool, shard: str | None, max_pixels: int | None, tile: str,
         tile_overlap: int | None, batch_size: int, device: str, precision: str, as_json: bool,
         verbose: bool, quiet: bool) -> int:
    from ..inputs import expand_inputs, parse_shard, take_shard
    from ..io import is_image_file, resolve_output_format

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    if quality is not None and not 1 <= quality <= 100:
        raise UsageError(f"--quality {quality}: must be between 1 and 100")
    resolve_output_format(fmt, None, False)  # validates --format early
    shard_kn = parse_shard(shard)

    expansion = expand_inputs(inputs, recursive=recursive, is_image=is_image_file)
    for path, why in expansion.skipped if not quiet else ():
        console.print(f"[dim]note: skipping {escape(str(path))}: {why}[/]", highlight=False)
    sources = take_shard(expansion.sources, shard_kn)
    jobs_missing = [Job(Path(word), None, "failed", f"{word}: no such file or folder") for word in expansion.missing]

    # Model first: a bad model name or missing weights is a usage/weights error, before any work.
    loaded, upscaler = _load(model, scale, weights, arch, device, precision, tile, tile_overlap, batch_size, quiet)
    model_name, s = loaded.name, loaded.scale
    # Validate the final-size options once (they are per image, but the errors are not).
    from ..api import target_size

    target_size(8, 8, s, outscale, width, height)

    single_file_output = (
        output is not None and len(sources) == 1 and len(expansion.missing) == 0
        and not output.is_dir() and output.suffix != "" and not str(output).endswith(("/", "\\"))
        and not recursive and not any(Path(w).is_dir() for w in inputs)
    )
    suffix_text = _fmt_suffix(suffix, model_name, s, outscale)
    input_set = {src.path.resolve() for src in expansion.sources}
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for src in sources:
        # Formats that keep alpha keep their extension under auto, and JPEG has no alpha, so
        # the extension is known before decoding (needed for --skip-existing and collisions).
        if single_file_output:
            ext = output.suffix  # type: ignore[union-attr]
        else:
            _, ext = resolve_output_format(fmt, src.path, False)
        out = _output_path(src.relative, src.path, output, single_file_output, suffix_text, ext)
        job = Job(src.path, out)
        key = out.resolve()
        if key in input_set:
            job.status, job.error = "failed", f"{src.path}: output {out} would overwrite an input; use -o or --suffix"
        elif key in claimed:
            job.status, job.error = "failed", f"{src.path}: output {out} is also the output of {claimed[key]}"
        else:
            claimed[key] = src.path
        jobs.append(job)

    emit = _Emitter(as_json, model_name, s, str(upscaler.device), upscaler.precision)
    if dry_run:
        return _dry_run(console, jobs_missing + jobs, upscaler, emit, max_pixels, overwrite, skip_existing)

    return _process(console, jobs_missing, jobs, upscaler, emit, fmt=fmt, quality=quality, overwrite=overwrite,
                    skip_existing=skip_existing, continue_on_error=continue_on_error, max_pixels=max_pixels,
                    outscale=outscale, width=width, height=height, protect=input_set, verbose=verbose,
                    quiet=quiet)


def _load(model: str | None, scale: int | None, weights: str | None, arch: str | None, device: str,
          precision: str, tile: str, tile_overlap: int | None, batch_size: int, quiet: bool):
    """The model (loaded once per run) and its engine.  With ``--weights`` and no ``--model``
    the file (and ``--arch``) alone decide the network."""
    from ..engine import Upscaler
    from ..loader import load_model
    from ..models import get_spec

    if model is None and weights is None:
        model = DEFAULT_MODEL
    if scale is None and weights is None:
        spec = get_spec(model)  # type: ignore[arg-type]
        scale = 4 if 4 in spec.scales else spec.scales[-1]
    loaded = load_model(model, scale, weights=weights, arch=arch, progress=not quiet)
    upscaler = Upscaler(loaded, device=device, precision=precision, tile=tile, tile_overlap=tile_overlap,
                        batch_size=batch_size)
    return loaded, upscaler


class _Emitter:
    """Writes the per-image JSON lines (stdout) when ``--json`` is on."""

    def __init__(self, enabled: bool, model: str, scale: int, device: str, precision: str) -> None:
        self.enabled, self.model, self.scale, self.device, self.precision = enabled, model, scale, device, precision

    def __call__(self, job: Job) -> None:
        if self.enabled:
            rec = job.record(self.model, self.scale, self.device, self.precision)
            sys.stdout.write(json.dumps(rec) + "\n")
            sys.stdout.flush()


def _dry_run(console: Console, jobs: list[Job], upscaler, emit: _Emitter, max_pixels: int | None,
             overwrite: bool, skip_existing: bool) -> int:
    from ..io import image_size

    s = upscaler.model.scale
    failed = 0
    for job in jobs:
        if job.status == "failed":
            failed += 1
            console.print(f"[red]error:[/] {escape(str(job.error))}", highlight=False)
            emit(job)
            continue
        try:
            w, h = image_size(job.input, max_pixels)
        except UpscaleError as exc:
            job.status, job.error = "failed", str(exc)
            failed += 1
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            emit(job)
            continue
        plan = upscaler.plan(h, w)
        exists = job.output is not None and job.output.exists()
        action = "skip (exists)" if exists and skip_existing else ("overwrite" if exists and overwrite else "write")
        if exists and not (skip_existing or overwrite):
            action = "refuse (exists)"
        job.status = "planned"
        job.info.update(width=w, height=h, out_width=w * s, out_height=h * s, tile=plan.tile, action=action)
        console.print(f"{escape(str(job.input))} -> {escape(str(job.output))}  {w}x{h} -> {w * s}x{h * s}, {plan.count} tile(s): {action}",
                      highlight=False)
        emit(job)
    return EXIT_FAILED if failed else EXIT_OK


def _process(console: Console, missing: list[Job], jobs: list[Job], upscaler, emit: _Emitter, *, fmt: str,
             quality: int | None, overwrite: bool, skip_existing: bool, continue_on_error: bool,
             max_pixels: int | None, outscale: float | None, width: int | None, height: int | None,
             protect: set[Path], verbose: bool, quiet: bool) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..api import upscale_picture
    from ..io import ImageIOWarning, read_image, write_image

    counts = {"done": 0, "skipped": 0, "failed": 0}
    out_pixels = 0
    started = time.perf_counter()

    def fail(job: Job, message: str) -> None:
        job.status, job.error = "failed", message
        counts["failed"] += 1
        progress.console.print(f"[red]error:[/] {escape(message)}", highlight=False)
        emit(job)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
        for job in missing:
            fail(job, job.error or str(job.input))
        stop = bool(missing) and not continue_on_error
        files_task = progress.add_task("images", total=len(jobs))
        for job in jobs:
            if stop:
                break
            progress.update(files_task, description=f"{job.input.name}")
            if job.status == "failed":
                fail(job, job.error or "failed")
                stop = not continue_on_error
                progress.advance(files_task)
                continue
            assert job.output is not None
            if job.output.exists() and skip_existing:
                job.status = "skipped"
                counts["skipped"] += 1
                emit(job)
                progress.advance(files_task)
                continue
            if job.output.exists() and not overwrite:
                fail(job, f"{job.input}: output {job.output} exists; use --overwrite or --skip-existing")
                stop = not continue_on_error
                progress.advance(files_task)
                continue
            t0 = time.perf_counter()
            tiles_task = None
            try:
                pic = read_image(job.input, max_pixels)
                plan = upscaler.plan(pic.height, pic.width)
                if plan.count > 1:
                    tiles_task = progress.add_task("  tiles", total=plan.count)

                def on_tiles(done: int, total: int, _task=tiles_task) -> None:
                    if _task is not None:
                        progress.update(_task, completed=done, total=total)

                result = upscale_picture(pic, upscaler, outscale=outscale, width=width, height=height,
                                         progress=on_tiles)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ImageIOWarning)
                    write_image(result, job.output, fmt, quality, overwrite=overwrite, protect=protect)
                for w in caught:
                    progress.console.print(f"[yellow]warning:[/] {escape(f'{job.input}: {w.message}')}", highlight=False)
            except UpscaleError as exc:
                if verbose:
                    progress.console.print(traceback.format_exc(), highlight=False, markup=False)
                fail(job, str(exc) if str(job.input) in str(exc) else f"{job.input}: {exc}")
                stop = not continue_on_error
                progress.advance(files_task)
                continue
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # an unexpected bug still gets one line (and the trace with -v)
                if verbose:
                    progress.console.print(traceback.format_exc(), highlight=False, markup=False)
                fail(job, f"{job.input}: {type(exc).__name__}: {exc}".splitlines()[0])
                stop = not continue_on_error
                progress.advance(files_task)
                continue
            finally:
                if tiles_task is not None:
                    progress.remove_task(tiles_task)
            job.status = "done"
            counts["done"] += 1
            out_pixels += result.width * result.height
            job.info.update(width=pic.width, height=pic.height, out_width=result.width, out_height=result.height,
                            tile=plan.tile, seconds=round(time.perf_counter() - t0, 4))
            emit(job)
            progress.advance(files_task)
    elapsed = time.perf_counter() - started
    not_run = len(jobs) + len(missing) - sum(counts.values())
    mps = out_pixels / 1e6 / elapsed if elapsed > 0 else 0.0
    summary = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
               + (f", {not_run} not run (stopped at the first failure; --continue-on-error goes on)" if not_run else "")
               + f" in {elapsed:.1f} s ({mps:.2f} output MP/s)")
    if not quiet:
        console.print(summary, highlight=False)
    return EXIT_FAILED if counts["failed"] else EXIT_OK
