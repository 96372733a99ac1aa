"""Tiled against whole-image output, and fp16/bf16 against fp32, of the window transformers
(SwinIR, HAT, DAT) in their published configurations, with random weights, on Set14.

Two kinds of random weights (``--weights``): ``init``, the published initialisation (linear
layers N(0, 0.02^2): attention and MLPs add almost nothing to the residual stream, so the net
is nearly its convolutions), and ``unit``, linear layers N(0, 1/fan_in) and bias tables
N(0, 1), where attention is far from uniform and every branch counts as much as the stream
(the harder case for tiling, closer to what training makes of the attention).

Issue 18: the default overlap must keep tiled output within 45 dB PSNR of the whole image.
Each Set14 image (grey ``bridge`` as three equal channels) is downscaled x4 (MATLAB bicubic),
its central ``--lr-crop`` px (0: all of it; the published models are slow on two CPU cores)
upscaled x4 whole and in ``--tile`` px tiles with the engine's default overlap (the radius
clipped to 4..16 px for these nets) and at each of ``--overlaps``; PSNR of tiled against whole on 0..1.  The
precision part runs the central ``--crop`` px of each LR image under CPU autocast in fp16 and
bf16 (as the engine does) against fp32.  Prints one line per configuration and image, then
min / mean per configuration.

    python benchmarks/transformer_tiling.py [--weights unit] [--lr-crop 96] [--tile 64] [--overlaps 16,32] [--crop 48]
        [--images 14] [--only swinir-m,hat]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upscale_cli.engine import Upscaler, default_overlap  # noqa: E402
from upscale_cli.io import read_image  # noqa: E402
from upscale_cli.metrics import psnr  # noqa: E402
from upscale_cli.models import LoadedModel, get_arch  # noqa: E402
from upscale_cli.resize import imresize  # noqa: E402

SET14 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bench" / "Set14"

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "swinir-m": ("swinir", {}),  # classical SwinIR-M (the family's defaults)
    "swinir-light": (
        "swinir",
        {"embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4, "upsampler": "pixelshuffledirect"},
    ),
    "swinir-real-m": ("swinir", {"upsampler": "nearest+conv"}),
    "hat": ("hat", {}),
    "hat-s": ("hat", {"embed_dim": 144, "compress_ratio": 24, "squeeze_factor": 24}),
    "dat": ("dat", {}),
    "dat-light": (
        "dat",
        {
            "embed_dim": 60,
            "depth": [18],
            "num_heads": [6],
            "expansion_factor": 2.0,
            "resi_connection": "3conv",
            "upsampler": "pixelshuffledirect",
        },
    ),
}


def centre(x: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side`` x ``side`` px of ``(C, H, W)`` (all of an axis shorter than it; 0: all)."""
    h, w = x.shape[-2:]
    sh, sw = (min(side, n) if side else n for n in (h, w))
    return x[:, (h - sh) // 2 : (h - sh) // 2 + sh, (w - sw) // 2 : (w - sw) // 2 + sw]


def lr_images(side: int) -> list[tuple[str, torch.Tensor]]:
    out = []
    for path in sorted(SET14.glob("*.png")):
        hr = read_image(path).color
        hr = hr.expand(3, -1, -1) if hr.shape[0] == 1 else hr
        h, w = (s // 4 * 4 for s in hr.shape[-2:])
        out.append((path.stem, centre(imresize(hr[None, :, :h, :w], scale=0.25).clamp(0, 1)[0], side)))
    return out


def unit_gain(module: torch.nn.Module) -> None:
    """Linear weights N(0, 1/fan_in), relative position bias tables N(0, 1)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, m.in_features**-0.5)
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_(0.0, 1.0)


def build(name: str, weights: str) -> LoadedModel:
    family, extra = CONFIGS[name]
    arch = get_arch(family)
    kwargs = {**arch.default_kwargs, **extra}
    torch.manual_seed(0)
    module = arch.build(scale=4, **kwargs).eval()
    if weights == "unit":
        unit_gain(module)
    return LoadedModel(name, arch, module, 4, kwargs)


def psnr1(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR on the 0..1 scale (capped at 100 dB)."""
    return float(psnr(a, b, data_range=1.0))


def under(model: LoadedModel, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.inference_mode():
        if dtype is None:
            return model(x[None])[0].float()
        with torch.autocast("cpu", dtype=dtype):
            return model(x[None])[0].float()


def tilers(model: LoadedModel, tile: int, overlaps: list[int]) -> dict[str, Upscaler]:
    """The engine at its default overlap (``tiled``) and at each of ``overlaps`` (``ovN``), with
    tiles of ``tile`` px or the smallest that holds the overlap (the engine's rule)."""
    m = model.size_multiple
    out = {"tiled": Upscaler(model, device="cpu", precision="fp32", tile=tile)}
    for ov in overlaps:
        side = max(tile, -(-(2 * ov + m) // m) * m)
        out[f"ov{ov}"] = Upscaler(model, device="cpu", precision="fp32", tile=side, tile_overlap=ov)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=64, help="tile side, input px (a multiple of every window)")
    parser.add_argument("--lr-crop", type=int, default=96, help="central crop of each LR image, px (0: whole)")
    parser.add_argument("--overlaps", default="", help="comma-separated overlaps to compare with the default")
    parser.add_argument("--crop", type=int, default=48, help="side of the crop for the precision runs (0: none)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--weights", choices=("init", "unit"), default="unit", help="kind of random weights")
    parser.add_argument("--images", type=int, default=14, help="the first N Set14 images (alphabetical)")
    args = parser.parse_args()
    if not SET14.is_dir():
        sys.exit(f"{SET14} is absent (../shared is not beside the repository)")
    images = lr_images(args.lr_crop)[: args.images]
    overlaps = [int(v) for v in args.overlaps.split(",") if v]
    summary = []
    for name in args.only.split(","):
        model = build(name, args.weights)
        whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
        runs = tilers(model, args.tile, overlaps)
        rows = []
        for stem, lr in images:
            t0 = time.perf_counter()
            ref = whole.upscale(lr)
            row = {key: psnr1(run.upscale(lr), ref) for key, run in runs.items()}
            if args.crop:
                crop = centre(lr, args.crop)
                exact = under(model, crop, None)
                row["fp16"] = psnr1(under(model, crop, torch.float16), exact)
                row["bf16"] = psnr1(under(model, crop, torch.bfloat16), exact)
            rows.append(row)
            figures = "  ".join(f"{k} {v:6.2f}" for k, v in row.items())
            print(
                f"{name:14s} {stem:10s} {tuple(lr.shape[-2:])}  {figures}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        stats = "  ".join(
            f"{k} min {min(r[k] for r in rows):6.2f} mean {sum(r[k] for r in rows) / len(rows):6.2f}" for k in rows[0]
        )
        plan = runs["tiled"].plan(*images[0][1].shape[-2:])
        line = (
            f"{name:14s} radius {model.radius} multiple {model.size_multiple} default overlap "
            f"{default_overlap(model.radius, model.size_multiple)} (tile {plan.tile}, {plan.count} tiles): {stats}"
        )
        summary.append(line)
        print(line, flush=True)
    print("\n".join(["", f"summary ({args.weights} weights; PSNR dB against the fp32 whole image):", *summary]))


if __name__ == "__main__":
    main()
