"""DenseSR: the first seed paper's own network - a DenseNet trunk with transposed-conv
upsampling, trained on the high-pass residual.

Layers, in order (the paper's description):

* CBL: 5x5 conv, batch norm, LeakyReLU 0.1 (3 -> ``feats`` channels);
* Dense-14: a 14-layer DenseNet block without bottleneck layers; layer ``l`` is a CBL unit
  with a 3x3 kernel on the concatenation of every earlier output,
  ``x_l = CBL_l([x_0, x_1, ..., x_{l-1}])`` (Huang et al., DenseNet, Eq. 2), ``growth``
  channels each; the block outputs the whole concatenation, ``feats + 14 * growth`` channels;
* two transposed 3x3 convs of stride 1/2 (each x2, each with batch norm + LeakyReLU 0.1),
  so x4 in all (one per factor of two for x2 / x8);
* CBL to 3 channels: the predicted high-frequency image.

Output convention (what the trainer's ``highpass`` loss relies on): :meth:`DenseSR.forward`
returns the *full* image, ``residual + bicubic(x)``; :meth:`DenseSR.residual` returns the
predicted high-pass image alone, ``HR - bicubic(LR)`` being its target.  A residual loss is then
``criterion(forward(x) - bicubic(x), hr - bicubic(x))``.

The paper gives the layer types and about 1.17M parameters at x4, not every width; the widths
here (``feats`` 32, ``growth`` 16 -> 256 channels out of the dense block, transposed convs to 256
then 128) are chosen to reproduce that count (1.173M).  RGB 0..1.  Keys: ``head.{0,1}``,
``dense.{l}.{0,1}``, ``up.{j}.{0,1}``, ``tail.{0,1}``.  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import (
    RFLayer,
    conv,
    doublings,
    indices,
    layout_matcher,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

SLOPE = 0.1
"""LeakyReLU negative slope of every CBL unit."""


class CBL(nn.Sequential):
    """Conv, batch norm, LeakyReLU 0.1 (keys ``0`` conv, ``1`` bn); a transposed conv with
    stride 1/2 (x2) when ``up``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, up: bool = False) -> None:
        if up:
            layer: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, 2, kernel_size // 2, output_padding=1)
        else:
            layer = conv(in_ch, out_ch, kernel_size)
        super().__init__(layer, nn.BatchNorm2d(out_ch), nn.LeakyReLU(SLOPE))


def up_widths(dense_out: int, scale: int) -> tuple[int, ...]:
    """Default transposed-conv widths: the dense block's width, halved at the last one."""
    return (dense_out,) * (doublings(scale, "DenseSR") - 1) + (dense_out // 2,)


class DenseSR(nn.Module):
    """DenseSR (first seed paper).

    Args:
        scale: 2, 4 (the paper) or 8: one stride-1/2 transposed conv per factor of two.
        feats: channels of the first CBL (32).
        growth: DenseNet growth rate (16).
        layers: dense layers (14).
        up: widths of the transposed convs (default: :func:`up_widths`).
    """

    def __init__(
        self, scale: int = 4, feats: int = 32, growth: int = 16, layers: int = 14, up: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.scale = scale
        dense_out = feats + layers * growth
        widths = tuple(up) if up is not None else up_widths(dense_out, scale)
        steps = doublings(scale, "DenseSR")
        if len(widths) != steps:
            raise ValueError(f"x{scale} needs {steps} transposed-conv widths, got {len(widths)}")
        self.head = CBL(3, feats, 5)
        self.dense = nn.ModuleList(CBL(feats + i * growth, growth, 3) for i in range(layers))
        self.up = nn.Sequential(*(CBL(a, b, 3, up=True) for a, b in zip((dense_out, *widths[:-1]), widths)))
        self.tail = CBL(widths[-1], 3, 5)
        # zero-initialised last batch-norm scale (Goyal et al. 2017): the net starts from the
        # bicubic image instead of a unit-variance random residual
        nn.init.zeros_(self.tail[1].weight)

    def residual(self, x: Tensor) -> Tensor:
        """The predicted high-frequency image ``HR - bicubic(x)``."""
        h = self.head(x)
        for layer in self.dense:
            h = torch.cat([h, layer(h)], dim=1)
        return self.tail(self.up(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + imresize(x, scale=self.scale)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    chain: list[RFLayer] = [("conv", 2 + kwargs.get("layers", 14))]  # 5x5 CBL, the 3x3 dense layers
    chain += [("tconv", 3, 2, 1)] * doublings(scale, "DenseSR")
    trunk = receptive_radius([*chain, ("conv", 2)], scale)  # 5x5 CBL at HR
    return max(trunk, receptive_radius([("cubic", scale)], scale))


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    ups = indices(sd, "up.", "0.weight")
    kwargs = {
        "feats": shape(sd, "head.0.weight")[0],
        "growth": shape(sd, "dense.0.0.weight")[0],
        "layers": len(indices(sd, "dense.", "0.weight")),
        "up": tuple(shape(sd, f"up.{j}.0.weight")[1] for j in ups),
    }
    return kwargs, 2 ** len(ups)


register_arch(
    Arch(
        name="densesr",
        build=DenseSR,
        convention="rgb",
        radius=_radius,
        paper="first seed paper: DenseNet-14 SR with high-pass residual loss",
        fp16=True,
        matches=layout_matcher(("head.0.weight", "dense.0.0.weight", "up.0.0.weight", "tail.0.weight"), DenseSR, _infer),
        infer_kwargs=_infer,
        default_kwargs={"feats": 32, "growth": 16, "layers": 14},
        test_configs=(({"feats": 4, "growth": 4, "layers": 3}, 4),),
    )
)

register_model(
    ModelSpec(
        name="densesr",
        arch="densesr",
        kwargs={"feats": 32, "growth": 16, "layers": 14},
        scales=(2, 4, 8),
        description="DenseSR: CBL + Dense-14 + two stride-1/2 transposed convs, high-pass residual loss (first seed paper); "
        "in-house x4 weights (recipes/inhouse/targets.toml)",
    )
)
