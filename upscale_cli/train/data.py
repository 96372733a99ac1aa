"""Training data: decoded HR images, random crops, augmentation and LR synthesis.

Determinism (what ``--seed`` pins down): sample number ``k`` of the run (``k = step * batch +
j``, ``j`` its place in the global batch) is a pure function of ``(seed, k)``: the image (drawn
with probability proportional to its number of valid crop positions, so that every crop of the
data set is equally likely), the crop position, the flip/rotation (one of the 8 symmetries of
the square), the scale of its batch (multi-scale nets: a pure function of ``(seed, step)``) and
every random choice of the degradation.  Nothing depends on the number of DataLoader workers, on
which worker computed a sample, on how many processes share the batch (DDP), or on where a run
was interrupted: resuming at step ``t`` re-creates exactly the batches ``t, t+1, ...``.

Images are decoded once (in threads) and kept as uint8 arrays, in memory or memory-mapped from
an optional on-disk cache of ``.npy`` files (decoded by the first run, reused by later ones and
shared through the page cache by the DataLoader's worker processes).  Samples travel from the
workers as uint8 (4x less than float); the LR is already quantised to 8 bits, as the standard
protocol's inputs are, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError, UsageError
from .degrade import Degradation, bicubic_lr, degraded_lr

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

_SCALE_STREAM = 0x5CA1E
"""Extra entropy word that keeps the per-step scale stream apart from the per-sample streams."""


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files under the given folders (recursively, sorted) and the given files, in order.

    Raises:
        UsageError: a path does not exist, or nothing at all was found.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder (--data)")
    if not found:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return found


def decode_rgb8(path: Path) -> np.ndarray:
    """Decode an image file to a ``(H, W, 3)`` uint8 RGB array (EXIF orientation applied;
    grey images become three equal channels; 16-bit grey is reduced to 8 bits by rounding).

    Raises:
        InputError: the file cannot be decoded (the message names it).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(img, dtype=np.float64)
                grey = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot decode training image ({err})") from None


