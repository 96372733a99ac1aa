"""Wall-clock time of ``upscale bench --set Set5 --set Set14 --model bicubic --scale 2,3,4``.

The target (issue 4) is under 15 s on the development machine (2 CPU cores).  The command runs
as a user runs it, in a fresh process (imports included), ``--repeat`` times; the script prints
the wall and CPU seconds of each run, their median, and the machine's load average (the cores
are shared, so a loaded machine inflates the wall time).

    python benchmarks/bench_speed.py [--repeat 3] [--threads N]

``--threads`` sets ``OMP_NUM_THREADS`` for the command (PyTorch's intra-op threads).  On a
machine whose cores are busy with other work, OpenMP's spinning threads multiply the CPU time
(measured here: 15-22 s CPU with 2 threads at load average 6.5, against 5 s with one thread or
with ``OMP_WAIT_POLICY=PASSIVE``, which the command inherits from the environment).
Sets are read from ``../shared/datasets/bench`` (or ``$UPSCALE_SHARED/datasets/bench``).
"""

from __future__ import annotations

import argparse
import sys

from _timing import SHARED, report_runs

TARGET_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the command")
    args = parser.parse_args()
    data_dir = SHARED / "datasets" / "bench"
    if not (data_dir / "Set5").is_dir():
        sys.exit(f"{data_dir / 'Set5'} is absent (../shared is not beside the repository)")
    cmd = [sys.executable, "-m", "upscale_cli", "bench", "--set", "Set5", "--set", "Set14", "--model", "bicubic",
           "--scale", "2,3,4", "--data-dir", str(data_dir), "--device", "cpu", "--format", "csv"]  # fmt: skip
    report_runs(cmd, args.repeat, args.threads, TARGET_S)


if __name__ == "__main__":
    main()
