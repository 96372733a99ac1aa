"""Train and ship the in-house weights of ``recipes/inhouse/targets.toml`` (issue 20, section 3).

    python recipes/inhouse.py list [--budget cpu|gpu]
    python recipes/inhouse.py train [TARGET ...] --budget cpu|gpu [--jobs N] [--stop-at N] [--runs DIR]
    python recipes/inhouse.py publish TARGET --budget cpu|gpu [--runs DIR]

``train`` runs ``upscale train`` for each target in parallel processes (``--jobs``; on a CPU
each gets ``cores // jobs`` threads, on a GPU they share the device), each into ``RUNS/TARGET``,
resuming a run that has a checkpoint.  It records the wall time, the device and the CPU's
flags beside the run (``RUNS/TARGET.budget.json``).

``publish`` stores the run's weights in fp16 as ``upscale_cli/weights/<target>.safetensors``
(at most :data:`MAX_FILE` bytes, :data:`MAX_TOTAL` for all shipped files), scores that very
file with ``upscale bench`` on Set5 and Set14 under the standard protocol, and writes its
entry in ``weights_manifest.json`` with a ``package`` source, the figures and the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from upscale_cli.train.config import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from reproduce_classic import cpu_flags, cpu_name  # noqa: E402  (the benchmarks' own CPU report)

TARGETS = Path(__file__).parent / "inhouse" / "targets.toml"
WEIGHTS_DIR = REPO / "upscale_cli" / "weights"
MANIFEST = REPO / "weights_manifest.json"
MAX_FILE = 3_000_000
"""Bytes a file shipped inside the package may take."""
MAX_TOTAL = 15_000_000
"""Bytes all in-house files in the package may take together."""
BENCH_SETS = ("Set5", "Set14")


def load_targets() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the common options, the targets by name) of :data:`TARGETS`."""
    with TARGETS.open("rb") as f:
        doc = tomllib.load(f)
    return doc.get("common", {}), doc["targets"]


def options(common: Mapping[str, Any], target: Mapping[str, Any], budget: str) -> dict[str, Any]:
    """The ``upscale train`` options of ``target`` under ``budget``: common < target's budget table."""
    if budget not in target:
        raise SystemExit(f"target {target['model']} has no {budget!r} budget")
    return {**common, "model": target.get("train-model", target["model"]), "scale": target["scale"], **target[budget]}


def train_command(
    opts: Mapping[str, Any], out: Path, init: Path | None, resume: bool, stop_at: int | None
) -> list[str]:
    """The ``python -m upscale_cli train`` command line for ``opts``."""
    cmd = [sys.executable, "-m", "upscale_cli", "train", "--out", str(out)]
    for key, value in opts.items():
        for item in value if isinstance(value, list) else [value]:
            cmd += [f"--{key}", str(item)]
    if init is not None and not resume:
        cmd += ["--init", str(init)]
    if resume:
        cmd.append("--resume")
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    return cmd


def finished(out: Path) -> bool:
    """Whether the run in ``out`` exported the last step of its schedule."""
    info = out / "model.json"
    if not info.is_file():
        return False
    training = json.loads(info.read_text(encoding="utf-8"))["training"]
    return training["steps"] >= training["total_steps"]


def cpu_description() -> str:
    """The CPU's model name and the bf16/AVX flags that matter for the figures."""
    return f"{cpu_name()} ({cpu_flags()})"


def _launch(name: str, target: Mapping[str, Any], opts: Mapping[str, Any], args: argparse.Namespace, threads: int):
    out = args.runs / name
    resume = (out / "checkpoint.pt").is_file()
    init = None
    if "prepare" in target:
        init = args.runs / f"{name}-init.safetensors"
        if not init.is_file():
            subprocess.run(shlex.split(target["prepare"].format(init=init)), cwd=REPO, check=True)
    cmd = train_command(opts, out, init, resume, args.stop_at)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = (args.runs / f"{name}.log").open("a", encoding="utf-8")
    print(f"{name}: {shlex.join(cmd)}", flush=True)
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.time()


