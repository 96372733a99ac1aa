"""Reproduction of the classic networks with their authors' weights (issue 15).

For every manifest entry with a ``format`` (weights published in another project's format)
whose upstream file ``../shared/checkpoints`` holds a byte-identical copy, the copy (and its
companions) is put in a fresh temporary weights cache, and ``upscale bench`` runs the named
model offline, as a user's first run does: the file is verified by sha256, converted to
safetensors, cached, and benchmarked under the standard protocol.  The script prints a
markdown table: the paper's (or the source repository's) figure, ours, the difference,
parameters and output megapixels per second.

    python benchmarks/reproduce_classic.py [--model NAME ...] [--sets Set5,Set14] [--threads N] [--json OUT]

MP/s is the bench's own figure (output pixels over network time) on this machine's CPU: it
depends on the machine and its load; the script prints the CPU flags it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import SHARED

REPO = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    """The bf16/AVX flags of this CPU that matter for the figures."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else the platform's answer)."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.partition(":")[2].strip()
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def entries(models: list[str] | None) -> list[tuple[str, list[int], dict]]:
    manifest = json.loads((REPO / "weights_manifest.json").read_text(encoding="utf-8"))
    found = []
    for name, by_scale in manifest["models"].items():
        if models and name not in models:
            continue
        first = next(iter(by_scale.values()))
        if "format" in first:
            found.append((name, sorted(int(s) for s in by_scale), by_scale))
    return found


def seed(cache: Path, entry: dict) -> bool:
    """Copy the upstream file and its companions from ../shared into the cache; False if absent."""
    for item in (entry, *entry.get("companions", ())):
        source = SHARED / "checkpoints" / item["file"]
        if not source.is_file():
            return False
        shutil.copyfile(source, cache / item["file"])
    return True


def bench(name: str, scale: int, sets: list[str], cache: Path, threads: int | None, *options: str) -> list[dict]:
    """The rows of ``upscale bench`` (JSON) for one model and scale, offline from ``cache``;
    ``options`` are more flags for it (``--precision bf16``)."""
    env = {**os.environ, "UPSCALE_CACHE": str(cache), "UPSCALE_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "upscale_cli", "bench", "--model", name, "--scale", str(scale), "--no-baseline",
           "--data-dir", str(SHARED / "datasets" / "bench"), "--device", "cpu", "--format", "json"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    cmd += options
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(
            f"{name} x{scale}: bench failed "
            f"({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})"
        )
    return json.loads(out.stdout)["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--sets", default="Set5,Set14")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the bench")
    parser.add_argument("--json", type=Path, default=None, help="also write every row as JSON here")
    args = parser.parse_args()
    sets = args.sets.split(",")
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores\n")
    print("| model | scale | set | reference | ours PSNR / SSIM | diff | params | MP/s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name, scales, by_scale in entries(args.model):
        for scale in scales:
            entry = by_scale[str(scale)]
            with tempfile.TemporaryDirectory(prefix="upscale-repro-") as tmp:
                if not seed(Path(tmp), entry):
                    print(f"| {name} | x{scale} | - | no copy of {entry['file']} in ../shared | | | | |")
                    continue
                for row in bench(name, scale, sets, Path(tmp), args.threads):
                    ref = entry.get("paper", {}).get(row["set"], {}).get("psnr")
                    diff = f"{row['psnr'] - ref:+.2f}" if ref is not None else ""
                    print(f"| {name} | x{scale} | {row['set']} | {ref if ref is not None else '-'} | "
                          f"{row['psnr']:.2f} / {row['ssim']:.4f} | {diff} | "
                          f"{row['params']:,} | {row['mp_per_s']:.2f} |",
                          flush=True)  # fmt: skip
                    rows.append({
                        "model": name, "scale": scale, "reference": ref,
                        **{k: v for k, v in row.items() if k != "per_image"},
                    })
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
