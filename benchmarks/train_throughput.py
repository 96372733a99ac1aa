"""Training throughput of ``upscale train``: steps per second and the share of step time spent
waiting for data.

Default: EDSR-baseline x4, batch 16, LR patches of 48 px, on ``../shared/datasets/train``
(T91 + BSD200), fp32 and bf16 autocast, the default DataLoader workers.  Each configuration
runs ``--warmup-steps`` unmeasured steps, then ``--steps`` measured ones; the figures come from
the run's own ``log.jsonl`` (per-step wall time and time blocked on the next batch).

    python benchmarks/train_throughput.py                       # the README figures
    python benchmarks/train_throughput.py --precisions fp32 --workers 0,1 --steps 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from upscale_cli.train.config import build_config
from upscale_cli.train.loop import default_workers, train
from upscale_cli.train.report import read_log

REPO = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace, precision: str, workers: int) -> dict[str, object]:
    """Train one short run and return its throughput figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(
            {
                "model": args.model,
                "scale": str(args.scale),
                "data": [str(args.data)],
                "batch_size": args.batch_size,
                "patch_size": args.patch_size,
                "steps": args.warmup_steps + args.steps,
                "precision": precision,
                "workers": workers,
                "seed": 0,
                "val_every": 0,
                "save_every": 0,
                "out": tmp,
                "channels_last": args.channels_last,
            }
        )
        began = time.perf_counter()
        train(cfg, console=Console(file=io.StringIO()))
        wall = time.perf_counter() - began
        records = [r for r in read_log(Path(tmp) / "log.jsonl") if "loss" in r][args.warmup_steps :]
    seconds = sum(r["seconds"] for r in records)
    waited = sum(r["data_wait"] for r in records)
    return {
        "model": args.model,
        "scale": args.scale,
        "batch": args.batch_size,
        "patch": args.patch_size,
        "precision": precision,
        "workers": workers,
        "channels_last": args.channels_last,
        "steps": len(records),
        "steps_per_s": len(records) / seconds,
        "seconds_per_step": seconds / len(records),
        "data_wait_share": waited / seconds,
        "run_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edsr-baseline")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "train")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument(
        "--workers", default=None, help="comma-separated worker counts (default: the trainer's default)"
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a Markdown table")
    args = parser.parse_args()
    args.channels_last = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    workers = [default_workers()] if args.workers is None else [int(w) for w in args.workers.split(",")]
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} (other processes share the CPU)"
    )
    if not args.json:
        print("| model | precision | workers | steps/s | s/step | data wait |")
        print("|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        for w in workers:
            row = measure(args, precision, w)
            if args.json:
                print(json.dumps(row))
            else:
                print(
                    f"| {row['model']} x{row['scale']} b{row['batch']} p{row['patch']} | {precision} | {w} | "
                    f"{row['steps_per_s']:.3f} | {row['seconds_per_step']:.2f} | "
                    f"{100 * row['data_wait_share']:.1f} % |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
