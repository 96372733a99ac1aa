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

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..weights import atomic_path

FORMAT = "upscale-cli-train/1"
FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        WeightsError: unreadable file, or not a training checkpoint of this program.
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot read training checkpoint ({cause})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a training checkpoint of upscale-cli (format {FORMAT})")
    return state


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files an interrupted :func:`save_checkpoint` may have left behind."""
    for tmp in folder.glob(f".{FILENAME}.*.tmp"):
        tmp.unlink(missing_ok=True)
