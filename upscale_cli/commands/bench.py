"""``upscale bench``: PSNR/SSIM tables by the standard protocol, with speed beside quality.

The protocol and the set discovery are in :mod:`upscale_cli.bench`; this module parses the
options, loads each model once per scale, shows progress and writes the table (rich, JSON, CSV,
Markdown) and the optional quality-versus-speed plot.  Heavy modules (torch) are imported when
the command runs, so that ``upscale --help`` stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..reporting import reported

if TYPE_CHECKING:
    from ..bench import Row, Scorer

FORMATS = ("table", "json", "csv", "markdown")
BASELINE = "bicubic"
CSV_FIELDS = ("model", "scale", "set", "images", "psnr", "ssim", "seconds", "params", "mp_per_s")
METRICS = ("psnr", "ssim", "alexsim", "lpips")
PLOT_HINT = "pip install 'upscale-cli[plot]'"


def parse_scales(text: str) -> list[int]:
    """``"2,3,4"`` -> ``[2, 3, 4]`` (positive integers, duplicates dropped, order kept)."""
    scales: list[int] = []
    for word in text.replace(" ", "").split(","):
        if not word.isdigit() or int(word) < 1:
            raise UsageError(f"--scale {text!r}: expected positive integers separated by commas, like 2,3,4")
        if int(word) not in scales:
            scales.append(int(word))
    return scales


def parse_metrics(text: str) -> tuple[str, ...]:
    """The extra metrics named in ``--metric`` (PSNR and SSIM are always measured)."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UsageError(f"--metric {','.join(unknown)}: choose from {', '.join(METRICS)}")
    from ..bench import EXTRA_METRICS

    return tuple(n for n in names if n in EXTRA_METRICS)


