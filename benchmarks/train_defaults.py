"""A short run with each family's defaults beats bicubic (issue 20, section 2).

For every family that has a training recipe (``upscale_cli/train/recipes/``), this runs
``upscale train`` the way a new user would: the model, the scale, the data, a seed and a
step count, nothing else, so every other option is the recipe's.  Then ``upscale bench``
scores the exported weights on Set5 under the standard protocol, against bicubic.

The CPU budget: ``--steps`` (1500) steps of at most 16 patches of at most 32 LR px (8 of 24
for the transformers, ``SMALL``: a step of theirs costs 5-20 times a CNN's), trained on T91
alone, and a reduced width where the paper's network is too heavy for a CPU (``WIDTH`` below,
passed as ``--model FAMILY:key=value``).  A recipe's larger batch or patch is capped: that
changes the step's cost, not the recipe.  Each family must beat bicubic by ``MARGIN`` dB.

    python benchmarks/train_defaults.py [--family NAME ...] [--steps 1500] [--json out.json] [--extra "--lr 1e-3"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reproduce_classic import SHARED, cpu_flags, cpu_name

WIDTH: dict[str, str] = {
    "btsrn": "feats=32,bottleneck=32,lr_blocks=2,hr_blocks=1",
    "carn": "mobile=True,group=4,feats=32,single_scale=2",
    "cmsc": "stages=1,modules=1,feats=16",
    "dat": "embed_dim=24,depth=[2,2],num_heads=[2,2],split_size=[4,8],upsampler='pixelshuffledirect'",
    "drcn": "recursions=4,feats=32",
    "drct": "embed_dim=24,num_heads=[2,2],window_size=8,gc=8,num_feat=32",
    "densesr": "feats=16,growth=8,layers=6",
    "drrn": "feats=32,units=4",
    "edsr": "n_resblocks=4,n_feats=32",
    "enhancenet": "blocks=4,feats=32",
    "hat": "embed_dim=24,depths=[2,2],num_heads=[2,2],window_size=8,num_feat=32,squeeze_factor=6",
    "idn": "feats=32,blocks=2",
    "lapsrn": "feats=32",
    "mdsr": "n_resblocks=2,n_feats=16",
    "memnet": "blocks=2,recursions=2,feats=32",
    "omnisr": "num_feat=32,res_num=1,window_size=8",
    "plksr": "dim=16,n_blocks=2,kernel_size=7",
    "realplksr": "dim=16,n_blocks=2,kernel_size=7",
    "rcan": "n_resgroups=2,n_resblocks=2,n_feats=32",
    "rgt": "embed_dim=24,depth=[2,2],num_heads=[2,2],split_size=[4,8],num_feat=32",
    "rrdbnet": "num_feat=16,num_block=1,num_grow_ch=8,unshuffle=1",
    "selnet": "units=4,feats=32",
    "span": "feature_channels=16,num_blocks=2",
    "srformer": "embed_dim=24,depths=[2,2],num_heads=[2,2],window_size=8,upsampler='pixelshuffledirect'",
    "srgan": "blocks=4,feats=32",
    "srresnet": "num_feat=32,num_block=4",
    "srvgg": "num_feat=16,num_conv=4",
    "swinir": "embed_dim=24,depths=[2,2],num_heads=[2,2],window_size=8,upsampler='pixelshuffledirect'",
    "atd": "embed_dim=24,depths=[2,2],num_heads=[2,2],window_size=8,num_tokens=16,reducted_dim=8,"
    "upsampler='pixelshuffledirect'",
    "vdsr": "depth=8,feats=32",
}
"""Reduced widths for the CPU budget (families absent train at their default width)."""

MARGIN = 0.1
"""dB above bicubic that every family must reach in the budget."""

BATCH_CAP, PATCH_CAP = 16, 32
SMALL = {"atd", "dat", "drct", "hat", "omnisr", "rgt", "srformer", "swinir"}
"""The transformers: batch and patch capped at ``SMALL_CAP``."""
SMALL_CAP = (8, 24)
T91 = SHARED / "datasets" / "train" / "T91"
BENCH = SHARED / "datasets" / "bench"


def families(only: list[str] | None) -> list[tuple[str, int]]:
    """``(family, scale)`` for every family with a recipe: x2, or its smallest scale."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from upscale_cli.models import list_archs
    from upscale_cli.train.recipes import available

    recipes = set(available())
    out = []
    for arch in list_archs():
        if (arch.recipe or arch.name) not in recipes or (only and arch.name not in only):
            continue
        scale = 4 if arch.name == "enhancenet" else 2  # EnhanceNet exists at x4 only
        out.append((arch.name, scale))
    return out


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else str(res.returncode))
    return res


