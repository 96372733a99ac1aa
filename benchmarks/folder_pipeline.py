"""Folder runs, sequential against overlapped (issue 17, section 4): the wall-time ratio.

A folder of ``--images`` synthetic pictures (numpy noise over gradients, ``--size`` px square,
PNG) goes through ``upscale FOLDER --model default --scale 4 -o OUT`` (PNG out) in a fresh
process, once with ``UPSCALE_OVERLAP=0`` (decode, network, encode one after the other) and once
overlapped (the next image decoded and the previous one encoded while the network runs), the
two interleaved for ``--repeat`` rounds.  Prints each run, the median wall times, their ratio
(and the median of each round's ratio, steadier on a shared machine) and the CPU's flags,
since the ratio depends on them (``--device cuda`` for a GPU run).  The outputs of the two
modes are compared byte for byte.

    python benchmarks/folder_pipeline.py [--images 16] [--size 512] [--repeat 3] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import run_timed
from PIL import Image

_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name and which of the flags that matter here it has (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU (no /proc/cpuinfo)"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = fields.get("model name\t", "?").strip()
    flags = set(fields.get("flags\t\t", "").split())
    return f"{name}, {os.cpu_count()} CPUs, flags: " + ", ".join(f for f in _FLAGS if f in flags)


def synthesize(folder: Path, count: int, size: int) -> None:
    """``count`` RGB pictures: a smooth gradient plus moderate noise, different for each."""
    rng = np.random.default_rng(17)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        base = np.stack([x * 255, y * 255, (1 - x) * (0.5 + 0.5 * np.sin(6.28 * (y + i / count))) * 255], axis=-1)
        noisy = base + rng.normal(0, 12, base.shape)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    print(cpu_description())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        synthesize(src, args.images, args.size)
        walls: dict[str, list[float]] = {"sequential": [], "overlapped": []}
        for round_ in range(args.repeat):
            for mode, overlap in (("sequential", "0"), ("overlapped", "1")):
                out = Path(tmp) / mode
                cmd = [sys.executable, "-m", "upscale_cli", str(src), "--model", args.model, "--scale", "4",
                       "--device", args.device, "-o", str(out), "--overwrite", "-q"]
                os.environ["UPSCALE_OVERLAP"] = overlap
                wall, cpu, rss = run_timed(cmd)
                walls[mode].append(wall)
                print(f"round {round_ + 1} {mode:>10}: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.2f} GB, "
                      f"load average {os.getloadavg()[0]:.2f}")
        same = all((Path(tmp) / "sequential" / p.name).read_bytes() == p.read_bytes()
                   for p in (Path(tmp) / "overlapped").iterdir())
    seq, ovl = statistics.median(walls["sequential"]), statistics.median(walls["overlapped"])
    paired = statistics.median(s / o for s, o in zip(walls["sequential"], walls["overlapped"]))
    print(f"{args.images} images, {args.size} px, x4, PNG out, model {args.model}: median sequential {seq:.2f} s, "
          f"overlapped {ovl:.2f} s, ratio of the medians {seq / ovl:.3f}x, median of the rounds' ratios "
          f"{paired:.3f}x; outputs identical: {same}")


if __name__ == "__main__":
    main()
