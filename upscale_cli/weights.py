"""Weights files: reading them (through :mod:`upscale_cli.formats`, which never executes code
from a file), our own safetensors export, the manifest, and state dicts checked against a
network.  Fetching files is the job of :mod:`upscale_cli.download`; recognising which network
a state dict is for, of :mod:`upscale_cli.models.detect`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import WeightsError
from .files import atomic_path
from .formats import read as read_any

if TYPE_CHECKING:
    from .models.registry import Arch

FORMAT = "upscale-cli/1"
"""Value of the ``format`` metadata key of the safetensors files written by :func:`save_weights`."""

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    *,
    name: str,
    arch: str,
    kwargs: Mapping[str, Any],
    scales: list[int] | tuple[int, ...],
    scale: int,
    convention: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``state_dict`` as a safetensors file that :func:`~upscale_cli.loader.load_model`
    can load with no other information; return its sha256.

    The file's metadata (all strings, as safetensors requires) holds ``format``
    (:data:`FORMAT`), ``name``, ``arch``, ``kwargs`` (JSON), ``scales`` (JSON list),
    ``scale``, ``convention`` and ``extra`` (JSON).  Tensors are detached, moved to the CPU
    and made contiguous (copies, so tied weights are stored once each).  The write is atomic.
    """
    from safetensors.torch import save_file

    target = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {
        "format": FORMAT,
        "name": name,
        "arch": arch,
        "kwargs": json.dumps(dict(kwargs), sort_keys=True),
        "scales": json.dumps([int(s) for s in scales]),
        "scale": str(int(scale)),
        "convention": convention,
        "extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
    }
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return sha256_file(target)


def read_checkpoint(
    path: str | os.PathLike[str], key: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    """Read a weights file of any supported format (:mod:`upscale_cli.formats`) safely;
    return (state dict, safetensors metadata or ``None``).

    ``key`` forces a wrapper key of torch files (e.g. the manifest's ``"params_ema"``).  Raises
    :class:`~upscale_cli.errors.WeightsError` naming the file for anything unreadable.
    """
    ckpt = read_any(path, key)
    return ckpt.tensors, ckpt.metadata


# --- the manifest -------------------------------------------------------------------------

MANIFEST_ENV = "UPSCALE_MANIFEST"
"""Environment variable naming another manifest file to use (tests, private model zoos)."""


def manifest_path() -> Path:
    """``$UPSCALE_MANIFEST``, else the manifest shipped in the package (a copy of the
    repository's ``weights_manifest.json``)."""
    override = os.environ.get(MANIFEST_ENV)
    return Path(override).expanduser() if override else Path(__file__).with_name("weights_manifest.json")


_MANIFESTS: dict[tuple[str, int], dict[str, Any]] = {}


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    """The parsed manifest (cached per file and modification time)."""
    p = manifest_path() if path is None else path
    try:
        key = (str(p), p.stat().st_mtime_ns)
        if key not in _MANIFESTS:
            _MANIFESTS[key] = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"{p}: cannot read the weights manifest ({err})") from None
    return _MANIFESTS[key]


def manifest_entry(name: str, scale: int, path: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of model ``name`` (registry name) at ``scale``, or ``None``."""
    return load_manifest(path)["models"].get(name, {}).get(str(int(scale)))


def manifest_entries(name: str, path: Path | None = None) -> dict[int, dict[str, Any]]:
    """Every manifest entry of model ``name``, by scale."""
    return {int(s): e for s, e in load_manifest(path)["models"].get(name, {}).items()}


# --- state dicts against architectures ----------------------------------------------------


def convert_for(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` in the family's own key layout (its ``convert_keys``, when it has one)."""
    return arch.convert_keys(dict(sd)) if arch.convert_keys is not None else dict(sd)


def key_diff(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], show: int = 3) -> str | None:
    """A one-line, readable difference between two state dicts' keys and shapes, or ``None``.

    Lists the first ``show`` missing, unexpected and shape-mismatched keys and how many
    there are of each.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f", ... {len(items) - show} more" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    return "; ".join(parts) or None


def load_strict(module: torch.nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    """``module.load_state_dict(sd, strict=True)`` with a readable WeightsError on mismatch."""
    diff = key_diff(module.state_dict(), sd)
    if diff is not None:
        raise WeightsError(f"{where}: weights do not fit the network ({diff})")
    module.load_state_dict(sd, strict=True)