def set5(env: dict[str, str], scale: int, *model: str) -> float:
    """Set5 PSNR (Y, border = scale) of ``upscale bench`` with ``model`` flags."""
    cmd = [sys.executable, "-m", "upscale_cli", "bench", *model, "--scale", str(scale), "--set", "Set5",
           "--data-dir", str(BENCH), "--device", "cpu", "--precision", "fp32", "--no-baseline", "--format", "json"]  # fmt: skip
    return float(json.loads(_run(cmd, env).stdout)["rows"][0]["psnr"])


def train_one(family: str, scale: int, steps: int, work: Path, env: dict[str, str], extra: list[str]) -> dict:
    """Train ``family`` with its recipe for ``steps`` (and the ``extra`` flags) and score it on Set5."""
    from upscale_cli.train.recipes import recipe_for

    recipe = recipe_for(family)
    assert recipe is not None
    model = f"{family}:{WIDTH[family]}" if family in WIDTH else family
    out = work / family
    cmd = [sys.executable, "-m", "upscale_cli", "train", "--model", model, "--scale", str(scale),
           "--data", str(T91), "--seed", "0", "--steps", str(steps), "--val-every", "0",
           "--save-every", str(steps), "--device", "cpu", "--out", str(out)]  # fmt: skip
    batch_cap, patch_cap = SMALL_CAP if family in SMALL else (BATCH_CAP, PATCH_CAP)
    batch = min(recipe.values.get("batch_size", 16), batch_cap)
    patch = min(recipe.values.get("patch_size", 48), patch_cap)
    if batch < recipe.values.get("batch_size", 16):
        cmd += ["--batch-size", str(batch)]
    if patch < recipe.values.get("patch_size", 48):
        cmd += ["--patch-size", str(patch)]
    cmd += extra
    start = time.perf_counter()
    _run(cmd, env)
    seconds = time.perf_counter() - start
    psnr = set5(env, scale, "--weights", str(out / "model.safetensors"))
    return {"family": family, "model": model, "scale": scale, "steps": steps, "seconds": round(seconds, 1),
            "batch": batch, "patch": patch, "psnr": round(psnr, 3),
            "recipe": f"{recipe.name} ({recipe.source})", "extra": " ".join(extra)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--extra", default="", help="more `upscale train` flags, to try a change to a recipe")
    args = parser.parse_args()
    if not T91.is_dir():
        sys.exit(f"{T91}: the training images are not here")
    env = {**os.environ, "UPSCALE_OFFLINE": "1", "UPSCALE_BACKEND": "torch"}
    print(f"CPU: {cpu_name()}, flags {cpu_flags()}; {os.cpu_count()} cores; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| family | steps | seconds | Set5 PSNR | bicubic | gain | margin | ok |")
    print("|---|---|---|---|---|---|---|---|")
    bicubic: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for family, scale in families(args.family):
            if scale not in bicubic:
                bicubic[scale] = set5(env, scale, "--model", "bicubic")
            try:
                row = train_one(family, scale, args.steps, work, env, args.extra.split())
            except RuntimeError as err:
                print(f"| {family} x{scale} | {args.steps} | - | failed: {err} | | | | no |", flush=True)
                continue
            gain = row["psnr"] - bicubic[scale]
            row.update(bicubic=round(bicubic[scale], 3), gain=round(gain, 3), ok=gain >= MARGIN)
            print(f"| {family} x{scale} | {row['steps']} | {row['seconds']:.0f} | {row['psnr']:.2f} | "
                  f"{bicubic[scale]:.2f} | {gain:+.2f} | {MARGIN} | {'yes' if row['ok'] else 'no'} |", flush=True)
            if args.json:
                with args.json.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
