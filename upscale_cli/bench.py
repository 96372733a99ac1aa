"""Benchmark models on the standard SR test sets by the standard protocol.

The protocol (as in Lim et al., EDSR, CVPRW 2017; Ahn et al., CARN, ECCV 2018; and the bicubic
rows every SR paper prints):

1. HR images are cropped (bottom/right) to a multiple of the scale;
2. LR = MATLAB-compatible bicubic downscale by ``1/scale`` (:func:`upscale_cli.resize.imresize`,
   antialiased Keys cubic), rounded to 8 bits; an EDSR-style folder (``HR/`` and
   ``LR_bicubic/X{s}/``) supplies its own LR images instead;
3. the model upscales the LR image (grey images go through it as three equal channels and come
   back as the mean of the three);
4. the output is scored by :func:`upscale_cli.metrics.evaluate` (8-bit rounding, Y channel or the
   grey channel, ``scale`` px shaved, PSNR and SSIM);
5. each row reports the mean over the set's images.

An image with nothing left once shaved is refused (one line naming it and its size); one whose
shaved size is under SSIM's 11x11 window keeps its PSNR, and has no SSIM (nor has its set's mean),
with a note naming it.  PSNR is capped at 100 dB (:data:`upscale_cli.metrics.PSNR_MAX`), and
undefined figures are ``None`` in :meth:`Row.to_dict`, so every output format holds only numbers
and nulls.

Sets are found by name under a data directory (``--data-dir``, ``$UPSCALE_DATA``, else
``$XDG_DATA_HOME/upscale-cli/datasets``), or given as a folder path.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import Tensor

from .errors import InputError, UsageError
from .io import Picture, read_image, write_image
from .metrics import SSIM_WINDOW, evaluate, has_ssim, quantize, scored_size
from .models.loaded import LoadedModel
from .resize import imresize

KNOWN_SETS: dict[str, tuple[str, ...]] = {
    "Set5": ("Set5",),
    "Set14": ("Set14",),
    "B100": ("B100", "BSD100", "BSDS100"),
    "Urban100": ("Urban100",),
    "Manga109": ("Manga109",),
    "DIV2K-val": ("DIV2K-val", "DIV2K_val", "DIV2K-valid", "DIV2K_valid", "DIV2K_valid_HR"),
}
"""Canonical set name -> folder names it may have under the data directory (the first is ours)."""

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def default_data_dir() -> Path:
    """``$UPSCALE_DATA``, else ``$XDG_DATA_HOME/upscale-cli/datasets`` (``~/.local/share`` default)."""
    if env := os.environ.get("UPSCALE_DATA"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "upscale-cli" / "datasets"


@dataclass(frozen=True)
class BenchSet:
    """A test set: its name, its HR images and, for EDSR-style layouts, its LR folder."""

    name: str
    root: Path
    hr: tuple[Path, ...]
    lr_root: Path | None = None

    def lr_path(self, hr: Path, scale: int) -> Path | None:
        """The set's own LR image for ``hr`` at ``scale`` (``stem`` or ``stem + 'x{s}'``), if any."""
        if self.lr_root is None:
            return None
        folder = self.lr_root / f"X{scale}"
        if not folder.is_dir():
            return None
        for stem in (f"{hr.stem}x{scale}", hr.stem):
            for p in (folder / f"{stem}{hr.suffix}", *(folder / f"{stem}{e}" for e in IMAGE_SUFFIXES)):
                if p.is_file():
                    return p
        raise UsageError(f"{folder}: no LR image for {hr.name} (expected {hr.stem}x{scale}{hr.suffix})")


def _images(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))


def _canonical(name: str) -> str | None:
    key = name.strip().lower()
    for canon, folders in KNOWN_SETS.items():
        if key in (f.lower() for f in folders):
            return canon
    return None


def _open_folder(name: str, folder: Path) -> BenchSet:
    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    lr_root = folder / "LR_bicubic" if hr_dir != folder and (folder / "LR_bicubic").is_dir() else None
    images = _images(hr_dir)
    if not images:
        raise UsageError(f"{hr_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this set folder")
    return BenchSet(name=name, root=folder, hr=images, lr_root=lr_root)


