"""Engine benchmark (issue 2): tiling overhead, precision speed/accuracy, peak memory.

1. Whole-image vs tiled vs tiled-and-batched throughput (output MP/s) for a 1024x1024 input at
   x4 with an EDSR-baseline-sized network (16 residual blocks, 64 channels; random weights).
2. fp32 vs ``--precision auto`` vs bf16 on the CPU: time, and the PSNR difference on Set5 x4
   (standard protocol, :func:`upscale_cli.metrics.evaluate`) with the real CARN-M checkpoint.
3. Peak resident memory (``ru_maxrss`` of a child process) for a 3000x3000 input at x4 with
   ``tile="auto"``.

Timings are reported in wall seconds and in CPU seconds of this process (user + system of all
its threads): on a shared machine the CPU seconds are the fairer comparison between rows, so
OpenMP threads are told to sleep rather than spin while they wait (``OMP_WAIT_POLICY=PASSIVE``,
set before torch loads), which would otherwise bill waiting as work.  Peak RSS is measured
first, while this process is small: a child inherits its parent's high-water mark through
fork and exec, so ``ru_maxrss`` is cross-checked with the child's own ``VmHWM``.

Usage::

    python benchmarks/engine_throughput.py [--threads 2] [--size 1024] [--rss-size 3000]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from upscale_cli import devices  # noqa: E402 - after the sys.path line above
from upscale_cli.engine import Upscaler  # noqa: E402 - after the sys.path line above
from upscale_cli.metrics import evaluate  # noqa: E402 - after the sys.path line above
from upscale_cli.models import LoadedModel, create_model, get_arch, get_spec  # noqa: E402 - after the sys.path line above
from upscale_cli.resize import imresize  # noqa: E402 - after the sys.path line above

SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))


def named_model(name: str, scale: int, weights: Path | None = None) -> LoadedModel:
    """A registry model, random or with a plain state dict."""
    spec = get_spec(name)
    net = create_model(name, scale)
    source = "random"
    if weights is not None:
        net.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"), strict=True)
        source = str(weights)
    return LoadedModel(name, get_arch(spec.arch), net.eval(), scale, dict(spec.kwargs), source=source)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_timed(fn: Callable[[], object], quick: float = 10.0) -> tuple[float, float]:
    """:func:`timed`, best of two when a call takes under ``quick`` CPU seconds."""
    wall, cpu = timed(fn)
    if cpu < quick:
        wall2, cpu2 = timed(fn)
        wall, cpu = min(wall, wall2), min(cpu, cpu2)
    return wall, cpu


def throughput(size: int) -> list[str]:
    torch.manual_seed(0)
    model = named_model("edsr-baseline", 4)
    x = torch.rand(3, size, size)
    out_mp = 16 * size * size / 1e6
    tiled = Upscaler(model, device="cpu", precision="fp32", tile="auto", batch_size=1)
    auto = tiled.plan(size, size)
    configs = [
        ("whole image", Upscaler(model, device="cpu", precision="fp32", tile=0, batch_size=1)),
        ("tiled (auto)", tiled),
        ("tiled + batched x4", Upscaler(model, device="cpu", precision="fp32", tile=auto.tile, batch_size=4)),
    ]
    rows = [
        (
            f"### 1. Throughput, {size}x{size} -> x4, EDSR-baseline (16 blocks, 64 ch, radius {model.radius}), "
            f"fp32, {torch.get_num_threads()} threads"
        ),
        "",
        "| run | tile (overlap) | tiles | wall s | CPU s | out MP/s (wall) | out MP per CPU-s | CPU time vs whole |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for label, up in configs:
        plan = up.plan(size, size)
        if label == "whole image" and devices.available_ram() < 12e9:
            rows.append(f"| {label} | - | - | skipped: < 12 GB RAM available | | | | |")
            continue
        wall, cpu = timed(lambda up=up: up.upscale(x))
        base = base or cpu
        rows.append(
            f"| {label} | {plan.tile_height}x{plan.tile_width} ({plan.overlap}) "
            f"| {plan.count} (batch {plan.batch_size}) "
            f"| {wall:.1f} | {cpu:.1f} | {out_mp / wall:.3f} | {out_mp / cpu:.3f} | {100 * (cpu / base - 1):+.1f} % |"
        )
        print(rows[-1], flush=True)
    return rows


def set5_x4() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(LR, HR) pairs by the standard protocol: HR cropped to a multiple of 4, bicubic LR."""
    pairs = []
    for path in sorted((SHARED / "datasets" / "bench" / "Set5").glob("*.png")):
        hr = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
        lr = (imresize(hr, scale=0.25).clamp(0, 1) * 255).round() / 255
        pairs.append((lr, hr))
    return pairs


