"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a torch file of tensors and plain values only (so it loads with
``weights_only=True``): the step, the config, the network, the EMA, the optimisers and
schedulers (generator and discriminator), the gradient scaler, the best validation score, and
the random-number states of Python, NumPy and torch (CPU and CUDA).  The data sampler has no
state of its own: a batch is a pure function of ``(seed, step)`` (:mod:`.data`), so the step
*is* its state.  Writes go to a temporary file in the same folder and are renamed over the
old checkpoint (:func:`upscale_cli.weights.atomic_path`), so a ``kill -9`` at any moment
leaves the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, WeightsError
from ..weights import atomic_path

FORMAT = "upscale-cli-train/1"
FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format tag) atomically to ``path``."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


REQUIRED = ("step", "seed", "config", "model", "ema", "opt", "sched", "scaler", "best", "rng", "data")
"""Entries every checkpoint of :func:`save_checkpoint` holds (GAN runs add the discriminator's)."""


def _not_ours(path: Path, why: str) -> WeightsError:
    return WeightsError(f"{path}: not a checkpoint of upscale train ({why})")


def _check_archive(path: Path) -> None:
    """Check the zip container torch.save writes, before torch reads it: an empty or foreign file,
    a truncated one (its central directory, at the end, is gone) and a damaged one (a CRC-32 that
    does not match) each get their own cause, in our words (torch's suggest unsafe loading)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
        if not head:
            raise WeightsError(f"{path}: empty checkpoint (0 bytes)")
        if head != b"PK\x03\x04":
            raise _not_ours(path, "not a PyTorch zip file")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        raise WeightsError(f"{path}: truncated checkpoint (the end of its zip archive is missing)") from None
    except OSError as err:
        raise WeightsError(f"{path}: cannot read the checkpoint ({err.strerror or type(err).__name__})") from None
    if bad is not None:
        raise WeightsError(f"{path}: damaged checkpoint (checksum mismatch in {bad.split('/', 1)[-1]})")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Only tensors and plain values are built (``weights_only=True``); a file that holds anything
    else is refused as not ours, and no message ever suggests loading it unsafely.

    Raises:
        WeightsError: unreadable, empty, truncated or damaged file, or not a training
            checkpoint of this program.
    """
    _check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickles: the verdict below is ours
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise _not_ours(path, "it holds Python objects besides tensors and plain values") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as err:
        raise WeightsError(f"{path}: damaged checkpoint (PyTorch cannot read it: {type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _not_ours(path, f"no format tag {FORMAT}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise WeightsError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    return state


def require_writable_folder(folder: Path) -> None:
    """Create the run folder and write (then remove) a probe file in it, so that an ``--out``
    that cannot hold the checkpoint fails before the first step rather than at its first save.

    Raises:
        UsageError: the folder cannot be created (a file is in the way, no permission) or written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UsageError(f"--out {folder}: a file, not a folder; choose another --out") from None
    except OSError as err:
        raise UsageError(f"--out {folder}: cannot write there ({err.strerror or err}); choose another --out") from None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files an interrupted :func:`save_checkpoint` may have left behind."""
    for tmp in folder.glob(f".{FILENAME}.*.tmp"):
        tmp.unlink(missing_ok=True)
