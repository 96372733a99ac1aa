"""Small file-system helpers shared by the weights cache, the trainer and the image writer."""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
"""The process umask, read once at import (reading it means setting it)."""

TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
"""The names of the temporary files :func:`fresh_temp` makes beside a target: ``.NAME.`` plus
8 random characters of ``[a-z0-9_]`` plus ``.tmp``."""

_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)


@contextmanager
def fresh_temp(path: Path) -> Iterator[tuple[int, Path]]:
    """Create ``.NAME.XXXXXXXX.tmp`` beside ``path`` (mode 0600) and yield its open descriptor
    and path; on any exception (Ctrl-C and SIGTERM included) the file is removed.

    The name is chosen before the file is created, so a signal that lands between the creation
    and the caller's first line still finds the name to remove (``tempfile.mkstemp`` leaves no
    such handle: a SIGTERM there left the temp behind)."""
    tmp: Path | None = None
    try:
        while True:
            tmp = path.parent / f".{path.name}.{''.join(secrets.choice(_TEMP_CHARS) for _ in range(8))}.tmp"
            try:
                fd = os.open(tmp, _TEMP_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        yield fd, tmp
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception (Ctrl-C and SIGTERM included: they raise KeyboardInterrupt) the temporary
    file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with fresh_temp(path) as (fd, tmp):
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)  # the temp is 0600; give the file the usual mode
        os.replace(tmp, path)


def sweep_stale_temps(folder: Path, older_than: float, names: Collection[str] | None = None) -> list[Path]:
    """Remove the temporary files (:data:`TEMP_NAME`) that an interrupted writer left in
    ``folder`` (a ``kill -9`` runs no cleanup) and that were last modified before
    ``older_than`` (a ``time.time()``: the start of this run, so that a temp file another run
    is writing now is left alone).  With ``names``, only the temps of those output names are
    candidates, so runs sharing a folder (``--shard`` job arrays) never touch each other's.
    Returns the paths removed; a missing or unreadable folder,
    and a file that cannot be removed, are skipped.  Symlinks and folders are never removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME.fullmatch(entry.name):
            continue
        if names is not None and entry.name[1:].rsplit(".", 2)[0] not in names:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