def precision() -> list[str]:
    weights = SHARED / "checkpoints" / "carn_m.pth"
    if not weights.exists():
        return ["### 2. Precision: skipped (../shared/checkpoints/carn_m.pth absent)"]
    model = named_model("carn-m", 4, weights)
    pairs = set5_x4()
    rows = [
        f"### 2. Precision on this CPU (native bf16: {devices.cpu_has_native_bf16()}), CARN-M x4 on Set5, whole images",
        "",
        "| --precision | resolved | wall s | CPU s | speed vs fp32 | Set5 PSNR (Y) | delta vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    ref_cpu = ref_psnr = None
    for name in ("fp32", "auto", "bf16", "fp16"):
        label, run = name, model
        if name == "bf16" and not model.supports_bf16:  # measure what the family's flag avoids
            label, run = "bf16 (forced: carn declares bf16 unsafe)", replace(model, arch=replace(model.arch, bf16=True))
        up = Upscaler(run, device="cpu", precision=name, tile=0)
        outs: list[torch.Tensor] = []

        def run_set(up: Upscaler = up, outs: list[torch.Tensor] = outs) -> None:
            outs[:] = [up.upscale(lr) for lr, _ in pairs]

        wall, cpu = best_timed(run_set)
        score = float(np.mean([evaluate(sr, hr, 4)[0].item() for sr, (_, hr) in zip(outs, pairs)]))
        ref_cpu, ref_psnr = ref_cpu or cpu, ref_psnr if ref_psnr is not None else score
        rows.append(
            f"| {label} | {up.precision}{' + channels_last' if up.channels_last else ''} | {wall:.1f} | {cpu:.1f} "
            f"| {ref_cpu / cpu:.2f}x | {score:.3f} | {score - ref_psnr:+.3f} dB |"
        )
        print(rows[-1], flush=True)
    return rows


def rss_child(name: str, size: int, tiles: int) -> None:
    """Child process: upscale a ``size``-square input x4 with ``tile="auto"``; stop after
    ``tiles`` tiles when > 0 (all tiles are the same size and the output buffer is allocated
    first, so the peak is reached by then); print the plan and ``ru_maxrss``."""
    torch.set_num_threads(2)
    model = named_model(name, 4)
    up = Upscaler(model, device="cpu", precision="fp32", tile="auto")
    plan = up.plan(size, size)

    class Enough(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if tiles and done >= tiles:
            raise Enough

    x = torch.rand(3, size, size)
    start = time.perf_counter()
    try:
        up.upscale(x, progress=stop)
        ran = f"all {plan.count}"
    except Enough:
        ran = f"first {tiles} of {plan.count}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    hwm = f"{int(match.group(1)) * 1024 / 1e9:.2f}" if match else "-"
    print(f"{plan.tile_height}x{plan.tile_width}|{ran}|{time.perf_counter() - start:.1f}|{peak / 1e9:.2f}|{hwm}")


def peak_rss(size: int) -> list[str]:
    rows = [
        f"### 3. Peak RSS, {size}x{size} -> x4 ({16 * 3 * 4 * size * size / 1e9:.2f} GB float32 output), tile auto",
        "",
        "| model | auto tile | tiles run | wall s | peak RSS GB (ru_maxrss) | VmHWM GB |",
        "|---|---|---|---|---|---|",
    ]
    for name, tiles in (("fsrcnn", 0), ("edsr-baseline", 2)):
        cmd = [sys.executable, __file__, "--rss-child", name, "--rss-size", str(size), "--rss-tiles", str(tiles)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            rows.append(f"| {name} | failed: {res.stderr.strip().splitlines()[-1:]} | | | | |")
        else:
            rows.append(f"| {name} | " + " | ".join(res.stdout.strip().splitlines()[-1].split("|")) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rss-size", type=int, default=3000)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--rss-tiles", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "precision", "rss"])
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.rss_size, args.rss_tiles)
        return
    torch.set_num_threads(args.threads)
    sections = []
    if "rss" not in args.skip:  # first: children inherit this process's high-water mark
        sections.append(peak_rss(args.rss_size))
    if "throughput" not in args.skip:
        sections.append(throughput(args.size))
    if "precision" not in args.skip:
        sections.append(precision())
    print()
    print("\n\n".join("\n".join(s) for s in sections))


if __name__ == "__main__":
    main()
