"""Timing of a command run as a user runs it: a fresh process, imports included."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))


def run_timed(cmd: Sequence[str], threads: int | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS of the largest child so far in GB) of one run.

    ``threads`` sets ``OMP_NUM_THREADS`` (PyTorch's intra-op threads) for the command.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(list(cmd), check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 2**20  # Linux: kB