def cmd_train(args: argparse.Namespace) -> int:
    common, targets = load_targets()
    names = args.targets or [n for n, t in targets.items() if args.budget in t]
    todo = [n for n in names if not finished(args.runs / n)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.runs.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    failed = []
    while todo or running:
        while todo and len(running) < args.jobs:
            name = todo.pop(0)
            running[name] = _launch(name, targets[name], options(common, targets[name], args.budget), args, threads)
        time.sleep(5)
        for name, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            record = args.runs / f"{name}.budget.json"
            spent = json.loads(record.read_text()) if record.is_file() else {"seconds": 0.0}
            spent = {
                "budget": args.budget,
                "device": device,
                "seconds": round(spent["seconds"] + time.time() - start),
                "threads": threads,
                "processes": args.jobs,
                "cpu": cpu_description(),
            }
            record.write_text(json.dumps(spent, indent=2) + "\n", encoding="utf-8")
            print(f"{name}: exit {proc.returncode}, {spent['seconds']} s in all", flush=True)
            if proc.returncode:
                failed.append(name)
    return 1 if failed else 0


def scales_of(target: Mapping[str, Any]) -> list[int]:
    """The scales of a target: ``4`` or ``"2,3,4"`` (a multi-scale net)."""
    return [int(s) for s in str(target["scale"]).split(",")]


def _bench(weights: Path, scales: list[int], data_dir: str) -> dict[int, dict[str, dict[str, float]]]:
    """``{scale: {set: {"psnr", "ssim"}}}`` of ``weights`` by ``upscale bench``, rounded as the manifest is."""
    cmd = [sys.executable, "-m", "upscale_cli", "bench", "--weights", str(weights), "--scale", ",".join(map(str, scales)),
           "--data-dir", data_dir, "--format", "json", "--device", "cpu"]  # fmt: skip
    for name in BENCH_SETS:
        cmd += ["--set", name]
    rows = json.loads(subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout)["rows"]
    found = {(r["set"], r["scale"]): r for r in rows if r["model"] != "bicubic"}
    return {
        s: {n: {"psnr": round(found[n, s]["psnr"], 2), "ssim": round(found[n, s]["ssim"], 4)} for n in BENCH_SETS}
        for s in scales
    }


def _notes(info: Mapping[str, Any], spent: Mapping[str, Any], fp16_cost: float) -> str:
    t = info["training"]
    where = "one lent GPU" if spent.get("device") == "cuda" else f"the CPU, {spent['cpu']}"
    return (
        f"In-house weights, trained with `python recipes/inhouse.py train` (recipes/inhouse/targets.toml, "
        f"budget {spent['budget']!r}): {t['steps']} steps of {t['batch_size']} patches of {t['patch_size']} LR px "
        f"on T91 + BSD200, {t['optimizer']} at lr {t['lr']:g} ({t['schedule']} schedule), loss {t['loss']}, "
        f"{t['precision']} forward passes, {t['weights']} weights; {spent['seconds'] / 60:.0f} min on {where}, "
        f"{spent['threads']} thread(s) per "
        f"process, {spent['processes']} process(es) at once. Stored in fp16 (Set5 {fp16_cost:+.3f} dB against "
        f"the fp32 weights). Far shorter than the paper's training: the gap to its figures is the budget."
    )


def cmd_publish(args: argparse.Namespace) -> int:
    import torch

    from upscale_cli.models import get_spec
    from upscale_cli.weights import atomic_path, read_checkpoint, save_weights
    from upscale_cli.train.export import manifest_entry

    common, targets = load_targets()
    target = targets[args.target]
    run = args.runs / args.target
    if not finished(run):
        raise SystemExit(f"{run}: the run has not finished its schedule")
    info = json.loads((run / "model.json").read_text(encoding="utf-8"))
    spent = json.loads((args.runs / f"{args.target}.budget.json").read_text(encoding="utf-8"))
    spec = get_spec(target["model"])
    scales = scales_of(target)
    sd, _ = read_checkpoint(run / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    if any(not torch.isfinite(v).all() for v in half.values() if v.is_floating_point()):
        raise SystemExit(f"{run}: a weight overflows fp16")
    file = f"{args.target}.safetensors"
    path = WEIGHTS_DIR / file
    extra = {"training": info["training"], "validation": info["validation"], "budget": spent}
    sha = save_weights(path, half, name=spec.name, arch=spec.arch, kwargs=spec.kwargs, scales=scales,
                       scale=scales[0], convention=info["convention"], extra=extra)  # fmt: skip
    size = path.stat().st_size
    shipped = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors") if p.name != "default.safetensors")
    if size > MAX_FILE or shipped > MAX_TOTAL:
        path.unlink()
        raise SystemExit(f"{file}: {size} bytes ({shipped} in all) is over the package's budget")
    measured = _bench(path, scales, common["data-dir"])
    fp32 = _bench(run / "model.safetensors", scales, common["data-dir"])
    doc = json.loads(MANIFEST.read_text(encoding="utf-8"))
    for scale in scales:
        entry = manifest_entry({**info, "sha256": sha, "size": size}, scale, [{"package": f"weights/{file}"}], file)
        cost = measured[scale]["Set5"]["psnr"] - fp32[scale]["Set5"]["psnr"]
        entry.update(
            kwargs=dict(spec.kwargs),
            license=target.get("license", "MIT"),
            citation=f"upscale-cli in-house weights for {info['paper']} (recipes/inhouse/targets.toml, target {args.target})",
            measured={
                "source": "upscale bench, standard protocol (../shared/README.md), these weights",
                **measured[scale],
            },  # fmt: skip
            notes=_notes(info, spent, cost),
        )
        if str(scale) in target.get("paper", {}):
            entry["paper"] = {"source": info["paper"], **target["paper"][str(scale)]}
        doc["models"].setdefault(spec.name, {})[str(scale)] = entry
        s5, s14 = measured[scale]["Set5"], measured[scale]["Set14"]
        print(f"{spec.name} x{scale}: {file} {size} bytes, Set5 {s5['psnr']:.2f} / {s5['ssim']:.4f}, "
              f"Set14 {s14['psnr']:.2f} / {s14['ssim']:.4f}, fp16 storage {cost:+.3f} dB")  # fmt: skip
    with atomic_path(MANIFEST) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    common, targets = load_targets()
    for name, target in targets.items():
        if args.budget in target:
            state = "finished" if finished(args.runs / name) else "to train"
            print(
                f"{name:12s} {state:9s} {shlex.join(train_command(options(common, target, args.budget), args.runs / name, None, False, None)[3:])}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("list", cmd_list), ("train", cmd_train), ("publish", cmd_publish)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--budget", choices=("cpu", "gpu"), default="gpu")
        p.add_argument("--runs", type=Path, default=REPO / "runs", help="folder of the runs (default: runs/)")
        if name == "train":
            p.add_argument(
                "targets", nargs="*", help="targets of inhouse/targets.toml (default: every one with this budget)"
            )
            p.add_argument("--jobs", type=int, default=2, help="processes at once")
            p.add_argument("--stop-at", type=int, help="end this session's share at step N (resumable)")
        if name == "publish":
            p.add_argument("target")
    args = parser.parse_args(argv)
    args.runs = args.runs.resolve()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
