"""``upscale models`` (the zoo: what exists, what is cached) and ``upscale download``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..errors import UpscaleError, UsageError
from ..reporting import print_error


def _params(arch: Any, spec: Any) -> int:
    """Parameter count, from the network built on the meta device (no memory, no data)."""
    import torch

    with torch.device("meta"):
        module = arch.build(scale=spec.scales[0], **spec.kwargs)
    return sum(p.numel() for p in module.parameters())


def _fingerprint(arch: Any, spec: Any) -> str:
    """What a parameter count depends on: the family's source file, the kwargs, the scale."""
    source = Path(inspect.getsourcefile(arch.build) or "?")
    stat = source.stat() if source.exists() else None
    where = f"{source}:{stat.st_mtime_ns}:{stat.st_size}" if stat else str(source)
    return f"{__version__}|{where}|{arch.name}|{json.dumps(dict(spec.kwargs), sort_keys=True)}|{spec.scales[0]}"


def param_counts(specs: list[Any]) -> dict[str, int]:
    """Parameter count of every spec, remembered in the cache folder (``params.json``) so that
    ``upscale models`` does not build every network (seconds) each time it runs."""
    from ..download import cache_dir
    from ..models import get_arch
    from ..weights import atomic_path

    store = cache_dir() / "params.json"
    try:
        known: dict[str, int] = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    counts, changed = {}, False
    for spec in specs:
        arch = get_arch(spec.arch)
        key = _fingerprint(arch, spec)
        if not isinstance(known.get(key), int):
            known[key], changed = _params(arch, spec), True
        counts[spec.name] = known[key]
    if changed:
        try:
            with atomic_path(store) as tmp:
                tmp.write_text(json.dumps(known, indent=1, sort_keys=True), encoding="utf-8")
        except OSError:
            pass  # a read-only cache only costs speed
    return counts


def model_rows() -> list[dict[str, Any]]:
    """One record per registered model: the data behind ``upscale models [--json]``.

    ``cached`` is true when everything the model needs to run is on disk (always for
    parameter-free models, never for trainable-only ones); ``cached_scales`` lists the scales
    whose weights file is in the cache (presence and size only; files are hashed before use).
    """
    from ..convert import converted_path
    from ..download import is_cached
    from ..models import get_arch, list_specs
    from ..weights import load_manifest, manifest_entries

    load_manifest()  # a manifest that breaks its schema: said before any network is built
    rows = []
    specs = list_specs()
    counts = param_counts(specs)
    for spec in specs:
        arch = get_arch(spec.arch)
        entries = manifest_entries(spec.name)
        params = counts[spec.name]
        cached_scales = sorted(s for s, e in entries.items() if is_cached(e) or converted_path(spec.name, e).is_file())
        if params == 0:
            weights, cached = "none needed", True
        elif entries:
            weights, cached = "published", len(cached_scales) == len(entries)
        else:
            weights, cached = ("trainable only" if spec.trainable_only else "not listed"), False
        licenses = sorted({e["license"] for e in entries.values()})
        set5 = {str(s): e["paper"]["Set5"]["psnr"] for s, e in sorted(entries.items()) if "Set5" in e.get("paper", {})}
        rows.append(
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "arch": spec.arch,
                "scales": list(spec.scales),
                "params": params,
                "license": ", ".join(licenses) if licenses else None,
                "cached": cached,
                "cached_scales": cached_scales,
                "trainable_only": spec.trainable_only,
                "weights": weights,
                "convention": arch.convention,
                "paper_set5_psnr": set5,
                "description": spec.description,
                "paper": arch.paper,
            }
        )
    return sorted(rows, key=_order)


def download_rows() -> list[dict[str, Any]]:
    """One record per file that ``--weights URL`` cached, after the models in ``--json``:
    ``weights`` is ``"downloaded"``; ``verified`` false means no hash checked its bytes (the
    server gave none), only the server's ETag / Last-Modified / size, which the record keeps."""
    from ..download import url_downloads

    return [{"name": d["file"], "weights": "downloaded", "cached": True, **d} for d in url_downloads()]


def _order(row: dict[str, Any]) -> tuple[int, str]:
    """The default model first, then models with published weights, the classical
    resamplers, and the trainable-only architectures; by name within each group."""
    from .upscale import DEFAULT_MODEL

    group = {"published": 1, "none needed": 2, "not listed": 3, "trainable only": 4}[row["weights"]]
    return (0 if row["name"] == DEFAULT_MODEL else group, row["name"])


