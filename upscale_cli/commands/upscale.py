"""The main command: ``upscale INPUT... [options]``.

The flags build one :class:`~upscale_cli.options.RunOptions` (whose defaults the Python API
shares); a run then goes: expand the inputs, check ``-o``, load the model, plan one job per
input, and for each job check the header (existing output, frames, memory) before decoding it.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_FAILED, EXIT_OK, InputError, UpscaleError, UsageError
from ..options import (
    DEFAULT_MODEL,
    EngineOptions,
    InputOptions,
    ModelOptions,
    OutputOptions,
    PictureOptions,
    ReportOptions,
    RunOptions,
)
from ..reporting import reported

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import Progress, TaskID

    from ..engine import Upscaler
    from ..inputs import Source
    from ..io import ImageInfo, Picture
    from ..pipeline import Outcome

__all__ = ["DEFAULT_MODEL", "app"]

_EPILOG = (
    "Subcommands: [bold]upscale models[/], [bold]upscale download[/], [bold]upscale bench[/], "
    "[bold]upscale compare[/], [bold]upscale train[/], [bold]upscale export[/] (each has --help). "
    "Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 3 weights unavailable, 130 interrupted, "
    "143 terminated."
)
_IN, _OUT, _MODEL, _ENGINE = "Input", "Output", "Model", "Engine"

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
    format: str | None = None  # the output's format (Pillow's name), known before decoding
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


@app.command(help="Upscale images with a super-resolution model.", epilog=_EPILOG)
def upscale(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files, folders or glob patterns ('photos/*.jpg').", show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", rich_help_panel=_OUT,
        help="Output file (one input) or folder (created). Default: beside each input.")] = OutputOptions.output,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", rich_help_panel=_MODEL,
        help=f"Model name (see `upscale models`). Default: {DEFAULT_MODEL}.")] = ModelOptions.model,
    scale: Annotated[int | None, typer.Option(
        "--scale", "-s", rich_help_panel=_MODEL,
        help="Upscaling factor of the model (default: 4, or the model's own).")] = ModelOptions.scale,
    weights: Annotated[str | None, typer.Option(
        "--weights", rich_help_panel=_MODEL,
        help="Weights file, URL or hf://repo/file; overrides the manifest.")] = ModelOptions.weights,
    arch: Annotated[str | None, typer.Option(
        "--arch", rich_help_panel=_MODEL,
        help="Architecture of --weights when it cannot be told from the file.")] = ModelOptions.arch,
    outscale: Annotated[float | None, typer.Option(
        "--outscale", rich_help_panel=_OUT,
        help="Final scale: run the model, then resample (antialiased bicubic).")] = PictureOptions.outscale,
    width: Annotated[int | None, typer.Option(
        "--width", rich_help_panel=_OUT,
        help="Final width in pixels (aspect kept if --height is not given).")] = PictureOptions.width,
    height: Annotated[int | None, typer.Option(
        "--height", rich_help_panel=_OUT,
        help="Final height in pixels (aspect kept if --width is not given).")] = PictureOptions.height,
    suffix: Annotated[str, typer.Option(
        "--suffix", rich_help_panel=_OUT,
        help="Output name suffix; {scale} and {model} are filled in.")] = OutputOptions.suffix,
    fmt: Annotated[str, typer.Option(
        "--format", rich_help_panel=_OUT,
        help="auto|png|jpg|webp|tiff (auto keeps the input's, PNG when there is alpha).")] = OutputOptions.fmt,
    quality: Annotated[int | None, typer.Option(
        "--quality", rich_help_panel=_OUT, help="JPEG/WebP quality 1-100.")] = OutputOptions.quality,
    recursive: Annotated[bool, typer.Option(
        "--recursive", "-r", rich_help_panel=_IN,
        help="Walk folders and mirror their tree under --output.")] = InputOptions.recursive,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", rich_help_panel=_OUT,
        help="Replace existing outputs (inputs are never overwritten).")] = OutputOptions.overwrite,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", rich_help_panel=_OUT,
        help="Skip inputs whose output exists and decodes at the expected size (resume a run); "
             "redo the others.")] = OutputOptions.skip_existing,
    continue_on_error: Annotated[bool, typer.Option(
        "--continue-on-error", rich_help_panel=_IN,
        help="Go on with the other inputs after a failure.")] = InputOptions.continue_on_error,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=_IN,
        help="Print the plan, with the checks a run makes before decoding, and write nothing.")] = InputOptions.dry_run,
    shard: Annotated[str | None, typer.Option(
        "--shard", rich_help_panel=_IN,
        help="K/N: process the K-th of N disjoint slices of the inputs (job arrays).")] = InputOptions.shard,
    max_pixels: Annotated[int | None, typer.Option(
        "--max-pixels", rich_help_panel=_IN,
        help="Refuse larger inputs (default: Pillow's limit; 0 = none).")] = InputOptions.max_pixels,
    first_frame: Annotated[bool, typer.Option(
        "--first-frame", rich_help_panel=_IN,
        help="Upscale only the first frame of animations and multi-page files (needed when the output "
             "format cannot hold the frames).")] = InputOptions.first_frame,
    tile: Annotated[str, typer.Option(
        "--tile", rich_help_panel=_ENGINE,
        help="Tile side in input pixels, 'auto' (fits free memory) or 0 (whole image); raised to the "
             "smallest that keeps the model's context.")] = str(EngineOptions.tile),
    tile_overlap: Annotated[int | None, typer.Option(
        "--tile-overlap", rich_help_panel=_ENGINE,
        help="Context pixels per tile side (default: from the model's receptive field).")] = EngineOptions.tile_overlap,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", rich_help_panel=_ENGINE, help="Tiles per forward pass.")] = EngineOptions.batch_size,
    device: Annotated[str, typer.Option(
        "--device", rich_help_panel=_ENGINE, help="auto|cpu|cuda|cuda:N|mps.")] = EngineOptions.device,
    precision: Annotated[str, typer.Option(
        "--precision", rich_help_panel=_ENGINE,
        help="auto|fp32|fp16|bf16 (auto: fp16/bf16 on GPU, bf16 on CPUs with native bf16, "
             "else fp32).")] = EngineOptions.precision,
    backend: Annotated[str, typer.Option(
        "--backend", rich_help_panel=_ENGINE,
        help="auto|torch|openvino (auto: OpenVINO on the CPU when installed and the model converts; "
             "$UPSCALE_BACKEND sets it).")] = EngineOptions.backend,
    compile: Annotated[bool, typer.Option(
        "--compile", rich_help_panel=_ENGINE,
        help="torch.compile the network once per run (pays off over a folder, mostly on GPUs).")]
        = EngineOptions.compile,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per image on stdout.")] = ReportOptions.as_json,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress or summary (errors still shown).")] = ReportOptions.quiet,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Tracebacks and details on errors.")] = ReportOptions.verbose,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    flags = dict(locals())  # the parameters, by the names RunOptions groups them under
    del flags["inputs"], flags["version"]
    console = Console(stderr=True, soft_wrap=True)
    with reported(verbose):
        code = _run(console, inputs, RunOptions.from_flat(**flags))
    raise typer.Exit(code)


def _note(console: Console, opts: RunOptions, text: str) -> None:
    if not opts.report.quiet:
        console.print(f"[dim]note: {escape(text)}[/]", highlight=False)


def _run(console: Console, words: list[str], opts: RunOptions) -> int:
    """Plan the run (every usage error before any work), then dry-run or process it."""
    from ..inputs import expand_inputs, parse_shard, take_shard
    from ..io import is_image_file

    started = time.time()
    expansion = expand_inputs(words, recursive=opts.input.recursive, is_image=is_image_file)
    for path, why in expansion.skipped:
        _note(console, opts, f"skipping {path}: {why}")
    sources = take_shard(expansion.sources, parse_shard(opts.input.shard))
    failed = [Job(path, None, status="failed", error=message) for path, message in expansion.failed]
    single_file = _single_file_output(words, len(expansion.sources) + len(failed), opts)  # all shards alike

    # Model next: a bad model name or missing weights is a usage/weights error, before any work.
    loaded = opts.model.load(progress=not opts.report.quiet)
    from ..engine import Upscaler

    upscaler = Upscaler(loaded, opts.engine)
    if upscaler.tile_note:
        _note(console, opts, upscaler.tile_note)
    if upscaler.precision_note:
        console.print(f"[yellow]warning:[/] {escape(upscaler.precision_note)}", highlight=False)
    if upscaler.backend_note and opts.report.verbose:
        _note(console, opts, upscaler.backend_note)
    suffix = opts.output.name_suffix(loaded.name, loaded.scale, opts.picture.outscale)
    jobs = _plan(sources, {src.path.resolve() for src in expansion.sources}, single_file, suffix, opts)
    emit = _Emitter(opts.report.as_json, loaded.name, loaded.scale, str(upscaler.device), upscaler.precision)
    if opts.input.dry_run:
        return _dry_run(console, failed + jobs, upscaler, emit, opts)
    _sweep_temps(console, jobs, started, opts)
    protect = {src.path for src in expansion.sources}
    return _process(console, failed, jobs, upscaler, emit, opts, protect)


def _writable_extension(path: Path) -> bool:
    """Does an image writer take ``path``'s extension?  ``auto`` keeps a known extension's
    spelling and falls back to ``.png`` otherwise (:func:`~upscale_cli.io.resolve_output_format`)."""
    from ..io import resolve_output_format

    return path.suffix != "" and resolve_output_format("auto", path, False)[1] == path.suffix


def _single_file_output(words: list[str], count: int, opts: RunOptions) -> bool:
    """Is ``-o`` one output file (one input file) rather than a folder?

    Raises:
        UsageError: ``-o`` is an existing file, or names an image file, with several inputs
            or a folder input; or it is one file with an extension no writer takes under
            ``--format auto``.
    """
    out = opts.output.output
    if out is None or out.is_dir() or str(out).endswith(("/", "\\")):
        return False
    folder_input = opts.input.recursive or any(Path(w).is_dir() for w in words)
    if count == 1 and not folder_input and out.suffix != "":
        if opts.output.fmt.strip().lower() == "auto" and not _writable_extension(out):
            raise UsageError(f"-o {out}: no image writer for the extension {out.suffix!r}; "
                             "use .png, .jpg, .webp or .tif, or give --format")
        return True
    if out.exists() or _writable_extension(out):
        what = "is an existing file" if out.exists() else "names an image file"
        inputs = "a folder input" if folder_input else f"{count} inputs"
        raise UsageError(f"-o {out} {what}, but {inputs} need an output folder")
    return False


def _plan(sources: list[Source], inputs: set[Path], single_file: bool, suffix: str, opts: RunOptions) -> list[Job]:
    """One job per source, with its output path and format; an output that would overwrite an
    input, or that two inputs share, fails its job."""
    from ..io import resolve_output_format

    out_opt = opts.output
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for src in sources:
        # Formats that keep alpha keep their extension under auto, and JPEG has no alpha, so
        # the extension is known before decoding (needed for --skip-existing and collisions).
        if single_file:
            out: Path = out_opt.output  # type: ignore[assignment]
            fmt = resolve_output_format(out_opt.fmt, out if out_opt.fmt.strip().lower() == "auto" else None, False)[0]
        else:
            fmt, ext = resolve_output_format(out_opt.fmt, src.path, False)
            name = f"{src.relative.stem}{suffix}{ext}"
            out = src.path.parent / name if out_opt.output is None else out_opt.output / src.relative.parent / name
        job = Job(src.path, out, fmt)
        key = out.resolve()
        if key in inputs:
            job.status, job.error = "failed", f"{src.path}: output {out} would overwrite an input; use -o or --suffix"
        elif key in claimed:
            job.status, job.error = "failed", f"{src.path}: output {out} is also the output of {claimed[key]}"
        else:
            claimed[key] = src.path
        jobs.append(job)
    return jobs


def _sweep_temps(console: Console, jobs: list[Job], started: float, opts: RunOptions) -> None:
    """Remove the temp files (``.NAME.*.tmp``) that a killed run left in the output folders,
    those older than this run; say which under ``-v``."""
    from ..files import sweep_stale_temps

    folders: dict[Path, set[str]] = {}
    for job in jobs:
        if job.output is not None:
            folders.setdefault(job.output.parent, set()).add(job.output.name)
    for folder, names in sorted(folders.items()):
        for path in sweep_stale_temps(folder, older_than=started, names=names):
            if opts.report.verbose:
                _note(console, opts, f"removed {path}, a temp file an earlier run left behind")


class _Emitter:
    """Writes the per-image JSON lines (stdout) when ``--json`` is on."""

    def __init__(self, enabled: bool, model: str, scale: int, device: str, precision: str) -> None:
        self.enabled, self.model, self.scale, self.device, self.precision = enabled, model, scale, device, precision

    def __call__(self, job: Job) -> None:
        if self.enabled:
            rec = job.record(self.model, self.scale, self.device, self.precision)
            sys.stdout.write(json.dumps(rec) + "\n")
            sys.stdout.flush()


def _action(job: Job, size: tuple[int, int], opts: OutputOptions) -> str:
    """What becomes of the job's output: write | overwrite | skip | redo (an existing output that
    is incomplete under ``--skip-existing``).

    Raises:
        OutputExistsError: it exists and neither ``--overwrite`` nor ``--skip-existing`` is given.
    """
    from ..io import OutputExistsError, output_is_complete

    assert job.output is not None
    if not job.output.exists():
        return "write"
    if opts.skip_existing:
        return "skip" if output_is_complete(job.output, size) else "redo"
    if opts.overwrite:
        return "overwrite"
    raise OutputExistsError(f"{job.input}: output {job.output} exists; use --overwrite or --skip-existing")


def _check(job: Job, upscaler: Upscaler, opts: RunOptions) -> tuple[ImageInfo, tuple[int, int], str]:
    """The checks of one job from its header, before decoding: the existing output, the frames
    the output format holds, the memory.  Returns ``(info, (out_width, out_height), action)``.

    Raises:
        InputError: one line naming the input and the flag that changes the outcome.
    """
    from ..api import check_memory
    from ..io import output_holds, probe

    info = probe(job.input, opts.input.max_pixels)
    out_h, out_w = opts.picture.final_size(info.height, info.width, upscaler.model.scale)
    action = _action(job, (out_w, out_h), opts.output)
    if action == "skip":
        return info, (out_w, out_h), action
    if opts.input.first_frame:
        info = replace(info, frames=1)
    reason = output_holds(info, job.format)  # type: ignore[arg-type]
    if reason:
        raise InputError(f"{job.input}: {reason}")
    check_memory(info, upscaler, opts.picture)
    return info, (out_w, out_h), action


_ACTION_TEXT = {"write": "write", "overwrite": "overwrite", "skip": "skip (exists)",
                "redo": "redo (the existing output is incomplete)"}


def _dry_run(console: Console, jobs: list[Job], upscaler: Upscaler, emit: _Emitter, opts: RunOptions) -> int:
    """Print each job's plan after the same checks a run makes before decoding."""
    failed = 0
    for job in jobs:
        if job.status != "failed":
            try:
                info, (out_w, out_h), action = _check(job, upscaler, opts)
            except UpscaleError as exc:
                job.status, job.error = "failed", str(exc)
        if job.status == "failed":
            failed += 1
            console.print(f"[red]error:[/] {escape(str(job.error))}", highlight=False)
            emit(job)
            continue
        plan = upscaler.plan(info.height, info.width)
        frames = f" x {info.frame_count} frames" if info.frame_count > 1 else ""
        job.status = "planned"
        job.info.update(width=info.width, height=info.height, out_width=out_w, out_height=out_h, tile=plan.tile,
                        action=_ACTION_TEXT[action])
        console.print(f"{escape(str(job.input))} -> {escape(str(job.output))}  {info.width}x{info.height} -> "
                      f"{out_w}x{out_h}{frames}, {plan.count} tile(s): {_ACTION_TEXT[action]}", highlight=False)
        emit(job)
    return EXIT_FAILED if failed else EXIT_OK


