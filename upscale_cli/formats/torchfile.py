"""safetensors files and PyTorch files (zip and the old non-zip format), read safely.

safetensors go through :mod:`safetensors`; torch files through
``torch.load(..., weights_only=True, map_location="cpu")``, which builds only tensors and
plain containers.  A torch file that pickles whole modules (``torch.save(model)``), or that
uses a pickle protocol above 2 (torch's reader knows protocol 2's opcodes only), is refused by
that loader and handed to :mod:`.legacy_pickle`, whose restricted unpickler extracts the
tensors without importing or calling anything the file names.

Checkpoints of other projects come wrapped in many ways (BasicSR's ``{"params_ema": ...}``,
``{"state_dict": ...}``, DataParallel's ``module.`` prefix); :func:`unwrap_state_dict` turns
them into a plain state dict.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import Checkpoint, Format, FormatError

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "network", "generator")
"""Keys under which checkpoints nest their state dict, in order of preference (EMA first)."""

_PREFIXES = ("module.",)
_ZIP = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_RESTRICTED_READS = re.compile(r"GLOBAL [\w.]+|Unsupported operand \d+")
"""What ``torch.load(weights_only=True)`` refuses that :mod:`.legacy_pickle` reads safely: a
global it does not allow (a pickled module), an opcode of pickle protocols 3-5 (``FRAME``,
``STACK_GLOBAL``, ``MEMOIZE`` ...) that its own unpickler, written for protocol 2, lacks."""


def is_safetensors(path: Path, head: bytes | None = None) -> bool:
    """Sniff the safetensors layout: an 8-byte little-endian header length, then a JSON object."""
    try:
        if head is None:
            with open(path, "rb") as f:
                head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + n <= size


def unwrap_state_dict(obj: Any, key: str | None = None) -> tuple[dict[str, Tensor], str | None]:
    """Find the state dict inside a loaded checkpoint; return it and the wrapper key used.

    Wrappers are followed while the object holds no tensors at its top level and has one of
    :data:`WRAPPER_KEYS` (or ``key``, when given, which must exist) holding a mapping.
    ``module.`` prefixes are stripped and non-tensor entries dropped.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must be a mapping, not {type(obj).__name__}")
    used: str | None = None
    if key is not None:
        if not isinstance(obj.get(key), Mapping):
            raise KeyError(f"no state dict under key {key!r} (keys: {', '.join(map(str, list(obj)[:8]))})")
        obj, used = obj[key], key
    while not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, used = obj[inner], inner
    sd: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            name = str(k)
            for prefix in _PREFIXES:
                name = name.removeprefix(prefix)
            sd[name] = v
    return sd, used


def _unwrapped(obj: Any, key: str | None) -> dict[str, Tensor]:
    try:
        return unwrap_state_dict(obj, key)[0]
    except (TypeError, KeyError) as err:
        raise FormatError(str(err.args[0])) from None


def _sniff(path: Path, head: bytes) -> bool:
    return is_safetensors(path, head[:9]) or head.startswith(_ZIP) or head[:1] == bytes([_PICKLE_PROTO])


def _read(path: Path, key: str | None) -> Checkpoint:
    if is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or None
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return Checkpoint(_unwrapped(tensors, key), "safetensors", metadata)
    try:
        with warnings.catch_warnings():  # its note on pickle protocols > 2: those go to the restricted reader
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if _RESTRICTED_READS.search(str(err)) is None:  # damaged, not a refused object
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
            raise FormatError(f"not a readable checkpoint ({detail.group(1).strip() if detail else err})") from None
        from .legacy_pickle import FORMAT as LEGACY  # pickled modules, newer protocols: the restricted reader

        return LEGACY.read(path, key)
    return Checkpoint(_unwrapped(obj, key), "torch")


FORMAT = Format(
    name="torch",
    description="safetensors, or a PyTorch file (torch.save, zip or the old format) of tensors",
    sniff=_sniff,
    read=_read,
)
