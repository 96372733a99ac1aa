"""Wall-clock time and peak memory of ``upscale IMAGE --scale 4`` on a 1000x1000 image.

Issue 6's speed target for the shipped default model: a 1000x1000 image to x4 in under 10 s
on the development machine (2 CPU cores) with default settings (model ``default``, precision
and tile ``auto``, PNG output).  The image is Set14's ``baboon`` resized to 1000x1000 (Pillow
bicubic), written to a temporary folder; the command runs as a user runs it, in a fresh
process (imports included), ``--repeat`` times.  Prints wall and CPU seconds, peak RSS and the
load average of each run, then the median wall time.

    python benchmarks/default_model_speed.py [--repeat 3] [--threads N] [--model default]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _timing import SHARED, report_runs
from PIL import Image

TARGET_S = 10.0
SIDE = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the command")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    source = SHARED / "datasets" / "bench" / "Set14" / "baboon.png"
    if not source.is_file():
        sys.exit(f"{source} is absent (../shared is not beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "i1000.png"
        Image.open(source).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC).save(image)
        cmd = [sys.executable, "-m", "upscale_cli", str(image), "--scale", "4", "--model", args.model,
               "-o", str(Path(tmp) / "out.png"), "--overwrite"]  # fmt: skip
        report_runs(cmd, args.repeat, args.threads, TARGET_S)


if __name__ == "__main__":
    main()