def _cache_file(cache_dir: Path, path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    return cache_dir / f"{key}.npy"


def _load_cached(path: Path, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return decode_rgb8(path)
    target = _cache_file(cache_dir, path)
    if not target.is_file():
        arr = decode_rgb8(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npy", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return np.load(target, mmap_mode="r")


class ImageStore:
    """Every training image, decoded once, as uint8 ``(H, W, 3)`` arrays.

    Args:
        paths: folders (searched recursively) and/or image files.
        cache_dir: optional folder of decoded ``.npy`` files (memory-mapped when present).
        threads: decoding threads (Pillow releases the GIL while decoding).
    """

    def __init__(
        self, paths: Sequence[str | Path], cache_dir: str | Path | None = None, threads: int | None = None
    ) -> None:
        self.files = list_images(paths)
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            self.images: list[np.ndarray] = list(pool.map(lambda p: _load_cached(p, cache), self.files))

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """sha256 over the files' names and sizes: tells a resumed run it sees the same data."""
        digest = hashlib.sha256()
        for f, a in zip(self.files, self.images):
            digest.update(f"{f.name}|{a.shape}\n".encode())
        return digest.hexdigest()


class PatchDataset(Dataset[tuple[Tensor | None, Tensor]]):
    """Sample ``k`` -> ``(lr, hr)`` uint8 tensors ``(3, p, p)`` and ``(3, s*p, s*p)`` (batched
    by :meth:`collate`).

    Args:
        store: the decoded images.
        scales: the scales trained; several -> one drawn per batch (multi-scale nets).
        patch_size: LR patch side ``p``.
        batch_size: the global batch (samples per step over all processes).
        seed: the run's seed.
        degradation: real-world degradations, or ``None`` for the clean bicubic LR.
    """

    def __init__(
        self,
        store: ImageStore,
        scales: Sequence[int],
        patch_size: int,
        batch_size: int,
        seed: int,
        degradation: Degradation | None = None,
    ) -> None:
        self.images = store.images
        self.scales = tuple(scales)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.seed = seed
        self.degradation = degradation
        side = patch_size * max(self.scales)
        counts = np.array(
            [max(0, a.shape[0] - side + 1) * max(0, a.shape[1] - side + 1) for a in self.images], dtype=np.float64
        )
        self.skipped = int((counts == 0).sum())
        if not counts.any():
            raise UsageError(
                f"no training image is at least {side}x{side} (patch {patch_size} x scale {max(self.scales)})"
            )
        self._cum = np.cumsum(counts / counts.sum())

    def __len__(self) -> int:  # samples are indexed by their global number; the sampler bounds it
        return 2**62

    def scale_at(self, step: int) -> int:
        """The scale of every sample of batch ``step`` (a pure function of seed and step)."""
        if len(self.scales) == 1:
            return self.scales[0]
        rng = np.random.default_rng((self.seed, step, _SCALE_STREAM))
        return self.scales[int(rng.integers(len(self.scales)))]

    def __getitem__(self, index: int) -> tuple[Tensor | None, Tensor]:
        """Sample ``index``: ``(lr, hr)`` uint8; ``lr`` is ``None`` for the clean bicubic LR,
        which :meth:`collate` computes for the whole batch at once (one batched resize)."""
        scale = self.scale_at(index // self.batch_size)
        rng = np.random.default_rng((self.seed, index))
        img = self.images[min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self.images) - 1)]
        side = self.patch_size * scale
        y = int(rng.integers(img.shape[0] - side + 1))
        x = int(rng.integers(img.shape[1] - side + 1))
        crop = img[y : y + side, x : x + side]
        sym = int(rng.integers(8))
        if sym & 1:
            crop = crop[:, ::-1]
        if sym & 2:
            crop = crop[::-1]
        if sym & 4:
            crop = crop.transpose(1, 0, 2)
        hr = torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous()  # a copy: the store may be read-only
        if self.degradation is None:
            return None, hr
        return degraded_lr(hr.float().div_(255.0), scale, self.degradation, rng), hr

    def collate(self, samples: Sequence[tuple[Tensor | None, Tensor]]) -> tuple[Tensor, Tensor]:
        """Stack a batch; make the clean LRs with one batched resize (the same values as one by one)."""
        hr = torch.stack([s[1] for s in samples])
        lrs = [s[0] for s in samples]
        if all(lr is not None for lr in lrs):
            return torch.stack(lrs), hr  # type: ignore[arg-type]
        return bicubic_lr(hr.float().div_(255.0), hr.shape[-1] // self.patch_size), hr


class StepSampler(Sampler[list[int]]):
    """Batches of sample numbers for steps ``start .. stop-1``, this process's share of each.

    Step ``t`` of a global batch ``B`` split over ``world`` processes gives rank ``r`` the samples
    ``t*B + r*B/world + i`` for ``i < B/world``: the union over ranks is the single-process
    batch, so a DDP run sees the same data as a single-process one.
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise UsageError(f"--batch-size {batch_size} is not divisible by the {world} processes")
        self.start, self.stop = start, stop
        self.batch_size, self.local = batch_size, batch_size // world
        self.rank = rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            base = step * self.batch_size + self.rank * self.local
            yield list(range(base, base + self.local))


def make_loader(
    dataset: PatchDataset,
    start: int,
    stop: int,
    *,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor | None, Tensor]]:
    """A DataLoader yielding the batches of steps ``start .. stop-1`` for this process."""
    sampler = StepSampler(start, stop, dataset.batch_size, rank, world)
    extra = {"prefetch_factor": 4, "persistent_workers": False} if workers > 0 else {}
    # its own generator: creating the iterator must not draw from (and so shift) the global RNG
    generator = torch.Generator().manual_seed(dataset.seed)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate,
        pin_memory=pin_memory,
        generator=generator,
        **extra,
    )
