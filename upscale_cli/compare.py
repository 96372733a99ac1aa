"""Side-by-side crops of several upscalers' outputs, as in the SR papers' figures.

The picture is a grid of panels, all showing the same window: one per model's output, one of
bicubic, and a reference (the HR crop when the ground truth is known, else the input's own crop
enlarged by nearest neighbour).  Each panel is labelled with the model's name and, against the
ground truth, the whole image's PSNR/SSIM by the bench protocol (:func:`upscale_cli.metrics.evaluate`:
8-bit output, Y channel, ``scale`` px shaved) and any perceptual metric asked for.

The window is given in input (low-resolution) pixels, so it means the same region at every scale;
``auto`` picks the window of highest gradient energy (sum of ``|dx| + |dy|`` of the luma), found
with an integral image.  Text uses Pillow's default font, so no font file is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .bench import Scorer
from .errors import UsageError
from .metrics import evaluate, quantize

AUTO_PANEL = 192
"""Side in output pixels of the ``--crop auto`` window."""
MIN_PANEL = 128
"""Narrowest panel (px) the automatic zoom allows, so that the labels fit."""
MAX_COLUMNS = 5
GAP = 6
MARGIN = 4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
LABELS = {"alexsim": "AlexSim", "lpips": "LPIPS"}


@dataclass(frozen=True)
class Box:
    """A window in input pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def scaled(self, s: int) -> Box:
        return Box(self.x * s, self.y * s, self.w * s, self.h * s)

    def of(self, image: Tensor) -> Tensor:
        """This window of a ``(C, H, W)`` image."""
        return image[:, self.y : self.y + self.h, self.x : self.x + self.w]


@dataclass(frozen=True)
class Panel:
    """One tile of the grid: an RGB crop in 0..1 ``(3, h, w)`` and its label lines."""

    image: Tensor
    lines: tuple[str, ...]


def parse_crop(text: str) -> Box | None:
    """``"x,y,w,h"`` -> :class:`Box`; ``"auto"`` -> None."""
    if text.strip().lower() == "auto":
        return None
    words = text.replace(" ", "").split(",")
    if len(words) != 4 or not all(w.isdigit() for w in words) or int(words[2]) < 1 or int(words[3]) < 1:
        raise UsageError(f"--crop {text!r}: expected auto or x,y,w,h in input pixels (w, h >= 1), like 40,30,48,48")
    return Box(*(int(w) for w in words))


def check_box(box: Box, width: int, height: int, text: str) -> Box:
    """``box``, or a :class:`UsageError` when it leaves the ``width x height`` input."""
    if box.x + box.w > width or box.y + box.h > height:
        raise UsageError(f"--crop {text}: window {box.w}x{box.h} at ({box.x}, {box.y}) leaves the {width}x{height} input")
    return box


def auto_side(scale: int, width: int, height: int) -> tuple[int, int]:
    """The auto window's ``(w, h)``: about :data:`AUTO_PANEL` output pixels, within the input."""
    side = max(8, round(AUTO_PANEL / scale))
    return min(side, width), min(side, height)


def gradient_energy(image: Tensor) -> Tensor:
    """``|dx| + |dy|`` of the luma (BT.601 weights) of ``(C, H, W)``, ``(H, W)`` (zero on the far edges)."""
    luma = image.mean(0) if image.shape[0] != 3 else (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    energy = torch.zeros_like(luma, dtype=torch.float64)
    energy[:, :-1] += (luma[:, 1:] - luma[:, :-1]).abs()
    energy[:-1, :] += (luma[1:, :] - luma[:-1, :]).abs()
    return energy


def auto_crop(image: Tensor, w: int, h: int) -> Box:
    """The ``w x h`` window of ``image`` with the highest gradient energy (the first, top-left, of ties)."""
    energy = gradient_energy(image)
    integral = torch.nn.functional.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    best = int(torch.argmax(sums))
    return Box(best % sums.shape[1], best // sums.shape[1], w, h)


def _rgb(image: Tensor) -> Tensor:
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _figures(sr: Tensor, hr: Tensor, scale: int, score: Scorer | None) -> tuple[str, ...]:
    """The label lines of ``sr`` against ``hr``: PSNR, SSIM, then the scorer's metrics."""
    p, s = evaluate(sr, hr, scale)
    lines = [f"PSNR {float(p):.2f} dB", "SSIM " + (f"{float(s):.4f}" if math.isfinite(float(s)) else "-")]
    if score is not None:
        for name, value in score(sr, hr).items():
            lines.append(f"{LABELS[name]} " + (f"{value:.4f}" if math.isfinite(value) else "-"))
    return tuple(lines)


def make_panels(
    lr: Tensor,
    outputs: Sequence[tuple[str, Tensor]],
    box: Box,
    scale: int,
    hr: Tensor | None = None,
    score: Scorer | None = None,
) -> list[Panel]:
    """A panel per ``(name, output)`` (each ``scale`` times ``lr``), then the reference: the HR
    crop with ``hr``, else ``lr``'s crop enlarged by nearest.  ``box`` is in ``lr`` pixels."""
    out_box = box.scaled(scale)
    panels = []
    for name, sr in outputs:
        lines = (name, *(() if hr is None else _figures(sr, hr, scale, score)))
        panels.append(Panel(_rgb(out_box.of(sr)).clamp(0, 1), lines))
    if hr is not None:
        panels.append(Panel(_rgb(out_box.of(hr)), ("HR",)))
    else:
        near = box.of(lr).repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        panels.append(Panel(_rgb(near), ("input (nearest)",)))
    return panels


def auto_zoom(width: int) -> int:
    """The smallest integer zoom that makes a panel ``width`` px wide at least :data:`MIN_PANEL`."""
    return max(1, math.ceil(MIN_PANEL / width))


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` px."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def draw_grid(panels: Sequence[Panel], zoom: int) -> Image.Image:
    """The panels, each enlarged ``zoom`` times by nearest, in rows of up to :data:`MAX_COLUMNS`,
    their label lines under each in Pillow's default font."""
    font = ImageFont.load_default()
    line_h = int(font.getbbox("Ag")[3]) + 3
    label_h = MARGIN + line_h * max(len(p.lines) for p in panels)
    h, w = (side * zoom for side in panels[0].image.shape[-2:])
    cols = min(len(panels), MAX_COLUMNS)
    rows = math.ceil(len(panels) / cols)
    cell_w, cell_h = w + GAP, h + label_h + GAP
    grid = Image.new("RGB", (GAP + cols * cell_w, GAP + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, panel in enumerate(panels):
        left, top = GAP + (i % cols) * cell_w, GAP + (i // cols) * cell_h
        pixels = quantize(panel.image).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        grid.paste(Image.fromarray(pixels).resize((w, h), Image.Resampling.NEAREST), (left, top))
        for k, line in enumerate(panel.lines):
            draw.text((left, top + h + MARGIN + k * line_h), _fit(line, font, w), fill=INK, font=font)
    return grid
