"""Timing of a command run as a user runs it: a fresh process, imports included."""

from __future__ import annotations

import os
import resource
import statistics
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


def report_runs(cmd: Sequence[str], repeat: int, threads: int | None, target_s: float) -> float:
    """Run ``cmd`` ``repeat`` times with :func:`run_timed`; print each run and the median verdict.

    Each run's line gives wall and CPU seconds, peak RSS and the load average (the cores are
    shared, so a loaded machine inflates the wall time).  Returns the median wall time.
    """
    walls = []
    for i in range(repeat):
        wall, cpu, rss = run_timed(cmd, threads)
        walls.append(wall)
        print(f"run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.2f} GB, "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    median = statistics.median(walls)
    verdict = "OK" if median < target_s else "OVER"
    print(f"median {median:.2f} s wall (target < {target_s:.0f} s): {verdict}; {os.cpu_count()} CPUs")
    return median
