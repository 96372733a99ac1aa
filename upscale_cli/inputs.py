"""Turning the command line's INPUT words into a plan of (input file, output file) jobs.

Inputs are files, folders and glob patterns.  Folders give their images (``recursive``: the
whole tree, mirrored under the output folder).  The plan is sorted and de-duplicated so that
``--shard K/N`` slices are stable across the N processes of a job array.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class Source:
    """One input file and the path it mirrors under an output folder."""

    path: Path
    relative: Path  # relative path used under an output folder (parent folders kept)


@dataclass
class Expansion:
    """The result of :func:`expand_inputs`."""

    sources: list[Source]
    skipped: list[tuple[Path, str]]  # (path, why) - non-image files, with a note
    missing: list[str]  # words that matched nothing


def _has_magic(word: str) -> bool:
    return glob.has_magic(word)


def _walk(folder: Path, recursive: bool, is_image) -> tuple[list[Source], list[tuple[Path, str]]]:
    found: list[Source] = []
    skipped: list[tuple[Path, str]] = []
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    for path in paths:
        if not path.is_file():
            continue
        if is_image(path):
            found.append(Source(path, path.relative_to(folder)))
        else:
            skipped.append((path, "not an image file"))
    return found, skipped


def expand_inputs(words: list[str], *, recursive: bool, is_image) -> Expansion:
    """Expand files, folders and globs into a sorted, de-duplicated list of image files.

    ``is_image(path) -> bool`` decides what counts as an image (by extension / content).
    Explicitly named files are always kept (a non-image named explicitly fails later with a
    clear message rather than being silently skipped).
    """
    sources: dict[Path, Source] = {}
    skipped: list[tuple[Path, str]] = []
    missing: list[str] = []
    for word in words:
        if _has_magic(word) and not Path(word).exists():
            matches = sorted(glob.glob(word, recursive=True))
            if not matches:
                missing.append(word)
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    found, skip = _walk(path, recursive, is_image)
                    skipped += skip
                    for src in found:
                        sources.setdefault(src.path.resolve(), Source(src.path, path.name / src.relative))
                elif is_image(path):
                    sources.setdefault(path.resolve(), Source(path, Path(path.name)))
                else:
                    skipped.append((path, "not an image file"))
            continue
        path = Path(word)
        if path.is_dir():
            found, skip = _walk(path, recursive, is_image)
            skipped += skip
            for src in found:
                sources.setdefault(src.path.resolve(), src)
        elif path.exists() or os.path.lexists(path):
            sources.setdefault(path.resolve(), Source(path, Path(path.name)))
        else:
            missing.append(word)
    ordered = sorted(sources.values(), key=lambda s: (str(s.relative), str(s.path)))
    return Expansion(ordered, skipped, missing)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N (raises :class:`UsageError`)."""
    if text is None:
        return None
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard expects K/N with integers, e.g. 2/8, not {text!r}") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return k, n


def take_shard(items: list[Source], shard: tuple[int, int] | None) -> list[Source]:
    """The K-th of N disjoint slices (round robin over the sorted plan, so sizes differ by <= 1)."""
    if shard is None:
        return items
    k, n = shard
    return items[k - 1 :: n]
