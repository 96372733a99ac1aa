"""SRResNet: Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative
Adversarial Network", CVPR 2017 (Sec. 2.2, Fig. 4), in BasicSR's MSRResNet form.

MSRResNet ("modified SRResNet", BasicSR ``srresnet_arch.py``) keeps the SRResNet trunk but drops
batch norm from the residual blocks (as EDSR, Lim et al. 2017, Sec. 3.1) and learns a residual
over the bilinear upscaled input:

``f = lrelu(conv_first(x))``, ``f = body(f)`` (``num_block`` blocks ``f + conv2(relu(conv1(f)))``),
sub-pixel upsampling (Shi et al. 2016, Eq. 4: ``upconv1`` to ``s^2 * num_feat`` + PixelShuffle(s)
for x2/x3, ``upconv1``/``upconv2`` to ``4 * num_feat`` + PixelShuffle(2) twice for x4, each with
LeakyReLU 0.1), ``y = conv_last(lrelu(conv_hr(f))) + bilinear(x)``.

RGB in 0..1.  Keys: ``conv_first``, ``body.{i}.conv1``, ``body.{i}.conv2``, ``upconv1``,
``upconv2`` (x4), ``conv_hr``, ``conv_last``.  No public weights with a verifiable hash here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, has, indices, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.1)


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))`` (BasicSR ``ResidualBlockNoBN``, residual scale 1)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = conv(num_feat, num_feat)
        self.conv2 = conv(num_feat, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """Modified SRResNet for x2, x3, x4; RGB 0..1 in and out."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 16) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"SRResNet runs at x2, x3, x4, not x{scale}")
        self.scale = scale
        self.conv_first = conv(3, num_feat)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block)))
        r = 2 if scale == 4 else scale
        self.upconv1 = conv(num_feat, num_feat * r * r)
        if scale == 4:
            self.upconv2 = conv(num_feat, num_feat * 4)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.conv_hr = conv(num_feat, num_feat)
        self.conv_last = conv(num_feat, 3)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.body(_lrelu(self.conv_first(x)))
        feat = _lrelu(self.pixel_shuffle(self.upconv1(feat)))
        if self.scale == 4:
            feat = _lrelu(self.pixel_shuffle(self.upconv2(feat)))
        out = self.conv_last(_lrelu(self.conv_hr(feat)))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    lr = 1 + 2 * kwargs.get("num_block", 16) + 1  # conv_first, the blocks, upconv1
    ups = [("up", 2), ("conv", 1), ("up", 2)] if scale == 4 else [("up", scale)]
    trunk = receptive_radius([("conv", lr), *ups, ("conv", 2)], scale)  # conv_hr, conv_last
    return max(trunk, receptive_radius([("linear", scale)], scale))


def _matches(sd: Mapping[str, Tensor]) -> bool:
    keys = ("conv_first", "body.0.conv1", "body.0.conv2", "upconv1", "conv_hr")
    return has(sd, *(f"{k}.weight" for k in keys))


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    num_feat = shape(sd, "conv_first.weight")[0]
    kwargs = {"num_feat": num_feat, "num_block": len(indices(sd, "body.", "conv1.weight"))}
    scale = 4 if "upconv2.weight" in sd else shuffle_scale(shape(sd, "upconv1.weight")[0], num_feat)
    return kwargs, scale


ARCH = register_arch(
    Arch(
        name="srresnet",
        build=MSRResNet,
        convention="rgb",
        radius=_radius,
        paper="Ledig et al., SRResNet, CVPR 2017 (BasicSR MSRResNet)",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"num_feat": 64, "num_block": 16},
        test_configs=tuple(({"num_feat": 8, "num_block": 2}, s) for s in (2, 3, 4)),
    )
)

register_model(
    ModelSpec(
        name="srresnet",
        arch="srresnet",
        kwargs={"num_feat": 64, "num_block": 16},
        scales=(2, 3, 4),
        aliases=("msrresnet",),
        description="SRResNet without batch norm (BasicSR MSRResNet), 16 blocks, 64 channels (Ledig et al. 2017)",
        trainable_only=True,
    )
)
