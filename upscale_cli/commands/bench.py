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
from rich.markup import escape
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


METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "alexsim": "AlexSim", "lpips": "LPIPS"}
METRIC_DIGITS = {"psnr": 2, "ssim": 4, "alexsim": 4, "lpips": 4}


def _extra(rows: Sequence[Row]) -> list[str]:
    """The extra metrics (alexsim, lpips) measured in any of ``rows``, in column order."""
    from ..bench import EXTRA_METRICS

    return [m for m in EXTRA_METRICS if any(m in r.measured for r in rows)]


def _cell(row: Row, metrics: Sequence[str]) -> str:
    """``row``'s figures for ``metrics`` joined by `` / `` (``-`` where one was not measured)."""
    measured = ("psnr", "ssim", *row.measured)
    return " / ".join(_fmt(row._mean(m), METRIC_DIGITS[m]) if m in measured else "-" for m in metrics)


def table_cells(rows: Sequence[Row], multiline: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and body of the summary table: one line per model and scale, PSNR / SSIM per set,
    then AlexSim / LPIPS where measured (with ``multiline`` and those, the set's name and the
    perceptual figures go on lines of their own, which keeps the rich table narrow)."""
    sets, groups = _grouped(rows)
    extra = _extra(rows)
    parts = [["psnr", "ssim"], extra] if multiline and extra else [["psnr", "ssim", *extra]]
    sep = "\n"
    names = sep.join(" / ".join(METRIC_LABELS[m] for m in part) for part in parts)

    def label(set_name: str) -> str:
        return set_name + (sep if len(parts) > 1 else " ") + names

    header = ["Model", "Scale", *(label(s) for s in sets), "Params", "s / image", "MP/s"]
    body = []
    for model, scale, by_set in groups:
        quality = [sep.join(_cell(by_set[s], part) for part in parts) if s in by_set else "-" for s in sets]
        sec, mps = _speed(list(by_set.values()))
        params = next(iter(by_set.values())).params
        body.append([model, f"x{scale}", *quality, f"{params:,}", _fmt(sec, 3), _fmt(mps, 2)])
    return header, body


def table_title(rows: Sequence[Row]) -> str:
    """What the table's figures are (the perceptual ones are on RGB, LPIPS lower is better)."""
    title = "PSNR (dB) / SSIM on Y, standard protocol"
    extra = _extra(rows)
    if extra:
        title += "; " + " / ".join(METRIC_LABELS[m] for m in extra) + " on RGB"
        title += " (LPIPS: lower is better)" if "lpips" in extra else ""
    return title


def rich_table(header: list[str], body: list[list[str]], title: str = "PSNR (dB) / SSIM on Y, standard protocol"
               ) -> Table:
    """The cells as a rich table, as plain text (set and model names may hold ``[...]``); figures
    never wrap (the headers and the model names do), so two sets fit in 80 columns."""
    from rich.text import Text

    table = Table(title=title, show_edge=False, pad_edge=False)
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i == 0 else "right", no_wrap=i not in (0, len(header) - 2),
                         overflow="fold", min_width=len(max(name.split(), key=len)))
    for cells in body:
        table.add_row(*(Text(cell) for cell in cells))
    return table


def text_table(rows: Sequence[Row]) -> Table:
    """The rich table of ``rows`` (perceptual figures on a second line of each cell)."""
    return rich_table(*table_cells(rows, multiline=True), title=table_title(rows))


def render(rows: Sequence[Row], fmt: str) -> str:
    """The rows as text in ``fmt`` (``table``: the rich table without colour)."""
    if fmt == "json":
        return json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        extra = _extra(rows)
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
    console.print(text_table(rows))
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


LABEL_OFFSETS = ((6, 6), (6, -12), (-6, 6), (-6, -12), (8, -3), (-8, -3), (0, 10), (0, -16), (14, 14), (-14, -20))
"""Offsets (points) tried in turn for a point's label, the first free one taken."""


def _place_labels(ax: Any, points: Sequence[tuple[float, float, str]]) -> None:
    """Label each point with the first offset whose text overlaps no other label nor marker and
    stays inside the axes (the first offset when none is free)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _ in points]
    taken: list[Any] = []
    for x, y, text in points:
        chosen = None
        for dx, dy in LABEL_OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8)
            extent = label.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = box.contains(extent.x0, extent.y0) and box.contains(extent.x1, extent.y1)
            hits = any(extent.overlaps(t) for t in taken) or any(extent.contains(mx, my) for mx, my in markers)
            if inside and not hits:
                chosen = (label, extent)
                break
            label.remove()
        if chosen is None:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=LABEL_OFFSETS[0], fontsize=8)
            chosen = (label, label.get_window_extent(renderer))
        taken.append(chosen[1])


def _quality(rows: Sequence[Row]) -> str:
    """``lpips`` when every row of a panel has a finite LPIPS, else ``psnr``."""
    return "lpips" if rows and all("lpips" in r.measured and math.isfinite(r._mean("lpips")) for r in rows) else "psnr"


def plot(rows: Sequence[Row], path: Path) -> None:
    """Quality against output MP/s: one panel per set and scale, one labelled point per model.

    Quality is PSNR (Y, higher is better) or, where measured for every model of the panel,
    LPIPS (drawn with its axis flipped, so that up is better in every panel); the speed axis is
    logarithmic (in every panel) when the run's speeds spread over more than a factor of 10.
    """
    from ..weights import atomic_path

    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    keys = list(dict.fromkeys((r.set, r.scale) for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    speeds = [r.megapixels_per_second for r in rows if 0 < r.megapixels_per_second < math.inf]
    spread = max(speeds) / min(speeds) if speeds else 1.0  # one axis kind for every panel
    labels = []
    for ax, (set_name, scale) in zip(axes.flat, keys):
        panel = [r for r in rows if (r.set, r.scale) == (set_name, scale)]
        metric = _quality(panel)
        points = [(r.megapixels_per_second, r._mean(metric), r.model) for r in panel]
        points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]) and p[0] > 0]
        for x, y, model in points:
            ax.plot([x], [y], "o", color=colours[models.index(model) % len(colours)], markersize=7)
        if spread > 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            if spread < 100:  # up to two decades: 2 and 5 of each are labelled too
                ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        if metric == "lpips":
            ax.set_ylabel("LPIPS-Alex (lower is better; axis flipped)")
            ax.invert_yaxis()
        else:
            ax.set_ylabel("PSNR (dB, Y)")
        ax.set(xlabel="output megapixels / s (faster ->)", title=f"{set_name} x{scale}")
        ax.grid(True, alpha=0.3)
        ax.margins(0.25, 0.2)
        labels.append((ax, points))
    fig.suptitle("Quality against speed: up and to the right is better", fontsize=11)
    fig.tight_layout()
    for ax, points in labels:  # once the layout is final: placement is measured on the canvas
        _place_labels(ax, points)
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
        None, "--plot", help=f"Draw quality against speed to FILE.png (needs matplotlib: {escape(PLOT_HINT)})."
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
            Console().print(text_table(rows))
        else:
            typer.echo(render(rows, fmt), nl=False)
        if plot_file is not None:
            plot(rows, plot_file)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``upscale`` command group."""
    app.command("bench")(bench)
