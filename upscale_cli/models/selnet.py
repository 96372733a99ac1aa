"""SelNet: Choi, Kim, "A Deep Convolutional Neural Network with Selection Units for
Super-Resolution", CVPR Workshops (NTIRE) 2017.

Selection unit: ReLU read as an identity times an on/off switch, with the
switch learned: ``SU(x) = x * sigmoid(conv1x1(relu(x)))`` (the selection module is ReLU, 1x1
conv, sigmoid).  SelNet on the LR Y channel: 22 conv layers of 64 3x3
filters - the first 21 each followed by a selection unit, identity skips over every two layers
(residual units) - the last conv producing ``scale^2`` channels for a sub-pixel layer
(Shi et al. 2016), and the bicubic-upscaled input added (residual learning).

No parameter count from the paper was available to check; the layer-by-layer count is 0.84M
at x4.
Y channel, 0..1.  Keys: ``entry.conv``, ``entry.select``, ``units.{i}.{0,1}.{conv,select}``,
``to_subpixel``.  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import (
    conv,
    he_init_,
    indices,
    layout_matcher,
    receptive_radius,
    shape,
    shuffle_scale,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


class SelectionLayer(nn.Module):
    """A 3x3 conv followed by a selection unit ``h * sigmoid(select(relu(h)))``."""

    def __init__(self, in_ch: int, feats: int) -> None:
        super().__init__()
        self.conv = conv(in_ch, feats)
        self.select = conv(feats, feats, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return h * torch.sigmoid(self.select(torch.relu(h)))


class SelNet(nn.Module):
    """SelNet (Choi and Kim 2017).

    Args:
        scale: upscaling factor (sub-pixel: any integer >= 2).
        units: residual units of two selection layers (10, for 22 conv layers in all).
        feats: filters (64).
    """

    def __init__(self, scale: int = 4, units: int = 10, feats: int = 64) -> None:
        super().__init__()
        self.scale = scale
        self.entry = SelectionLayer(1, feats)
        self.units = nn.ModuleList(
            nn.Sequential(SelectionLayer(feats, feats), SelectionLayer(feats, feats)) for _ in range(units)
        )
        self.to_subpixel = conv(feats, scale * scale)
        self.shuffle = nn.PixelShuffle(scale)
        he_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        h = self.entry(x)
        for unit in self.units:
            h = h + unit(h)
        return self.shuffle(self.to_subpixel(h)) + imresize(x, scale=self.scale)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    trunk = receptive_radius([("conv", 1 + 2 * kwargs.get("units", 10) + 1), ("up", scale)], scale)
    return max(trunk, receptive_radius([("cubic", scale)], scale))


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {
        "units": len(indices(sd, "units.", "0.conv.weight")),
        "feats": shape(sd, "entry.conv.weight")[0],
    }, shuffle_scale(shape(sd, "to_subpixel.weight")[0], 1)


register_arch(
    Arch(
        name="selnet",
        build=SelNet,
        convention="y",
        radius=_radius,
        paper="Choi and Kim, SelNet, CVPRW 2017",
        fp16=True,
        matches=layout_matcher(("entry.select.weight", "units.0.0.select.weight", "to_subpixel.weight"), SelNet, _infer),
        infer_kwargs=_infer,
        default_kwargs={"units": 10, "feats": 64},
        test_configs=(({"units": 2, "feats": 8}, 3),),
    )
)

register_model(
    ModelSpec(
        name="selnet",
        arch="selnet",
        kwargs={"units": 10, "feats": 64},
        scales=(2, 3, 4),
        description="SelNet: 22 conv layers with selection units, sub-pixel output (Choi and Kim 2017); "
        "in-house x2 weights (recipes/inhouse/targets.toml)",
    )
)
