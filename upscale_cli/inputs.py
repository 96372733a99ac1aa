"""Turning the command line's INPUT words into a plan of (input file, output file) jobs.

Inputs are files, folders and glob patterns.  Folders give their images (``recursive``: the
whole tree, mirrored under the output folder).  The plan is sorted and de-duplicated so that
``--shard K/N`` slices are stable across the N processes of a job array.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

IsImage = Callable[[Path], bool]


@dataclass(frozen=True)
class Source:
    """One input file and the path it mirrors under an output folder."""

    path: Path
    relative: Path  # relative path used under an output folder (parent folders kept)


@dataclass
class Expansion:
    """The result of :func:`expand_inputs`."""

    sources: list[Source]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why): a note each
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line message): an error each


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the file is (the reason it is not read)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _classify(path: Path) -> str | None:
    """Why ``path`` cannot be an input file (None: a regular file), from ``stat`` alone: a
    FIFO or a device is never opened, since opening one can block forever."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"broken symbolic link (to {os.readlink(path)})" if path.is_symlink() else "no such file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    kind = _kind(mode)
    return None if kind is None else f"not a regular file ({kind})"


def _folder_files(folder: Path, recursive: bool, failed: list[tuple[Path, str]]) -> Iterator[Path]:
    """The entries of ``folder`` that are not folders (the whole tree with ``recursive``); a
    folder that cannot be listed goes to ``failed``, never silently."""

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        failed.append((where, f"{where}: cannot read the folder ({exc.strerror or exc})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for name in files:
            yield Path(root) / name
        if not recursive:
            break


def _walk(folder: Path, recursive: bool, is_image: IsImage, out: Expansion, prefix: Path) -> int:
    """Add the images under ``folder`` to ``out`` (their relative paths under ``prefix``).
    Returns how many were found."""
    return sum(_add_file(path, prefix / path.relative_to(folder), is_image, out, named=False)
               for path in sorted(_folder_files(folder, recursive, out.failed)))


def _add_file(path: Path, relative: Path, is_image: IsImage, out: Expansion, named: bool) -> int:
    """Add one file (returns 1 if taken).  Named on the command line it is always taken (a
    non-image fails later with its own message) and what is not a regular file fails here;
    matched by a glob or found in a folder, it is taken only if it is an image, and other
    entries get a note, but a broken link is an error."""
    why = _classify(path)
    if why is not None and (named or why.startswith("broken")):
        out.failed.append((path, f"{path}: {why}"))
    elif why is not None:
        out.skipped.append((path, why))
    elif named or is_image(path):
        out.sources.append(Source(path, relative))
        return 1
    else:
        out.skipped.append((path, "not an image file"))
    return 0


def _has_subfolder(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(entry.is_dir() for entry in entries)
    except OSError:
        return False


def _expand_word(word: str, recursive: bool, is_image: IsImage, out: Expansion) -> None:
    """Add what one INPUT word names; a word that yields no image gets an error line."""
    path = Path(word)
    if glob.has_magic(word) and not os.path.lexists(path):
        matches = sorted(glob.glob(word, recursive=True))
        found = 0
        for match in map(Path, matches):
            if match.is_dir():
                found += _walk(match, recursive, is_image, out, Path(match.name))
            else:
                found += _add_file(match, Path(match.name), is_image, out, named=False)
        if not found:
            out.failed.append((path, f"{word}: {'matches no image' if matches else 'matches nothing'}"))
    elif path.is_dir():
        failures = len(out.failed)
        if not _walk(path, recursive, is_image, out, Path()) and len(out.failed) == failures:
            hint = " (--recursive walks its sub-folders)" if not recursive and _has_subfolder(path) else ""
            out.failed.append((path, f"{word}: no images in the folder{hint}"))
    elif os.path.lexists(path):
        _add_file(path, Path(path.name), is_image, out, named=True)
    else:
        out.failed.append((path, f"{word}: no such file or folder"))


def _dedup(out: Expansion) -> list[Source]:
    """One source per file: among the names of one file (the same path twice, symbolic links),
    the real file's name is kept (else the first name); the other names get a note."""
    by_file: dict[Path, list[Source]] = {}
    for src in out.sources:
        by_file.setdefault(src.path.resolve(), []).append(src)
    kept: list[Source] = []
    for names in by_file.values():
        keep = next((s for s in names if not s.path.is_symlink()), names[0])
        kept.append(keep)
        for other in names:
            if other.path != keep.path:
                out.skipped.append((other.path, f"the same file as {keep.path} (upscaled once, under that name)"))
    return sorted(kept, key=lambda s: (str(s.relative), str(s.path)))


def expand_inputs(words: list[str], *, recursive: bool, is_image: IsImage) -> Expansion:
    """Expand files, folders and globs into a sorted, de-duplicated list of image files.

    ``is_image(path) -> bool`` decides what counts as an image (by extension / content).
    Explicitly named files are always kept (a non-image named explicitly fails later with a
    clear message rather than being silently skipped).  Errors, one line each: a word that
    names nothing or yields no image, a broken symbolic link, a FIFO, socket or device named
    explicitly, a folder that cannot be listed.  Notes: non-images in folders, other names of
    a file already taken (see :func:`_dedup`).
    """
    out = Expansion([])
    for word in words:
        _expand_word(word, recursive, is_image, out)
    out.sources = _dedup(out)
    return out


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
