"""BTSRN: Fan, Shi, Yu, Liu, Han, Yu, Wang, Wang, Huang, "Balanced Two-Stage Residual Networks
for Image Super-Resolution", CVPR Workshops (NTIRE) 2017.

Two stages of residual blocks: an LR stage of 6 blocks on the LR features, the
up-sampling layers, an HR stage of 4 blocks at the output resolution.

* PConv residual block (the "projected convolution" variant the paper keeps):
  ``x + conv3x3(act(conv1x1(act(x))))``, the 1x1 projecting 128 -> 64 channels and the 3x3
  going back to 128 - two layers per block, pre-activated, no batch norm;
* up-sampling: the element-wise sum of the nearest-neighbour upsampled features and a
  transposed conv (kernel = stride = factor) of them, ``up(x) = NN(x) + deconv(act(x))``; x4 is
  two x2 steps with one PConv block between them, as in the authors' release
  (github.com/ychfan/sr_ntire2017, ``model_resnet_up.py``);
* a 1x1 conv from RGB to 128 channels at the input and from 128 to RGB at the output.

The activation is LeakyReLU; its slope was not available to us, 0.2 is assumed.  RGB 0..1.
No parameter count from the paper was available to check; the layer-by-layer count is 1.04M
at x4.
Keys: ``entry``, ``lr_stage.{i}.{project,filter}``, ``up.{j}.deconv``, ``up_blocks.{j}``,
``hr_stage.{i}``, ``exit``.  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    RFLayer,
    conv,
    he_init_,
    indices,
    layout_matcher,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

SLOPE = 0.2
"""Assumed LeakyReLU slope."""


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


def _factors(scale: int) -> list[int]:
    if scale == 4:
        return [2, 2]
    if scale in (2, 3):
        return [scale]
    raise ValueError(f"BTSRN upscales x2, x3 or x4, not x{scale}")


class PConvBlock(nn.Module):
    """``x + filter(act(project(act(x))))``: 1x1 projection then 3x3 conv."""

    def __init__(self, feats: int, bottleneck: int) -> None:
        super().__init__()
        self.project = conv(feats, bottleneck, 1)
        self.filter = conv(bottleneck, feats, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.filter(_lrelu(self.project(_lrelu(x))))


class UpStep(nn.Module):
    """``NN(x) + deconv(act(x))`` by ``factor``."""

    def __init__(self, feats: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.deconv = nn.ConvTranspose2d(feats, feats, factor, stride=factor)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="nearest") + self.deconv(_lrelu(x))


class BTSRN(nn.Module):
    """BTSRN (Fan et al. 2017).

    Args:
        scale: 2, 3 or 4.
        lr_blocks: PConv blocks of the LR stage (6).
        hr_blocks: PConv blocks of the HR stage (4).
        feats: channels (128).
        bottleneck: channels of the 1x1 projection (64).
    """

    def __init__(
        self, scale: int = 4, lr_blocks: int = 6, hr_blocks: int = 4, feats: int = 128, bottleneck: int = 64
    ) -> None:
        super().__init__()
        factors = _factors(scale)
        self.entry = conv(3, feats, 1)
        self.lr_stage = nn.Sequential(*(PConvBlock(feats, bottleneck) for _ in range(lr_blocks)))
        self.up = nn.ModuleList(UpStep(feats, f) for f in factors)
        self.up_blocks = nn.ModuleList(PConvBlock(feats, bottleneck) for _ in factors[1:])
        self.hr_stage = nn.Sequential(*(PConvBlock(feats, bottleneck) for _ in range(hr_blocks)))
        self.exit = conv(feats, 3, 1)
        he_init_(self, SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lr_stage(self.entry(x))
        for i, step in enumerate(self.up):
            h = step(h)
            if i < len(self.up_blocks):
                h = self.up_blocks[i](h)
        return self.exit(_lrelu(self.hr_stage(h)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    chain: list[RFLayer] = [("conv", kwargs.get("lr_blocks", 6))]  # one 3x3 per block (1x1s add nothing)
    factors = _factors(scale)
    for i, f in enumerate(factors):
        chain.append(("up", f))  # NN and kernel = stride deconv both read pixel q // f
        if i < len(factors) - 1:
            chain.append(("conv", 1))
    return receptive_radius([*chain, ("conv", kwargs.get("hr_blocks", 4))], scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    factors = [shape(sd, f"up.{j}.deconv.weight")[-1] for j in indices(sd, "up.", "deconv.weight")]
    kwargs = {
        "lr_blocks": len(indices(sd, "lr_stage.", "project.weight")),
        "hr_blocks": len(indices(sd, "hr_stage.", "project.weight")),
        "feats": shape(sd, "entry.weight")[0],
        "bottleneck": shape(sd, "lr_stage.0.project.weight")[0],
    }
    scale = 1
    for f in factors:
        scale *= f
    return kwargs, scale


register_arch(
    Arch(
        name="btsrn",
        build=BTSRN,
        convention="rgb",
        radius=_radius,
        paper="Fan et al., BTSRN, CVPRW 2017",
        fp16=True,
        matches=layout_matcher(("entry.weight", "lr_stage.0.project.weight", "up.0.deconv.weight"), BTSRN, _infer),
        infer_kwargs=_infer,
        default_kwargs={"lr_blocks": 6, "hr_blocks": 4, "feats": 128, "bottleneck": 64},
        test_configs=(({"lr_blocks": 2, "hr_blocks": 1, "feats": 8, "bottleneck": 4}, 3),),
    )
)

register_model(
    ModelSpec(
        name="btsrn",
        arch="btsrn",
        kwargs={"lr_blocks": 6, "hr_blocks": 4, "feats": 128, "bottleneck": 64},
        scales=(2, 3, 4),
        description="BTSRN: LR stage of 6 PConv blocks, NN + deconv upsampling, HR stage of 4 (Fan et al. 2017); "
        "in-house x4 weights (recipes/inhouse/targets.toml)",
    )
)
