"""Weights-file formats: each module reads one format into a flat ``{name: tensor}``.

No reader executes code from a file.  Each format module defines ``FORMAT``, a
:class:`Format` (name, how to recognise a file, how to read it); :func:`read` tries them in
:data:`_MODULES` order and returns a :class:`Checkpoint`.  Readers know file layouts, never
networks: turning a format's names and tensor layouts into a family's state dict is the job of
that family's ``convert_keys`` (``upscale_cli/models/<family>.py``).

Tensors keep the layout the format stores them in (MATLAB arrays keep MATLAB's dimension
order, for instance); each reader's docstring says how it names and shapes them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import WeightsError


@dataclass(frozen=True)
class Checkpoint:
    """What a reader found in a file.

    Attributes:
        tensors: a flat state dict, names as the reader documents them.
        format: the :attr:`Format.name` of the reader that read it.
        metadata: safetensors string metadata (``None`` elsewhere).
        facts: layout facts the format carries beyond tensors (a pickle's class names, a
            Caffe net's layer types, an MXNet graph's order ...), for messages and converters.
    """

    tensors: dict[str, Tensor]
    format: str
    metadata: dict[str, str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    """One file format.

    Attributes:
        name: short name shown to users (``"matlab"``).
        description: what files of it are, for messages and ``upscale convert --help``.
        sniff: ``sniff(path, head)`` -> whether the file is of this format; ``head`` is the
            file's first :data:`HEAD` bytes.
        read: ``read(path, key)`` -> :class:`Checkpoint`; ``key`` is a wrapper key for formats
            that nest state dicts (torch), ignored by the others.  Raises :class:`FormatError`.
    """

    name: str
    description: str
    sniff: Callable[[Path, bytes], bool]
    read: Callable[[Path, str | None], Checkpoint]


class FormatError(Exception):
    """A file of a known format that cannot be read; the message says why (no file name)."""


HEAD = 512
"""How many leading bytes :attr:`Format.sniff` gets."""

_MODULES = ("torchfile", "matlab", "caffe", "mxnet", "legacy_pickle", "tensorflow")


def formats() -> list[Format]:
    """Every supported format, in the order files are tried against them."""
    return [importlib.import_module(f"{__name__}.{m}").FORMAT for m in _MODULES]


def sniff(path: Path) -> Format | None:
    """The format of the file at ``path``, or ``None`` when no reader recognises it."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
    return next((fmt for fmt in formats() if fmt.sniff(path, head)), None)


def read(path: str | os.PathLike[str], key: str | None = None) -> Checkpoint:
    """Read any supported weights file safely.

    Raises :class:`~upscale_cli.errors.WeightsError` naming the file and the cause: missing,
    of no known format, damaged, or holding no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file")
    fmt = sniff(p)
    if fmt is None:
        names = ", ".join(f.name for f in formats())
        raise WeightsError(f"{p}: not a weights file of any supported format ({names})")
    try:
        ckpt = fmt.read(p, key)
    except FormatError as err:
        raise WeightsError(f"{p}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a reader choking on a damaged file is one line
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{p}: not a readable {fmt.name} file ({cause})") from None
    if not ckpt.tensors:
        raise WeightsError(f"{p}: a {fmt.name} file that holds no tensors")
    return ckpt
