"""Our default path against a Real-ESRGAN-style inference loop, side by side (issue 17, section 6).

The loop is written here from its description (not copied from Real-ESRGAN): the image is cut
into ``--tile`` squares in row order; each tile is run alone (batch 1) with ``--tile-pad``
pixels of context on every side the image has, and only its un-padded core is pasted into the
output; an image no larger than a tile is one whole-image forward.  fp32 on the CPU, fp16
(``module.half()``) on CUDA, NCHW (no channels-last), under ``torch.no_grad``.  It runs a
private copy of the model's ``nn.Module`` through :class:`~upscale_cli.models.LoadedModel`'s
calling convention (RGB 0..1; 0..255 for EDSR; the luma and a bicubic chroma for Y nets), as a
script wrapping that network would.  Ours is ``upscale_image(image, model)`` with every option
at its default (``--backend auto``: OpenVINO on the CPU where installed; ``--precision auto``),
on the same float32 image; ``--precision``/``--backend`` here override those two.  The table
says which backend and precision ours ran in.  ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment
caps PyTorch's and OpenVINO's oneDNN kernels at AVX2, the nearest this project has to an
AVX2-only CPU on a newer one (run it with ``--precision fp32``, what ``auto`` takes there).

Both run on the device ours picks (CUDA when available, else the CPU), interleaved (loop, ours,
loop, ours ...) after one untimed warm-up call each.  Per model the script prints the median
seconds of each, the median of the per-repeat ratios loop/ours, output MP/s, the PSNR between
the two outputs (RGB, clamped to 0..1; :func:`upscale_cli.metrics.psnr` caps it at 100 dB, i.e.
equal to float rounding), peak CUDA memory, and the fraction of the convolution
FLOP roofline each reached: useful FLOPs (forward hooks on Conv2d/ConvTranspose2d/Linear,
``2 * Cin / groups * kh * kw * Cout * Hout * Wout`` per image, counted on a 64 px probe and
scaled to the input's pixels) over time, over the peak of a large matmul in the precision the
path's convolutions ran in (seen by the same hooks) on the same device in the same run.

Weights: from the cache (the script never downloads: ``UPSCALE_OFFLINE=1`` unless set), else
the copy in ``../shared/checkpoints``, else random weights in the published layout (the
``weights`` column says which; speed does not depend on them).  The input is Set14's
``baboon`` resized (Pillow bicubic) to each size, or seeded noise without ``../shared``.

    python benchmarks/vs_realesrgan_loop.py [--quick] [--repeat 5] [--threads N] [--json]
        [--models default,carn-m,edsr-baseline,realesrgan-x4plus] [--size realesrgan-x4plus=512,1024]
        [--tile 512] [--tile-pad 10] [--peak-n 2048]

On a shared machine timings are noisy; the ratio of interleaved runs is the steadier figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
from _timing import SHARED
from PIL import Image
from reproduce_classic import cpu_flags, cpu_name
from torch import Tensor, nn

from upscale_cli import load_model, upscale_image
from upscale_cli.devices import DTYPES, resolve_device
from upscale_cli.engine import Upscaler
from upscale_cli.errors import WeightsError
from upscale_cli.metrics import psnr
from upscale_cli.models import LoadedModel
from upscale_cli.tiling import ceil_to
from upscale_cli.weights import manifest_entry

SIZES = {"default": 256, "carn-m": 192, "edsr-baseline": 192, "realesrgan-x4plus": 128}
"""Input side in pixels per model: the issue's 256 and 192 px; RRDBNet smaller (about 50x the
FLOPs per pixel of ``default``)."""
QUICK_SIZE = 48
PROBE = 64
LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
T = TypeVar("T")


# --- the Real-ESRGAN-style loop ------------------------------------------------------------


def tiled_forward(net: Callable[[Tensor], Tensor], img: Tensor, scale: int, tile: int, pad: int) -> Tensor:
    """``net`` over ``(1, C, H, W)`` tile by tile: ``tile``-square cores in row order (0: the
    whole image), each run with up to ``pad`` pixels of context per side, its core pasted."""
    _, _, h, w = img.shape
    step = tile or max(h, w)
    out = img.new_zeros(1, img.shape[1], h * scale, w * scale)
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            y1, x1 = min(y0 + step, h), min(x0 + step, w)
            py, px = max(y0 - pad, 0), max(x0 - pad, 0)
            sr = net(img[:, :, py : min(y1 + pad, h), px : min(x1 + pad, w)])
            oy, ox = (y0 - py) * scale, (x0 - px) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out


def loop_copy(model: LoadedModel, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The loop's own copy of the network: on ``device``, in ``dtype``, NCHW.  A copy because
    our engine moves the model it is given (to channels-last, in place)."""
    net = copy.deepcopy(model)
    net.module.to(device=device, dtype=dtype, memory_format=torch.contiguous_format).eval()
    return net