def _overlap(jobs: list[Job]) -> bool:
    """Pipeline the jobs (decode ahead, encode behind) when more than one has work to do and
    ``$UPSCALE_OVERLAP`` is not ``0`` (the switch that benchmarks and tests compare with)."""
    import os

    return os.environ.get("UPSCALE_OVERLAP", "1") != "0" and sum(job.status != "failed" for job in jobs) > 1


def _process(console: Console, failed: list[Job], jobs: list[Job], upscaler: Upscaler, emit: _Emitter,
             opts: RunOptions, protect: set[Path]) -> int:
    """Run the jobs in order with progress bars (:class:`~upscale_cli.pipeline.Pipeline`: a
    folder's next image is decoded and its previous one encoded while the network runs); the
    summary line at the end.  Stopping at a failure writes nothing past the failing job."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..io import ImageIOWarning
    from ..pipeline import Pipeline

    counts = {"done": 0, "skipped": 0, "failed": 0}
    out_pixels = 0
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=opts.report.quiet) as progress:

        def fail(job: Job, message: str) -> None:
            job.status, job.error = "failed", message
            counts["failed"] += 1
            progress.console.print(f"[red]error:[/] {escape(message)}", highlight=False)
            emit(job)

        for job in failed:
            fail(job, job.error or str(job.input))
        stop = bool(failed) and not opts.input.continue_on_error
        files_task = progress.add_task("images", total=len(jobs))

        def settle(outcome: Outcome[Job, _Written]) -> bool:
            nonlocal out_pixels
            job = outcome.job
            out_pixels += _one(outcome, opts, progress)
            if job.status == "failed":
                fail(job, job.error or "failed")
            else:
                counts[job.status] += 1
                emit(job)
            progress.advance(files_task)
            return job.status != "failed" or opts.input.continue_on_error

        if not stop:
            work = _Work(upscaler, opts, protect, progress, files_task)
            pipeline = Pipeline(work.decode, work.compute, work.encode, settle)
            work.poll = pipeline.poll
            with warnings.catch_warnings():
                warnings.simplefilter("always", ImageIOWarning)
                pipeline.run(jobs, overlap=_overlap(jobs))
    elapsed = time.perf_counter() - started
    not_run = len(jobs) + len(failed) - sum(counts.values())
    mps = out_pixels / 1e6 / elapsed if elapsed > 0 else 0.0
    summary = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
               + (f", {not_run} not run (stopped at the first failure; --continue-on-error goes on)" if not_run else "")
               + f" in {elapsed:.1f} s ({mps:.2f} output MP/s)")
    if not opts.report.quiet:
        console.print(summary, highlight=False)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _one(outcome: Outcome[Job, _Written], opts: RunOptions, progress: Progress) -> int:
    """Settle one job from its outcome: done (the notes of the reader and the writer become
    ``warning:`` lines), skipped, or failed with one line (the traceback under ``-v``).  Returns
    the output pixels written."""
    job, exc = outcome.job, outcome.error
    if exc is not None:
        if opts.report.verbose:
            progress.console.print("".join(traceback.format_exception(exc)), highlight=False, markup=False)
        if isinstance(exc, UpscaleError):
            message = str(exc) if str(job.input) in str(exc) else f"{job.input}: {exc}"
        else:  # an unexpected bug still gets one line (and the trace with -v)
            message = f"{job.input}: {type(exc).__name__}: {exc}".splitlines()[0]
        job.status, job.error = "failed", message
        return 0
    written = outcome.result
    if written is None:  # failed in the plan, or skipped: the status says which
        return 0
    for w in outcome.warnings:
        progress.console.print(f"[yellow]warning:[/] {escape(f'{job.input}: {w.message}')}", highlight=False)
    job.status = "done"
    job.info.update(width=written.width, height=written.height, out_width=written.out_width,
                    out_height=written.out_height, tile=written.tile, seconds=round(outcome.seconds, 4))
    return written.pixels


@dataclass
class _Decoded:
    """A job's input, checked and decoded, and what becomes of its output (``_action``)."""

    pic: Picture
    action: str


