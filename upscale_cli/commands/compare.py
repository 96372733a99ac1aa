"""``upscale compare``: one PNG with the same crop from several models, bicubic and a reference.

The picture logic is in :mod:`upscale_cli.compare`; this module reads the images, loads each
model once and runs it through the engine (so ``--device``, ``--precision``, ``--backend`` and
``--tile`` apply as for ``upscale``), and writes the grid atomically.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UsageError
from ..reporting import reported

BASELINE = "bicubic"


def infer_scale(lr_size: tuple[int, int], hr_size: tuple[int, int], scale: int | None, hr_path: Path) -> int:
    """The scale from ``--scale`` or, without it, from the HR and input sizes (``(w, h)``);
    refuses an HR that is not exactly ``scale`` times the input."""
    (w, h), (hw, hh) = lr_size, hr_size
    if scale is None:
        scale = hw // w if hw % w == 0 and hh % h == 0 and hw // w == hh // h else 0
    if scale < 1 or (hw, hh) != (w * scale, h * scale):
        need = f"{w * scale}x{h * scale} (x{scale} of the {w}x{h} input)" if scale else f"an integer multiple of {w}x{h}"
        raise UsageError(f"{hr_path}: {hw}x{hh}, expected {need}")
    return scale


def compare(
    image: Path = typer.Argument(..., help="The low-resolution input image."),
    models: list[str] = typer.Option([], "--model", "-m", help="Model name; repeatable (bicubic is always a panel)."),
    hr: Path | None = typer.Option(None, "--hr", help="Ground truth, exactly --scale times the input: adds PSNR/SSIM."),
    crop: str = typer.Option("auto", "--crop", help="x,y,w,h in input pixels, or auto (the most detailed window)."),
    zoom: int = typer.Option(0, "--zoom", help="Enlarge each panel N times by nearest (0 = to at least 128 px)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The PNG to write (default: INPUT_compare.png beside it)."),
    scale: int | None = typer.Option(None, "--scale", "-s", help="Upscaling factor (default: from --hr's size, else 4)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16, bf16 or auto."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or openvino (as for upscale)."),
    tile: str = typer.Option("0", "--tile", help="Tile side in input pixels; 0 = whole image, auto = fit memory."),
    metric: str = typer.Option("psnr,ssim", "--metric", help="With --hr: psnr, ssim, alexsim, lpips; comma separated."),
    alexnet_weights: Path | None = typer.Option(
        None, "--alexnet-weights", help="torchvision alexnet-owt-7be5be79.pth (default: $UPSCALE_ALEXNET_WEIGHTS)."
    ),
    lpips_weights: Path | None = typer.Option(
        None, "--lpips-weights", help="LPIPS v0.1 alex.pth (default: $UPSCALE_LPIPS_WEIGHTS)."
    ),
) -> None:
    """Draw the same crop from each model's output, from bicubic and from HR (or the input, by nearest).

    With --hr each panel shows the whole image's PSNR/SSIM by the bench protocol (Y channel, scale px shaved), and AlexSim/LPIPS when named in --metric.
    """
    with reported():
        from .. import compare as cmp
        from ..bench import read_8bit, super_resolve
        from ..engine import Upscaler
        from ..loader import load_model
        from ..weights import atomic_path
        from .bench import parse_metrics

        if zoom < 0:
            raise UsageError(f"--zoom {zoom}: must be >= 0 (0 = automatic)")
        if scale is not None and scale < 1:
            raise UsageError(f"--scale {scale}: must be >= 1")
        box = cmp.parse_crop(crop)
        extra = parse_metrics(metric)
        if extra and hr is None:
            raise UsageError(f"--metric {','.join(extra)} needs --hr (the ground truth to score against)")
        lr = read_8bit(image).float()
        truth = None
        if hr is not None:
            truth = read_8bit(hr).float()
            scale = infer_scale((lr.shape[-1], lr.shape[-2]), (truth.shape[-1], truth.shape[-2]), scale, hr)
            if truth.shape[0] != lr.shape[0]:
                truth, lr = truth.expand(3, -1, -1), lr.expand(3, -1, -1)  # grey against colour: both as RGB
        scale = 4 if scale is None else scale
        score = None
        if extra:
            from ..perceptual import load_alex_metrics, scorer

            score = scorer(load_alex_metrics(alexnet_weights, lpips_weights, "lpips" in extra), extra)
        height, width = lr.shape[-2:]
        box = cmp.auto_crop(lr, *cmp.auto_side(scale, width, height)) if box is None else box
        box = cmp.check_box(box, width, height, crop)
        names = [BASELINE, *(m for m in dict.fromkeys(models) if m.lower() != BASELINE)]
        outputs = []
        for name in names:
            model = load_model(name, scale, device="cpu")
            engine = Upscaler(model, device=device, precision=precision, backend=backend, tile=tile, batch_size=1)
            outputs.append((model.name, super_resolve(engine.upscale, lr)))
        panels = cmp.make_panels(lr, outputs, box, scale, truth, score)
        grid = cmp.draw_grid(panels, zoom or cmp.auto_zoom(box.w * scale))
        target = output if output is not None else image.with_name(f"{image.stem}_compare.png")
        with atomic_path(target) as tmp:
            grid.save(tmp, format="PNG")
        typer.echo(f"{target}: {len(panels)} panels of the {box.w}x{box.h} window at ({box.x}, {box.y}), x{scale}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the ``upscale`` command group."""
    app.command("compare")(compare)
