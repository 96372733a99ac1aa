"""DRRN: Tai, Yang, Liu, "Image Super-Resolution via Deep Recursive Residual Network",
CVPR 2017.

On the bicubic-interpolated image ``x`` (Fig. 2d): ``B`` recursive blocks, each a conv
``H_0 = f_in(.)`` followed by ``U`` residual units that share ONE pair of conv weights across
the recursions and all add the block's own input (the multi-path structure):
``H_u = F(H_{u-1}, W) + H_0``; then a conv to one channel and the global residual
``y = x + f_rec(H_U)``.  Depth ``d = (1 + 2U)B + 1``: B1U9 is 20 layers (the
default here), B1U25 the 52-layer model of the paper's tables; 128 filters of 3x3.

Every conv is pre-activated BN-ReLU-conv (after He et al.'s identity mappings),
exactly as the authors' Caffe definitions (``DRRN_B1U9_20C128_train.prototxt``): the
convolution weights are shared across recursions, each recursion keeps its own batch-norm.
The paper's parameter count (297K for every B1 model) counts the convolutions only.

Y channel, 0..1.  Keys: ``blocks.{b}.entry.{0: bn, 2: conv}``, ``blocks.{b}.conv_a``,
``blocks.{b}.conv_b``, ``blocks.{b}.norms.{u}.{0,1}``, ``exit.{0,2}``.  No public weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


def pre_activated(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Sequential:
    """BN-ReLU-conv (keys ``0`` bn, ``2`` conv): the pre-activation unit of DRRN and MemNet."""
    return nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), conv(in_ch, out_ch, kernel_size))


class RecursiveBlock(nn.Module):
    """``H_0 = entry(x)``, then ``U`` times ``H_u = conv_b(act(conv_a(act(H_{u-1})))) + H_0``
    with shared ``conv_a``/``conv_b`` and a BN pair per recursion."""

    def __init__(self, in_ch: int, feats: int, units: int) -> None:
        super().__init__()
        self.entry = pre_activated(in_ch, feats)
        self.conv_a = conv(feats, feats)
        self.conv_b = conv(feats, feats)
        self.norms = nn.ModuleList(
            nn.ModuleList([nn.BatchNorm2d(feats), nn.BatchNorm2d(feats)]) for _ in range(units)
        )

    def forward(self, x: Tensor) -> Tensor:
        h0 = self.entry(x)
        h = h0
        for bn_a, bn_b in self.norms:  # type: ignore[misc]
            h = self.conv_b(torch.relu(bn_b(self.conv_a(torch.relu(bn_a(h)))))) + h0
        return h


class DRRN(nn.Module):
    """DRRN (Tai et al. 2017, Fig. 2d): ``y = x_ilr + exit(blocks(x_ilr))``.

    Args:
        scale: upscaling factor (the weights serve every scale).
        blocks: ``B``, recursive blocks (1).
        units: ``U``, residual units per block (9 for the 20-layer model, 25 for 52 layers).
        feats: filters per layer (128).
    """

    def __init__(self, scale: int = 2, blocks: int = 1, units: int = 9, feats: int = 128) -> None:
        super().__init__()
        self.scale = scale
        self.blocks = nn.Sequential(*(RecursiveBlock(1 if b == 0 else feats, feats, units) for b in range(blocks)))
        self.exit = pre_activated(feats, 1)
        he_init_(self)  # the "msra" filler of the authors' prototxt
        # ... except the last conv, zero so that training starts from the bicubic image: on
        # batch-normalised features a He-initialised conv adds a residual of standard deviation ~1.4
        nn.init.zeros_(self.exit[2].weight)

    def forward(self, x: Tensor) -> Tensor:
        ilr = imresize(x, scale=self.scale)
        return ilr + self.exit(self.blocks(ilr))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    depth = (1 + 2 * kwargs.get("units", 9)) * kwargs.get("blocks", 1) + 1
    return ilr_radius(depth, scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {
        "blocks": len(indices(sd, "blocks.", "conv_a.weight")),
        "units": len(indices(sd, "blocks.0.norms.", "0.weight")),
        "feats": shape(sd, "blocks.0.conv_a.weight")[0],
    }, None


register_arch(
    Arch(
        name="drrn",
        build=DRRN,
        convention="y",
        radius=_radius,
        paper="Tai et al., DRRN, CVPR 2017",
        fp16=True,
        matches=layout_matcher(("blocks.0.entry.2.weight", "blocks.0.conv_a.weight", "exit.2.weight"), DRRN, _infer),
        infer_kwargs=_infer,
        default_kwargs={"blocks": 1, "units": 9, "feats": 128},
    )
)

register_model(
    ModelSpec(
        name="drrn",
        arch="drrn",
        kwargs={"blocks": 1, "units": 9, "feats": 128},
        scales=(2, 3, 4),
        aliases=("drrn-b1u9",),
        description="DRRN B1U9 (20 layers): recursive residual units with shared weights (Tai et al. 2017); trainable, no public weights",
        trainable_only=True,
    )
)
register_model(
    ModelSpec(
        name="drrn-b1u25",
        arch="drrn",
        kwargs={"blocks": 1, "units": 25, "feats": 128},
        scales=(2, 3, 4),
        description="DRRN B1U25 (52 layers), the paper's best model (Tai et al. 2017); trainable, no public weights",
        trainable_only=True,
    )
)