@dataclass
class _Computed:
    """A job's upscaled picture, waiting to be written."""

    width: int
    height: int
    result: Picture
    tile: int
    action: str


@dataclass(frozen=True)
class _Written:
    """What a job's record says of a written output."""

    width: int
    height: int
    out_width: int
    out_height: int
    tile: int
    pixels: int


class _Work:
    """The three stages of a job for :class:`~upscale_cli.pipeline.Pipeline`: ``decode`` (the
    header checks, then the read), ``compute`` (the network, with a tiles bar: always in the main
    thread, which owns the progress bars) and ``encode`` (the atomic write).  Overlapped, decode
    and encode run on the pipeline's I/O thread."""

    def __init__(self, upscaler: Upscaler, opts: RunOptions, protect: set[Path], progress: Progress,
                 files_task: TaskID) -> None:
        self.upscaler, self.opts, self.protect, self.progress, self.files_task = (
            upscaler, opts, protect, progress, files_task)
        self.poll: Callable[[], None] = lambda: None  # the pipeline's: settles a finished encode

    def decode(self, job: Job) -> _Decoded | None:
        """Check the header, then decode; ``None`` for a job failed in the plan or skipped."""
        from ..io import output_holds, read_image

        if job.status == "failed":
            return None
        *_, action = _check(job, self.upscaler, self.opts)
        if action == "skip":
            job.status = "skipped"
            return None
        pic = read_image(job.input, self.opts.input.max_pixels, first_frame=self.opts.input.first_frame)
        reason = output_holds(pic, job.format)  # type: ignore[arg-type]  # the value range, known now
        if reason:
            raise InputError(f"{job.input}: {reason}")
        return _Decoded(pic, action)

    def compute(self, job: Job, decoded: _Decoded) -> _Computed:
        """Upscale, with a tiles bar when there are several."""
        from ..api import upscale_picture

        progress, pic = self.progress, decoded.pic
        progress.update(self.files_task, description=f"{job.input.name}")
        if decoded.action == "redo":
            _note(progress.console, self.opts, f"{job.output} is incomplete or unreadable; redoing it")
        plan = self.upscaler.plan(pic.height, pic.width)
        tiles = progress.add_task("  tiles", total=plan.count * pic.frame_count) if plan.count > 1 else None

        def on_tiles(done: int, total: int) -> None:
            if tiles is not None:
                progress.update(tiles, completed=done, total=total)
            self.poll()

        try:
            result = upscale_picture(pic, self.upscaler, self.opts.picture, progress=on_tiles)
        finally:
            if tiles is not None:
                progress.remove_task(tiles)
        return _Computed(pic.width, pic.height, result, plan.tile, decoded.action)

    def encode(self, job: Job, computed: _Computed) -> _Written:
        """Write atomically (never onto an input)."""
        from ..io import write_image

        out = computed.result
        write_image(out, job.output, self.opts.output.fmt, self.opts.output.quality,  # type: ignore[arg-type]
                    overwrite=computed.action in ("overwrite", "redo"), protect=self.protect)
        return _Written(computed.width, computed.height, out.width, out.height, computed.tile,
                        out.width * out.height * out.frame_count)
