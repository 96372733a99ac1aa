"""Placeholder: the mxnet reader is being written (issue 15)."""

from __future__ import annotations

from pathlib import Path

from . import Checkpoint, Format, FormatError


def _read(path: Path, key: str | None) -> Checkpoint:
    raise FormatError("mxnet files are not supported yet")


FORMAT = Format(name="mxnet", description="mxnet (not yet)", sniff=lambda path, head: False, read=_read)