def pair_weights(models: Sequence[str], weights: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """Match ``--weights`` to ``--model``: ``NAME=FILE`` names its model, a plain ``FILE`` goes to
    the next model in order, and files left over are models by themselves (family from the keys)."""
    named: dict[str, str] = {}
    plain: list[str] = []
    for w in weights:
        name, sep, file = w.partition("=")
        if sep and name in models:
            named[name] = file
        else:
            plain.append(w)
    entries: list[tuple[str | None, str | None]] = []
    for m in models:
        entries.append((m, named[m] if m in named else plain.pop(0) if plain else None))
    entries.extend((None, w) for w in plain)
    return entries


# --- output -------------------------------------------------------------------------------------


def _fmt(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals; ``-`` where it is undefined (NaN) or infinite, as ``null`` in JSON."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _grouped(rows: Sequence[Row]) -> tuple[list[str], list[tuple[str, int, dict[str, Row]]]]:
    """Set names in order, and per (model, scale) in order: its rows by set."""
    sets: list[str] = []
    groups: dict[tuple[str, int], dict[str, Row]] = {}
    for r in rows:
        if r.set not in sets:
            sets.append(r.set)
        groups.setdefault((r.model, r.scale), {})[r.set] = r
    return sets, [(m, s, by_set) for (m, s), by_set in groups.items()]


def _speed(rows: Sequence[Row]) -> tuple[float, float]:
    """Mean seconds per image and output megapixels per second over ``rows`` together."""
    from ..bench import throughput

    images = sum(r.images for r in rows)
    seconds = sum(r.total_seconds for r in rows)
    return (seconds / images if images else math.nan), throughput(sum(r.output_pixels for r in rows), seconds)


def table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the summary table: one line per model and scale, PSNR / SSIM per set."""
    sets, groups = _grouped(rows)
    header = ["Model", "Scale", *(f"{s} PSNR / SSIM" for s in sets), "Params", "s / image", "MP/s"]
    body = []
    for model, scale, by_set in groups:
        quality = [f"{_fmt(by_set[s].psnr, 2)} / {_fmt(by_set[s].ssim, 4)}" if s in by_set else "-" for s in sets]
        sec, mps = _speed(list(by_set.values()))
        params = next(iter(by_set.values())).params
        body.append([model, f"x{scale}", *quality, f"{params:,}", _fmt(sec, 3), _fmt(mps, 2)])
    return header, body


def rich_table(header: list[str], body: list[list[str]]) -> Table:
    """The cells as a rich table, as plain text (set and model names may hold ``[...]``)."""
    from rich.text import Text

    table = Table(title="PSNR (dB) / SSIM on Y, standard protocol")
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*(Text(cell) for cell in cells))
    return table


def render(rows: Sequence[Row], fmt: str) -> str:
    """The rows as text in ``fmt`` (``table``: the rich table without colour)."""
    if fmt == "json":
        return json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        from ..bench import EXTRA_METRICS

        extra = [m for m in EXTRA_METRICS if any(m in r.measured for r in rows)]
        fields = [*CSV_FIELDS[:6], *extra, *CSV_FIELDS[6:]]
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(r.to_dict())
        return buf.getvalue()
    header, body = table_cells(rows)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n"
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(rich_table(header, body))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a :class:`UsageError` saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from None
    return plt


def plot(rows: Sequence[Row], path: Path) -> None:
    """PSNR against output MP/s (log): one panel per set, one marker per model and scale."""
    from ..weights import atomic_path

    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter

    sets, groups = _grouped(rows)
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        for model in dict.fromkeys(m for m, _, _ in groups):
            pts = [(g[set_name], s) for m, s, g in groups if m == model and set_name in g]
            ax.plot([r.megapixels_per_second for r, _ in pts], [r.psnr for r, _ in pts], "o", label=model)
            for r, s in pts:
                ax.annotate(f"x{s}", (r.megapixels_per_second, r.psnr), textcoords="offset points", xytext=(4, 4))
        ax.set(xscale="log", xlabel="output megapixels / s", ylabel="PSNR (dB, Y)", title=set_name)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# --- the command --------------------------------------------------------------------------------


def run(
    sets: Sequence[str],
    entries: Sequence[tuple[str | None, str | None]],
    scales: Sequence[int],
    *,
    data_dir: Path | None,
    device: str,
    precision: str,
    backend: str,
    tile: str,
    save_images: Path | None,
    max_pixels: int | None,
    console: Console,
    score: Scorer | None = None,
) -> list[Row]:
    """Benchmark ``entries`` (model name, weights) with a progress bar on ``console``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..bench import Contestant, find_sets, run_bench
    from ..engine import Upscaler
    from ..loader import load_model

    bench_sets = find_sets(sets, data_dir)

    def load(scale: int) -> list[Contestant]:
        out: list[Contestant] = []
        for name, weights in entries:
            model = load_model(name, scale, weights=weights, device="cpu")
            if weights is not None and any(c.model.name == model.name for c in out):
                model.name = f"{model.name} ({Path(weights).name})"
            engine = Upscaler(model, device=device, precision=precision, backend=backend, tile=tile, batch_size=1)
            out.append(Contestant(model, engine.upscale))
        return out

    total = len(scales) * len(entries) * sum(len(b.hr) for b in bench_sets)
    columns = (TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("bench", total=total)
        return run_bench(
            bench_sets,
            scales,
            load,
            save_dir=save_images,
            advance=lambda: progress.advance(task),
            max_pixels=max_pixels,
            score=score,
            note=lambda text: progress.console.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True),
        )


def bench(
    sets: list[str] = typer.Option(
        ..., "--set", help="Test set: Set5, Set14, B100, Urban100, Manga109, DIV2K-val, or a folder; repeatable."
    ),
    models: list[str] = typer.Option([], "--model", "-m", help="Model name; repeatable."),
    scale: str = typer.Option("2,3,4", "--scale", "-s", help="Scales, comma separated."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Folder holding the sets by name (default: $UPSCALE_DATA, else ~/.local/share/upscale-cli/datasets).",
    ),
    weights: list[str] = typer.Option(
        [], "--weights", "-w", help="Weights file for the next --model, or MODEL=FILE; repeatable."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (the protocol's), fp16, bf16 or auto."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or openvino (as for upscale)."),
    tile: str = typer.Option(
        "0", "--tile", help="Tile side in input pixels; 0 = whole image (exact), auto = fit memory."
    ),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Leave out the bicubic row."),
    save_images: Path = typer.Option(None, "--save-images", help="Write outputs to DIR/SET/xS/MODEL/NAME.png."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Refuse larger images (default: Pillow's limit; 0 = none)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or markdown."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the result to FILE instead of stdout."),
    plot_file: Path = typer.Option(
        None, "--plot", help=f"Draw PSNR against speed to FILE.png (needs matplotlib: {PLOT_HINT})."
    ),
    metric: str = typer.Option("psnr,ssim", "--metric", help="psnr, ssim, alexsim, lpips; comma separated."),
    alexnet_weights: Path = typer.Option(
        None, "--alexnet-weights", help="torchvision alexnet-owt-7be5be79.pth (default: $UPSCALE_ALEXNET_WEIGHTS)."
    ),
    lpips_weights: Path = typer.Option(
        None, "--lpips-weights", help="LPIPS v0.1 alex.pth (default: $UPSCALE_LPIPS_WEIGHTS)."
    ),
) -> None:
    """Benchmark models on SR test sets: PSNR / SSIM by the standard protocol, and speed.

    HR cropped to a multiple of the scale, LR by MATLAB's bicubic rounded to 8 bits, output
    rounded to 8 bits, PSNR and SSIM on the BT.601 Y channel with `scale` pixels shaved, means
    over images.  bicubic is always a row unless --no-baseline.
    """
    err = Console(stderr=True)
    with reported():
        if max_pixels is not None and max_pixels < 0:
            raise UsageError(f"--max-pixels must be >= 0 (0 = no limit), got {max_pixels}")
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
        if plot_file is not None:
            _pyplot()  # fail before the work, not after
        extra = parse_metrics(metric)
        score = None
        if extra:
            from ..perceptual import load_alex_metrics, scorer

            score = scorer(load_alex_metrics(alexnet_weights, lpips_weights, "lpips" in extra), extra)
        entries = pair_weights(models, weights)
        if not no_baseline and all(name is None or name.lower() != BASELINE for name, _ in entries):
            entries.insert(0, (BASELINE, None))
        if not entries:
            raise UsageError("nothing to benchmark: name a --model (or drop --no-baseline)")
        options = {
            "data_dir": data_dir,
            "device": device,
            "precision": precision,
            "backend": backend,
            "tile": tile,
            "max_pixels": max_pixels,
        }
        rows = run(sets, entries, parse_scales(scale), save_images=save_images, console=err, score=score, **options)
        if output is not None:
            from ..weights import atomic_path

            with atomic_path(output) as tmp:
                tmp.write_text(render(rows, fmt), encoding="utf-8")
        elif fmt == "table":
            Console().print(rich_table(*table_cells(rows)))
        else:
            typer.echo(render(rows, fmt), nl=False)
        if plot_file is not None:
            plot(rows, plot_file)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``upscale`` command group."""
    app.command("bench")(bench)
