"""The descriptor of a network ready to run, in the spirit of spandrel's ``ModelDescriptor``.

Everything downstream (engine, bench, CLI) talks to a :class:`LoadedModel` and never to a
family directly: it knows the scale, the size rules, which reduced precisions are safe, the
receptive-field radius the tiler needs, and it hides the family's input convention behind one
calling convention: **RGB in 0..1, shape (N, 3, H, W), float** in and the same at ``scale``
times the size out (not clamped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..color import rgb_to_ycbcr, ycbcr_to_rgb
from .registry import Arch


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``(N, C, H, W)`` at the bottom/right to multiples of ``multiple`` (reflect, or
    replicate when the image is too small to reflect).  The engine pads whole images with the
    same rule, so tiled and whole-image runs see the same borders."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if h > ph and w > pw else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def in_convention(forward: Callable[[Tensor], list[Tensor]], x: Tensor, convention: str) -> list[Tensor]:
    """Run ``forward`` (outputs in a family's :data:`~.registry.Convention`) on RGB 0..1 ``x``
    and return every output as RGB 0..1.

    ``rgb255`` nets see ``255 x`` and their outputs are divided by 255.  Y-only nets get the
    BT.601 luma; each output's chroma is the bicubic of the input's at that output's size.
    Colour conversions stay fp32 under reduced-precision autocast; outputs keep ``x``'s dtype.
    A list so that deeply supervised nets (several outputs) share the one implementation.
    """
    if convention == "rgb":
        return forward(x)
    if convention == "rgb255":
        return [y / 255.0 for y in forward(x * 255.0)]
    from ..resize import imresize

    device = x.device.type
    with torch.autocast(device, enabled=False):
        ycc = rgb_to_ycbcr(x.float())
    lumas = forward(ycc[:, :1].to(x.dtype))
    out = []
    with torch.autocast(device, enabled=False):
        for luma in lumas:
            chroma = imresize(ycc[:, 1:], size=tuple(luma.shape[-2:]))
            out.append(ycbcr_to_rgb(torch.cat([luma.float(), chroma], dim=1)).to(x.dtype))
    return out


@dataclass
class LoadedModel:
    """A network with the facts needed to run it.

    Attributes:
        name: model name (registry name, or the file name for ``--weights``).
        arch: the family descriptor.
        module: the network, in eval mode.
        scale: the scale this descriptor runs at.
        kwargs: the kwargs it was built with.
        source: where the weights came from (path, URL, ``"random"``, ``"none"``).
        sha256: hex digest of the weights file, when there was one.
        extra: anything else worth reporting (e.g. training metadata).
        precision_cost: measured Set5 PSNR loss in dB against fp32 at this scale, by reduced
            precision (``{"bf16": 0.004}``), from the manifest entry or the file's metadata
            (``benchmarks/precision_cost.py`` measures it); a precision missing is unmeasured.
    """

    name: str
    arch: Arch
    module: nn.Module
    scale: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "random"
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    precision_cost: Mapping[str, float] = field(default_factory=dict)

    @property
    def convention(self) -> str:
        return self.arch.convention

    @property
    def radius(self) -> int:
        """Receptive-field radius in input pixels (tiling overlap for exact seams)."""
        return self.arch.radius(self.kwargs, self.scale)

    @property
    def size_multiple(self) -> int:
        return self.arch.size_multiple(self.kwargs, self.scale)

    @property
    def supports_fp16(self) -> bool:
        """The family's fp16 flag: the fallback for a model with no measured fp16 cost."""
        return self.arch.fp16

    @property
    def supports_bf16(self) -> bool:
        """The family's bf16 flag: the fallback for a model with no measured bf16 cost."""
        return self.arch.bf16

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> LoadedModel:
        """Move the network (in place) and return self."""
        self.module.to(device)
        if memory_format is not None:
            self.module.to(memory_format=memory_format)
        return self

    def _net(self, x: Tensor) -> Tensor:
        if self.arch.multiscale:
            return self.module(x, self.scale)
        return self.module(x)

    def __call__(self, x: Tensor) -> Tensor:
        """Upscale a batch: RGB 0..1 ``(N, 3, H, W)`` -> RGB 0..1 ``(N, 3, sH, sW)``."""
        h, w = x.shape[-2:]
        y = in_convention(lambda t: [self._net(t)], pad_to_multiple(x, self.size_multiple), self.convention)[0]
        return y[..., : h * self.scale, : w * self.scale]
