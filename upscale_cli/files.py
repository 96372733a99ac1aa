"""Small file-system helpers shared by the weights cache, the trainer and the image writer."""

from __future__ import annotations

import os
import re
import stat
import tempfile
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
"""The names of the temporary files :func:`atomic_path` and the image writer make beside their
target: ``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``, whose random part is 8 characters
of ``[a-z0-9_]``."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception (Ctrl-C and SIGTERM included: they raise KeyboardInterrupt) the temporary
    file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