def run_loop(net: LoadedModel, image: np.ndarray, tile: int, pad: int) -> np.ndarray:
    """The loop on an ``H x W x 3`` float image in 0..1; the output the same way, clamped."""
    param = next(net.module.parameters())
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        y = tiled_forward(net, x.to(param.device, param.dtype), net.scale, tile, pad)
    return y[0].float().cpu().clamp_(0, 1).permute(1, 2, 0).numpy()


# --- measuring ------------------------------------------------------------------------------


@contextmanager
def hooked(module: nn.Module, hook: Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]) -> Iterator[None]:
    """``hook(layer, inputs, output)`` after every forward of the module's conv/linear layers."""
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, LAYERS)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layer_flops(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of one call of a conv or linear layer."""
    if isinstance(layer, nn.Linear):
        return 2 * layer.in_features * output.numel()
    k = layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, nn.ConvTranspose2d):  # every input value reaches k * Cout / groups outputs
        return 2 * inputs[0].numel() * k * layer.out_channels // layer.groups
    return 2 * output.numel() * k * layer.in_channels // layer.groups


def conv_flops(net: LoadedModel, height: int, width: int) -> float:
    """Useful FLOPs of ``net`` on a ``height x width`` image: counted on a :data:`PROBE` square
    (conv FLOPs scale with the pixel count) and scaled."""
    param = next(net.module.parameters())
    side = ceil_to(PROBE, net.size_multiple)
    counts: list[int] = []
    with torch.no_grad(), hooked(net.module, lambda m, i, o: counts.append(layer_flops(m, i, o))):
        net(torch.rand(1, 3, side, side, device=param.device, dtype=param.dtype))
    return sum(counts) * height * width / side**2


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T, int]:
    """Wall seconds, result and peak CUDA bytes (0 elsewhere) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return seconds, out, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def conv_dtype(module: nn.Module, fn: Callable[[], object], device: torch.device) -> tuple[float, torch.dtype | None]:
    """Seconds of ``fn()`` and the narrowest dtype the module's convolutions produced in it
    (``None``: none ran in PyTorch)."""
    seen: set[torch.dtype] = set()
    with hooked(module, lambda m, i, o: seen.add(o.dtype)):
        seconds = timed(fn, device)[0]
    return seconds, min(seen, key=lambda d: torch.finfo(d).bits, default=None)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Peak FLOP/s in ``dtype``: the best of ``repeats`` ``n x n x n`` products (2 n^3 FLOPs
    each) after one warm-up.  Measured again for every model, right after its runs, so that the
    peak and the runs share the machine's load."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        best = min(best, timed(lambda: torch.mm(a, b).sum().item(), device)[0])
    return 2 * n**3 / best


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- inputs ---------------------------------------------------------------------------------


def load(name: str, scale: int) -> LoadedModel:
    """``name`` with its published weights from the cache, else from ``../shared/checkpoints``,
    else random weights (``source == "random"``)."""
    try:
        return load_model(name, scale, progress=False)
    except WeightsError:
        pass
    shared_copy = SHARED / "checkpoints" / (manifest_entry(name, scale) or {}).get("file", "-")
    if shared_copy.is_file():
        try:
            return load_model(name, scale, weights=str(shared_copy), progress=False)
        except WeightsError:
            pass
    return load_model(name, scale, pretrained=False)


def test_image(size: int) -> np.ndarray:
    """A ``size``-square float32 RGB image in 0..1: Set14 baboon resized, else seeded noise."""
    source = SHARED / "datasets" / "bench" / "Set14" / "baboon.png"
    if source.is_file():
        img = Image.open(source).convert("RGB").resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.float32) / 255
    return np.random.default_rng(0).random((size, size, 3), dtype=np.float32)


