"""Weights of other formats turned into our own safetensors files, once.

Two users: the conversion cache (a manifest entry with a ``format`` - the classic networks'
MATLAB, Caffe, MXNet or pickled files - is downloaded, verified, converted on first use and
the converted file kept under ``converted/`` in the weights cache with its own recorded
sha256), and ``upscale convert FILE`` for any user's old checkpoint.  Both write files that
:func:`~upscale_cli.weights.save_weights` writes for ``upscale train``, so they load with no
other information.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .download import cache_dir, warn
from .files import atomic_path
from .models import LoadedModel
from .weights import save_weights, sha256_file


def converted_path(model: str, entry: Mapping[str, Any]) -> Path:
    """Where the conversion cache keeps model ``model``'s conversion of manifest ``entry``."""
    return cache_dir() / "converted" / f"{model}-{Path(entry['file']).stem}.safetensors"


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def cached_conversion(path: Path, entry: Mapping[str, Any]) -> str | None:
    """The sha256 of ``path`` if it is a sound conversion of ``entry`` (its record names the
    entry's upstream sha256 and its own sha256 matches the record), else ``None``.  A damaged
    or stale conversion is removed."""
    record = _record_path(path)
    if not path.is_file():
        return None
    try:
        facts = json.loads(record.read_text(encoding="utf-8"))
        sound = facts["source_sha256"] == entry.get("sha256") and facts["sha256"] == sha256_file(path)
    except (OSError, ValueError, KeyError, TypeError):
        sound = False
    if sound:
        return str(facts["sha256"])
    warn(f"converted weights {path} fail their check; converting the upstream file again")
    path.unlink(missing_ok=True)
    record.unlink(missing_ok=True)
    return None


def export(loaded: LoadedModel, out: Path, scales: Sequence[int], extra: Mapping[str, Any]) -> str:
    """Write ``loaded``'s weights as our safetensors at ``out`` (atomically); return its sha256."""
    return save_weights(
        out,
        loaded.module.state_dict(),
        name=loaded.name,
        arch=loaded.arch.name,
        kwargs=loaded.kwargs,
        scales=list(scales),
        scale=loaded.scale,
        convention=loaded.arch.convention,
        extra=extra,
    )


def record_conversion(path: Path, digest: str, entry: Mapping[str, Any], source_format: str) -> None:
    """Keep the sha256 of a fresh conversion beside it, with the upstream file it came from."""
    facts = {
        "sha256": digest, "source_sha256": entry.get("sha256"), "source_file": entry["file"], "format": source_format
    }
    with atomic_path(_record_path(path)) as tmp:
        tmp.write_text(json.dumps(facts, indent=1, sort_keys=True), encoding="utf-8")