def _human(n: int) -> str:
    return "0" if n == 0 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _table(rows: list[dict[str, Any]]) -> Table:
    """The zoo, one line per scale so that it stays readable at 80 columns."""
    table = Table(title="upscale-cli models", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for col, justify in (
        ("Name", "left"),
        ("Arch", "left"),
        ("Scale", "left"),
        ("Params", "right"),
        ("Licence", "left"),
        ("Cached", "left"),
        ("Set5", "right"),
    ):
        licence = col == "Licence"  # wraps at spaces; 12 columns hold BSD-3-Clause whole
        table.add_column(col, justify=justify, no_wrap=not licence, min_width=12 if licence else None)  # type: ignore[arg-type]
    for r in rows:
        if r["weights"] == "published":
            cached = "yes" if r["cached"] else " ".join(f"x{s}" for s in r["cached_scales"]) or "no"
        else:
            cached = {"none needed": "-", "trainable only": "train"}.get(r["weights"], "no")
        set5 = r["paper_set5_psnr"]
        psnr = "\n".join(f"{set5[str(s)]:.2f}" if str(s) in set5 else "-" for s in r["scales"])
        aliases = f"\n[dim]({escape(', '.join(r['aliases']))})[/]" if r["aliases"] else ""
        table.add_row(
            escape(r["name"]) + aliases,
            r["arch"],
            "\n".join(f"x{s}" for s in r["scales"]),
            _human(r["params"]),
            r["license"] or "-",
            cached,
            psnr,
        )
    return table


def arch_rows() -> list[dict[str, Any]]:
    """One record per family that takes weights of your own (``--weights FILE``): every one is
    recognised from its keys alone; ``aliases`` and ``variants`` (kwargs presets for what the keys
    cannot tell, such as an activation) are the other names ``--arch`` takes for it."""
    from ..models import list_archs

    return [
        {
            "name": arch.name,
            "weights": "your own",
            "aliases": list(arch.aliases),
            "variants": {name: dict(preset) for name, preset in arch.variants.items()},
            "convention": arch.convention,
            "paper": arch.paper,
        }
        for arch in sorted(list_archs(), key=lambda a: a.name)
        if arch.matches is not None
    ]


def _arch_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Architectures for your own weights (upscale IMG --weights FILE)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    for col in ("Arch", "Also --arch", "Paper"):
        table.add_column(col, no_wrap=col == "Arch", ratio=2 if col == "Paper" else 1)
    for r in rows:
        table.add_row(r["name"], escape(", ".join([*r["aliases"], *r["variants"]]) or "-"), escape(r["paper"]))
    return table


def _downloads_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Downloaded with --weights URL", title_justify="left")
    for col in ("File", "Checked", "Size", "URL"):
        table.add_column(col, justify="right" if col == "Size" else "left", overflow="fold")
    for r in rows:
        checked = "sha256" if r["verified"] else "[yellow]unverified[/] (no sha256 known)"
        table.add_row(escape(r["file"]), checked, _human_bytes(r["size"]), escape(r["url"] or "?"))
    return table


def _human_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB" if n >= 1e3 else f"{n} B"


def _fail(err: UpscaleError) -> typer.Exit:
    print_error(str(err))
    return typer.Exit(err.exit_code)


def models(json_out: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List the model zoo: architecture, scales, parameters, licence, cache state, paper PSNR;
    then the architectures that take weights of your own (``--weights FILE``), and the files
    ``--weights URL`` cached, each marked verified (a sha256) or unverified."""
    try:
        rows, downloads = model_rows(), download_rows()
    except UpscaleError as err:
        raise _fail(err) from None
    archs = arch_rows()
    if json_out:
        typer.echo(json.dumps(rows + archs + downloads, indent=2))
        return
    Console().print(_table(rows))
    Console().print("[dim]Cached: weights on disk (yes / no / the cached scales); '-': none needed; "
                    "'train': no public weights, use --weights or `upscale train`. "
                    "Set5: the paper's PSNR (dB).[/]")
    Console().print(_arch_table(archs))
    Console().print("[dim]Each is found from the file's tensors alone, with its hyperparameters; "
                    "--arch NAME[:key=value,...] chooses where the keys cannot tell (the variants).[/]")
    if downloads:
        Console().print(_downloads_table(downloads))


def download(
    name: str = typer.Argument(..., help="Model name or alias (see `upscale models`)."),
    scale: int | None = typer.Option(None, "--scale", "-s", help="Scale to fetch (default: the model's first)."),
    all_scales: bool = typer.Option(False, "--all", help="Fetch the weights of every published scale."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of the files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fetch, verify and cache a model's published weights (exit 3 when they cannot be had).

    Weights published in another format (MATLAB, Caffe, MXNet, pickled modules ...) are
    converted to safetensors once, here, and the conversion is cached and printed.
    """
    from ..download import resolve_weights
    from ..loader import load_model
    from ..models import get_arch, get_spec
    from ..weights import manifest_entries

    try:
        if scale is not None and all_scales:
            raise UsageError("--scale and --all exclude each other")
        spec = get_spec(name)
        if _params(get_arch(spec.arch), spec) == 0:
            Console(stderr=True).print(f"{spec.name} has no weights: nothing to download", highlight=False)
            return
        entries = manifest_entries(spec.name)
        scales = sorted(entries) if all_scales and entries else [spec.scales[0] if scale is None else scale]
        done: dict[str, dict[str, Any]] = {}
        for s in scales:
            if "format" in entries.get(s, {}):  # another project's format: fetched and converted now
                path = Path(load_model(spec.name, s, progress=not quiet).source)
            else:
                path = resolve_weights(spec.name, s, progress=not quiet)
            done.setdefault(str(path), {"name": spec.name, "scales": [], "path": str(path)})["scales"].append(s)
    except UpscaleError as err:
        raise _fail(err) from None
    if json_out:
        typer.echo(json.dumps(list(done.values()), indent=2))
    else:
        for item in done.values():
            typer.echo(item["path"])


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``download`` to the ``upscale`` command group."""
    app.command("models")(models)
    app.command("download")(download)
