"""SPAN: Wan, Yu, Wang, Jin, Xie, Wang, Yang, Chen, "Swift Parameter-free Attention Network for
Efficient Super-Resolution", CVPR Workshops (NTIRE) 2024.

A 3x3 head, ``num_blocks`` swift parameter-free attention blocks (SPAB, Fig. 2: three 3x3
convs with SiLU between them, then ``(h + x) * (sigmoid(h) - 0.5)``, the attention taken from
the features themselves, no parameters), a 3x3 conv, a 1x1 conv fusing four feature maps
(head, the last block's output after that conv, the first block's output, the last block's
first conv) and a 3x3 conv + pixel shuffle.  Every 3x3 conv is trained re-parameterised
(Sec. 3.3, ``Conv3XC``): a 1x1 skip plus a 1x1 -> 3x3 -> 1x1 chain at double width; at
inference the chain and the skip collapse into one 3x3 conv (``eval_conv``).  The input is
``(x - DIV2K mean) * 255``; the output is RGB in 0..1.  The published network has 6 blocks;
other counts are read off the keys and wired the same way (first block, last block).

Key layout = the authors' ``basicsr/archs/span_arch.py`` (hongyuanyu/SPAN): ``conv_1``,
``block_{1..n}.c{1,2,3}_r``, ``conv_2`` (each ``Conv3XC``: ``sk``, ``conv.{0,1,2}``,
``eval_conv``), ``conv_cat``, ``upsampler.0``.  Checkpoints always hold both forms (the
``eval_conv`` weights are a parameter); as in the published forward, inference recomputes
the fused conv from the branches.  Community trainers add a ``no_norm`` buffer to mark models
trained without the mean subtraction and x255 (``norm=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import DIV2K_MEAN, conv, has, indices, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model


class Conv3XC(nn.Module):
    """A re-parameterisable 3x3 conv (Wan et al. 2024, Sec. 3.3): ``sk(x)`` (1x1) plus
    ``1x1 -> 3x3 -> 1x1`` at ``gain`` times the width on the zero-padded input; in eval mode
    the same function as one 3x3 conv whose weights are folded from the branches."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2) -> None:
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * gain, 1), nn.Conv2d(c_in * gain, c_out * gain, 3), nn.Conv2d(c_out * gain, c_out, 1)
        )
        self.eval_conv = conv(c_in, c_out)
        self.eval_conv.requires_grad_(False)

    def fused(self) -> tuple[Tensor, Tensor]:
        """The 3x3 weight and bias equal to the branches: the chain's taps composed
        (``w3 . w2 . w1``), biases pushed through, the 1x1 skip added at the centre tap."""
        (w1, b1), (w2, b2), (w3, b3) = ((c.weight, c.bias) for c in self.conv)
        w12 = torch.einsum("mjhw,jc->mchw", w2, w1[:, :, 0, 0])
        b12 = b2 + torch.einsum("mjhw,j->m", w2, b1)
        weight = torch.einsum("om,mchw->ochw", w3[:, :, 0, 0], w12) + F.pad(self.sk.weight, (1, 1, 1, 1))
        bias = b3 + w3[:, :, 0, 0] @ b12 + self.sk.bias
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        weight, bias = self.fused()
        return F.conv2d(x, weight, bias, padding=1)


class SPAB(nn.Module):
    """Swift parameter-free attention block (Fig. 2): returns the block output and the first
    conv's output (which the last block hands to the fusion conv)."""

    def __init__(self, feats: int) -> None:
        super().__init__()
        self.c1_r = Conv3XC(feats, feats)
        self.c2_r = Conv3XC(feats, feats)
        self.c3_r = Conv3XC(feats, feats)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    """SPAN (Wan et al. 2024, Fig. 2); RGB 0..1 in and out."""

    def __init__(self, scale: int = 4, feature_channels: int = 48, num_blocks: int = 6, norm: bool = True) -> None:
        super().__init__()
        self.conv_1 = Conv3XC(3, feature_channels)
        for i in range(1, num_blocks + 1):
            self.add_module(f"block_{i}", SPAB(feature_channels))
        self.conv_cat = nn.Conv2d(4 * feature_channels, feature_channels, 1)
        self.conv_2 = Conv3XC(feature_channels, feature_channels)
        self.upsampler = nn.Sequential(conv(feature_channels, 3 * scale * scale), nn.PixelShuffle(scale))
        self.num_blocks = num_blocks
        self.norm = norm
        if not norm:  # the marker community trainers store (its value is unused)
            self.register_buffer("no_norm", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm:
            x = (x - torch.tensor(DIV2K_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)) * 255.0
        head = self.conv_1(x)
        out, first, last1 = head, head, head
        for i in range(1, self.num_blocks + 1):
            out, last1 = getattr(self, f"block_{i}")(out)
            if i == 1:
                first = out
        fused = self.conv_cat(torch.cat([head, self.conv_2(out), first, last1], 1))
        return self.upsampler(fused)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # head, three 3x3 per block, conv_2, upsampler conv (all at LR), then the shuffle
    lr = 1 + 3 * kwargs.get("num_blocks", 6) + 1 + 1
    return receptive_radius([("conv", lr), ("up", scale)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return has(sd, "conv_1.sk.weight", "conv_1.eval_conv.weight", "block_1.c1_r.sk.weight", "conv_cat.weight",
               "conv_2.sk.weight", "upsampler.0.weight")


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "conv_1.sk.weight")[0]
    kwargs = {
        "feature_channels": feats,
        "num_blocks": len(indices(sd, "block_", "c1_r.sk.weight")),
        "norm": "no_norm" not in sd,
    }
    return kwargs, shuffle_scale(shape(sd, "upsampler.0.weight")[0], 3)


ARCH = register_arch(
    Arch(
        name="span",
        build=SPAN,
        convention="rgb",
        radius=_radius,
        paper="Wan et al., SPAN, CVPRW 2024",
        fp16=True,
        bf16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"feature_channels": 48, "num_blocks": 6, "norm": True},
        test_configs=(
            ({"feature_channels": 8, "num_blocks": 2}, 4),
            ({"feature_channels": 4, "num_blocks": 1, "norm": False}, 2),
        ),
    )
)

register_model(
    ModelSpec(
        name="span",
        arch="span",
        kwargs={"feature_channels": 48, "num_blocks": 6},
        scales=(2, 4),
        description="SPAN: 48 channels, 6 parameter-free attention blocks (Wan et al. 2024)",
        trainable_only=True,
    )
)
