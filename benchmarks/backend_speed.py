"""The engine on each backend and precision, side by side, on this machine's CPU (issue 17).

``Upscaler(model, backend=B, precision=P)`` for B in torch, openvino and P in fp32, bf16, on
the same input, interleaved over ``--repeat`` rounds after one untimed call each (which pays
OpenVINO's conversion or IR read); prints the median seconds and the speed against PyTorch
fp32 (channels-last, the engine's CPU layout), with the CPU flags.  bf16 is emulated, and slow,
on a CPU without native bf16.

    python benchmarks/backend_speed.py [--models default=256,carn-m=192] [--repeat 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from reproduce_classic import cpu_flags, cpu_name
from vs_realesrgan_loop import load

from upscale_cli.engine import Upscaler

PATHS = [(b, p) for b in ("torch", "openvino") for p in ("fp32", "bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default=256,carn-m=192", help="MODEL=PX, comma separated (x4)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("UPSCALE_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({cpu_flags()}), {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | in px | " + " | ".join(f"{b} {p}" for b, p in PATHS) + " |")
    print("|---|---|" + "---|" * len(PATHS))
    for item in args.models.split(","):
        name, _, side = item.partition("=")
        model = load(name, 4)
        x = torch.rand(3, int(side), int(side), generator=torch.Generator().manual_seed(0))
        engines = {path: Upscaler(model, device="cpu", backend=path[0], precision=path[1]) for path in PATHS}
        for engine in engines.values():
            engine.upscale(x)
        times: dict[tuple[str, str], list[float]] = {path: [] for path in PATHS}
        for _ in range(args.repeat):
            for path, engine in engines.items():
                start = time.perf_counter()
                engine.upscale(x)
                times[path].append(time.perf_counter() - start)
        base = statistics.median(times[("torch", "fp32")])
        cells = [f"{statistics.median(t):.3f} s ({base / statistics.median(t):.2f}x)" for t in times.values()]
        print(f"| {name} x4 | {side} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