def machine(device: torch.device) -> dict[str, object]:
    """What the figures ran on."""
    info: dict[str, object] = {"device": device.type, "cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count()}
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        info["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info.update(torch=torch.__version__, threads=torch.get_num_threads(), load_average=round(os.getloadavg()[0], 2))
    return info


# --- one model ------------------------------------------------------------------------------


def measure(name: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Every figure of one model at one input size."""
    model = load(name, args.scale)
    loop_dtype = torch.float16 if device.type == "cuda" else torch.float32
    net = loop_copy(model, device, loop_dtype)
    image = test_image(size)

    def loop() -> np.ndarray:
        return run_loop(net, image, args.tile, args.tile_pad)

    chosen = {k: v for k, v in (("precision", args.precision), ("backend", args.backend)) if v is not None}

    def ours() -> np.ndarray:
        return upscale_image(image, model, **chosen)

    first_loop = timed(loop, device)[0]
    first_ours, ours_dtype = conv_dtype(model.module, ours, device)
    runs: dict[str, list[float]] = {"loop": [], "ours": []}
    memory = {"loop": 0, "ours": 0}
    outs: dict[str, np.ndarray] = {}
    for r in range(args.repeat):
        for path, fn in (("loop", loop), ("ours", ours)):
            seconds, outs[path], peak = timed(fn, device)
            runs[path].append(seconds)
            memory[path] = max(memory[path], peak)
        print(f"{name} {size} px, repeat {r + 1}: loop {runs['loop'][-1]:.3f} s, ours {runs['ours'][-1]:.3f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    engine = Upscaler(model, **chosen)  # what ours ran on (its compiled backend is reused, not rebuilt)
    if ours_dtype is None:  # not PyTorch: the engine's precision
        ours_dtype = DTYPES.get(engine.precision, torch.float32)
    flops = conv_flops(net, size, size)
    dtypes = {path: dtype or torch.float32 for path, dtype in (("loop", loop_dtype), ("ours", ours_dtype))}
    peaks = {dtype_name(d): matmul_peak(device, d, args.peak_n, args.peak_repeat) for d in set(dtypes.values())}
    out_mp = size * size * args.scale**2 / 1e6
    row: dict[str, object] = {
        "model": name,
        "weights": "random" if model.source == "random" else "published",
        "params": model.params,
        "size": size,
        "scale": args.scale,
        "gflops": flops / 1e9,
        "ours_backend": engine.backend.name,
        "ours_precision": engine.precision,
        "ratio": statistics.median(a / b for a, b in zip(runs["loop"], runs["ours"])),
        "psnr_db": float(psnr(torch.from_numpy(outs["loop"]), torch.from_numpy(outs["ours"]), data_range=1.0)),
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
    }
    for path, dtype in (("loop", loop_dtype), ("ours", ours_dtype)):
        seconds = statistics.median(runs[path])
        row[path] = {
            "median_s": seconds,
            "first_call_s": first_loop if path == "loop" else first_ours,
            "mp_per_s": out_mp / seconds,
            "conv_dtype": dtype_name(dtypes[path]),
            "roofline": flops / seconds / peaks[dtype_name(dtypes[path])],
            "roofline_dtype": dtype_name(dtypes[path]),
            "peak_cuda_gb": memory[path] / 1e9,
        }
    return row


# --- output ---------------------------------------------------------------------------------


def table(rows: list[dict[str, object]], cuda: bool) -> list[str]:
    """The markdown table, one line per model and size."""
    mem = " peak GB loop / ours |" if cuda else ""
    lines = [
        "| model | weights | in px | GFLOP | ours on | loop s | ours s | loop/ours | MP/s loop / ours |"
        " PSNR loop vs ours | matmul peak GFLOP/s | roofline loop / ours (dtype) |" + mem,
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for row in rows:
        lp, us = row["loop"], row["ours"]
        peak = ", ".join(f"{v:.0f} {k}" for k, v in row["matmul_peak_gflops"].items())
        line = (
            f"| {row['model']} x{row['scale']} | {row['weights']} | {row['size']} | {row['gflops']:.1f} "
            f"| {row['ours_backend']} {row['ours_precision']} "
            f"| {lp['median_s']:.3f} | {us['median_s']:.3f} | {row['ratio']:.2f}x "
            f"| {lp['mp_per_s']:.3g} / {us['mp_per_s']:.3g} | {row['psnr_db']:.1f} dB | {peak} "
            f"| {100 * lp['roofline']:.1f} % ({lp['conv_dtype']}) / {100 * us['roofline']:.1f} % ({us['conv_dtype']}) |"
        )
        if cuda:
            line += f" {lp['peak_cuda_gb']:.2f} / {us['peak_cuda_gb']:.2f} |"
        lines.append(line)
    return lines


def sizes(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(model, input side) pairs to run, in order."""
    chosen = dict.fromkeys(args.models.split(","))
    by_model = {m: [QUICK_SIZE if args.quick else SIZES.get(m, 128)] for m in chosen}
    for item in args.size:
        model, _, value = item.partition("=")
        if model not in chosen or not value:
            raise SystemExit(f"--size {item}: expected MODEL=PX[,PX...] for one of {list(chosen)}")
        by_model[model] = [int(v) for v in value.split(",")]
    return [(m, s) for m in chosen for s in by_model[m]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SIZES), help="comma-separated registry names")
    parser.add_argument("--size", action="append", default=[], help="MODEL=PX[,PX...] input sides (repeatable)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs per path")
    parser.add_argument("--tile", type=int, default=512, help="the loop's tile side (0: whole image)")
    parser.add_argument("--tile-pad", type=int, default=10, help="the loop's context pixels per tile side")
    parser.add_argument("--peak-n", type=int, default=2048, help="matmul side for the peak FLOP/s")
    parser.add_argument("--peak-repeat", type=int, default=5, help="matmuls per peak measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--precision", default=None, help="ours: --precision (default: its own default, auto)")
    parser.add_argument("--backend", default=None, help="ours: --backend (default: its own default, auto)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE} px inputs, 1 repeat")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    os.environ.setdefault("UPSCALE_OFFLINE", "1")  # a benchmark never downloads
    if args.quick:
        args.repeat, args.peak_n, args.peak_repeat = 1, min(args.peak_n, 1024), 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    info = machine(device)
    print(f"machine: {json.dumps(info)}", file=sys.stderr, flush=True)
    rows = [measure(name, size, args, device) for name, size in sizes(args)]
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"machine": info, "tile": args.tile, "tile_pad": args.tile_pad,
                          "rows": rows}, indent=1))  # fmt: skip
        return
    where = info.get("gpu") or f"{info['cpu']} ({info['cpu_flags']}), {info['threads']} threads"
    if "onednn_max_cpu_isa" in info:
        where += f", oneDNN capped at {info['onednn_max_cpu_isa']}"
    print(f"\n{where}; torch {info['torch']}; peak: best of {args.peak_repeat} {args.peak_n}^3 matmuls; "
          f"loop tile {args.tile}, pad {args.tile_pad}; median of {args.repeat}; "
          f"load average {info['load_average']} -> {info['load_average_end']}\n")  # fmt: skip
    print("\n".join(table(rows, device.type == "cuda")))


if __name__ == "__main__":
    main()