def find_set(spec: str, data_dir: Path | None = None) -> BenchSet:
    """The test set named ``spec`` (a known name, found under ``data_dir``) or at path ``spec``.

    Raises:
        UsageError: a known set that is not there (the message says where to put it), or a
            name that is neither a known set nor a folder.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return _open_folder(path.resolve().name, path)
    canon = _canonical(spec)
    if canon is None:
        raise UsageError(f"--set {spec}: not a folder, and not a known set ({', '.join(KNOWN_SETS)})")
    root = default_data_dir() if data_dir is None else data_dir
    if root.is_dir():
        present = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        for folder in KNOWN_SETS[canon]:
            if folder.lower() in present:
                return _open_folder(canon, present[folder.lower()])
    raise UsageError(
        f"test set {canon} not found in {root}: put its HR images in {root / canon} "
        f"(or an EDSR-style {canon}/HR + {canon}/LR_bicubic/X4), or pass --data-dir DIR or a folder path"
    )


def find_sets(specs: Sequence[str], data_dir: Path | None = None) -> list[BenchSet]:
    """:func:`find_set` for each spec; the same folder twice counts once, and two folders with the
    same name are told apart by their paths."""
    found: dict[Path, BenchSet] = {}
    for spec in specs:
        bench_set = find_set(spec, data_dir)
        root = bench_set.root.resolve()
        if root in found:
            continue
        if any(b.name == bench_set.name for b in found.values()):
            bench_set = replace(bench_set, name=str(bench_set.root))
        found[root] = bench_set
    return list(found.values())


def read_8bit(path: Path, max_pixels: int | None = None) -> Tensor:
    """An image's colour planes as exact 8-bit values / 255, float64 ``(C, H, W)``, C = 1 or 3
    (alpha dropped; deeper images rounded to 8 bits, as the protocol's images are); images over
    ``max_pixels`` are refused (:func:`upscale_cli.io.read_image`: None = Pillow's limit, 0 = none)."""
    return quantize(read_image(path, max_pixels).color) / 255.0


def save_output(path: Path, image: Tensor) -> None:
    """Write an output ``(C, H, W)`` as the 8-bit image that was scored (PNG, atomically)."""
    write_image(Picture(color=(quantize(image) / 255.0).float()), path, format="png", overwrite=True)


@dataclass(frozen=True)
class Pair:
    """One test image: ground truth and model input, 0..1 float, ``(C, H, W)``, C = 1 or 3."""

    name: str
    hr: Tensor
    lr: Tensor


def _require_scorable(hr_path: Path, hr: Tensor, h: int, w: int, scale: int) -> None:
    """Refuse an HR image of which nothing is left to score once cropped to ``h x w`` and shaved."""
    if min(scored_size(h, w, scale)) < 1:
        raise InputError(
            f"{hr_path}: {hr.shape[-1]}x{hr.shape[-2]} is too small to score at x{scale} "
            f"(nothing is left of its {w}x{h} crop once {scale} px are shaved from each border)"
        )


def make_pair(bench_set: BenchSet, hr_path: Path, scale: int, max_pixels: int | None = None) -> Pair:
    """HR cropped to a multiple of ``scale`` and its LR (the set's own, or the bicubic downscale).

    Raises:
        InputError: an unreadable image, an LR that does not fit, nothing left to score.
    """
    hr = read_8bit(hr_path, max_pixels)
    lr_path = bench_set.lr_path(hr_path, scale)
    if lr_path is not None:
        lr = read_8bit(lr_path, max_pixels)
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        if h > hr.shape[-2] or w > hr.shape[-1] or lr.shape[0] != hr.shape[0]:
            raise InputError(f"{lr_path}: {tuple(lr.shape)} does not fit x{scale} of {hr_path.name} {tuple(hr.shape)}")
        _require_scorable(hr_path, hr, h, w, scale)
        return Pair(hr_path.name, hr[:, :h, :w].float(), lr.float())
    h, w = hr.shape[-2] - hr.shape[-2] % scale, hr.shape[-1] - hr.shape[-1] % scale
    _require_scorable(hr_path, hr, h, w, scale)
    hr = hr[:, :h, :w]
    lr = quantize(imresize(hr, size=(h // scale, w // scale))) / 255.0
    return Pair(hr_path.name, hr.float(), lr.float())


def missing_ssim(pair: Pair, scale: int) -> str | None:
    """Why ``pair`` has no SSIM at ``scale`` (its scored size is under the window), or None."""
    h, w = pair.hr.shape[-2:]
    if has_ssim(h, w, scale):
        return None
    sh, sw = scored_size(h, w, scale)
    return f"{sw}x{sh} px are scored at x{scale}, under SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window"


Runner = Callable[[Tensor], Tensor]
"""Upscales RGB 0..1 ``(3, h, w)`` to ``(3, s*h, s*w)`` (an engine's ``upscale``)."""


def super_resolve(run: Runner, lr: Tensor) -> Tensor:
    """Run ``lr`` (C = 1 or 3) through an RGB runner; grey goes in as three equal channels and
    comes back as their mean."""
    if lr.shape[0] == 3:
        return run(lr)
    return run(lr.expand(3, -1, -1)).mean(dim=0, keepdim=True)


def throughput(pixels: int, seconds: float) -> float:
    """Output megapixels per second."""
    return pixels / seconds / 1e6 if seconds > 0 else math.inf


def _finite(value: float) -> float | None:
    """``value``, or None where it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None


@dataclass
class Row:
    """Results of one model at one scale on one set (means over its images)."""

    model: str
    scale: int
    set: str
    params: int
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    output_pixels: int = 0

    @property
    def images(self) -> int:
        return len(self.per_image)

    def _mean(self, key: str) -> float:
        return float(np.mean([v[key] for v in self.per_image.values()])) if self.per_image else math.nan

    @property
    def psnr(self) -> float:
        return self._mean("psnr")

    @property
    def ssim(self) -> float:
        return self._mean("ssim")

    @property
    def seconds(self) -> float:
        """Mean seconds per image (the model's forward passes, transfers included)."""
        return self._mean("seconds")

    @property
    def total_seconds(self) -> float:
        return float(sum(v["seconds"] for v in self.per_image.values()))

    @property
    def megapixels_per_second(self) -> float:
        return throughput(self.output_pixels, self.total_seconds)

    @property
    def measured(self) -> tuple[str, ...]:
        """The extra metrics (:data:`EXTRA_METRICS`) every image of the row was scored by."""
        return tuple(m for m in EXTRA_METRICS if self.per_image and all(m in v for v in self.per_image.values()))

    def to_dict(self) -> dict[str, object]:
        """The row as plain values; undefined figures (NaN, infinite) are None; extra metrics when measured."""
        extra = {m: _finite(self._mean(m)) for m in self.measured}
        return {
            "model": self.model,
            "scale": self.scale,
            "set": self.set,
            "images": self.images,
            "psnr": _finite(self.psnr),
            "ssim": _finite(self.ssim),
            **extra,
            "seconds": _finite(self.seconds),
            "params": self.params,
            "mp_per_s": _finite(self.megapixels_per_second),
            "per_image": {name: {k: _finite(v) for k, v in vals.items()} for name, vals in self.per_image.items()},
        }


@dataclass(frozen=True)
class Contestant:
    """A model to benchmark at one scale and the function that runs it."""

    model: LoadedModel
    run: Runner


Loader = Callable[[int], Sequence[Contestant]]
"""Given a scale, the models to benchmark at it (each loaded once for that scale)."""
Scorer = Callable[[Tensor, Tensor], dict[str, float]]
"""Extra metrics of one output against its ground truth (both 0..1), e.g. ``{"alexsim": ..., "lpips": ...}``."""
EXTRA_METRICS = ("alexsim", "lpips")
"""The metrics a :data:`Scorer` may add, in column order."""


def _slug(name: str) -> str:
    """``name`` as one safe folder name (set names can be paths, model names hold spaces)."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("_.") or "_"


def iter_pairs(
    sets: Sequence[BenchSet], scale: int, max_pixels: int | None = None, note: Callable[[str], None] | None = None
) -> Iterator[tuple[BenchSet, Pair]]:
    """Every image's pair at ``scale``; ``note`` hears of each one that has no SSIM."""
    for bench_set in sets:
        for hr_path in bench_set.hr:
            pair = make_pair(bench_set, hr_path, scale, max_pixels)
            why = missing_ssim(pair, scale)
            if note is not None and why is not None:
                note(f"{hr_path}: {why}: no SSIM for it nor for the mean of {bench_set.name}; PSNR is reported")
            yield bench_set, pair


def run_bench(
    sets: Sequence[BenchSet],
    scales: Sequence[int],
    load: Loader,
    *,
    save_dir: Path | None = None,
    advance: Callable[[], None] | None = None,
    max_pixels: int | None = None,
    note: Callable[[str], None] | None = None,
    score: Scorer | None = None,
) -> list[Row]:
    """Benchmark every contestant of ``load(scale)`` on every image of ``sets`` at each scale.

    Each image is read (refused over ``max_pixels``: None = Pillow's limit, 0 = none) and
    downscaled once per scale; ``advance`` is called after each image and model, ``note`` with
    each image that has no SSIM; ``score`` adds its metrics to each image's.  Rows come
    ordered by scale, then model, then set.
    """
    rows: list[Row] = []
    for scale in scales:
        contestants = load(scale)
        table = {
            (i, s.name): Row(c.model.name, scale, s.name, c.model.params)
            for i, c in enumerate(contestants)
            for s in sets
        }
        for bench_set, pair in iter_pairs(sets, scale, max_pixels, note):
            for i, c in enumerate(contestants):
                start = time.perf_counter()
                sr = super_resolve(c.run, pair.lr)
                seconds = time.perf_counter() - start
                p, s = evaluate(sr, pair.hr, scale)
                row = table[(i, bench_set.name)]
                row.per_image[pair.name] = {"psnr": float(p), "ssim": float(s), "seconds": seconds}
                if score is not None:
                    row.per_image[pair.name].update(score(sr, pair.hr))
                row.output_pixels += sr.shape[-2] * sr.shape[-1]
                if save_dir is not None:
                    folder = save_dir / _slug(bench_set.name) / f"x{scale}" / _slug(c.model.name)
                    save_output(folder / f"{Path(pair.name).stem}.png", sr)
                if advance is not None:
                    advance()
        rows.extend(table.values())
    return rows
