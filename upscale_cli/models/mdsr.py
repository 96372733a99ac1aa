"""MDSR: Lim, Son, Kim, Nah, Lee, "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPR Workshops (NTIRE) 2017, Sec. 3.2 (multi-scale model, Fig. 5).

One network for x2, x3 and x4: a shared head conv; scale-specific pre-processing modules (two
residual blocks with 5x5 kernels per scale, to reduce the variance between scales); a shared
body of ``n_resblocks`` residual blocks (no batch norm, Fig. 2c) closed by a conv and a global
skip; scale-specific sub-pixel upsamplers; a shared conv to RGB.  The DIV2K mean is removed and
restored by frozen 1x1 convs; the network works in 0..255.  ``forward(x, scale)``.

Key layout = the official EDSR-PyTorch ``src/model/mdsr.py``: ``sub_mean``, ``add_mean``,
``head.0``, ``pre_process.{k}.{0,1}.body.{0,2}``, ``body.{i}.body.{0,2}``, ``body.{n}``,
``upsample.{k}.{0,2,...}``, ``tail.0`` (``k`` indexes the scales, x2/x3/x4).  Paper: 80 blocks,
64 channels, 8.0M parameters.  No weights with a verified hash here (trainable only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .layers import (
    MeanShift,
    ResBlock,
    Upsampler,
    conv,
    indices,
    layout_matcher,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

SCALES = (2, 3, 4)


class MDSR(nn.Module):
    """MDSR (Lim et al. 2017, Fig. 5); RGB in 0..255.

    Args:
        scale: ignored (every scale's branch is built); kept for the registry's ``build``.
        n_resblocks: shared residual blocks (80; 16 for the baseline).
        n_feats: channels (64).
        scales: the scales, in the order of the ``pre_process``/``upsample`` indices.
    """

    def __init__(self, scale: int = 2, n_resblocks: int = 80, n_feats: int = 64, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.sub_mean = MeanShift(255.0, sign=-1)
        self.add_mean = MeanShift(255.0, sign=+1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.pre_process = nn.ModuleList(
            nn.Sequential(ResBlock(n_feats, 5), ResBlock(n_feats, 5)) for _ in self.scales
        )
        self.body = nn.Sequential(*(ResBlock(n_feats) for _ in range(n_resblocks)), conv(n_feats, n_feats))
        self.upsample = nn.ModuleList(Upsampler(s, n_feats) for s in self.scales)
        self.tail = nn.Sequential(conv(n_feats, 3))

    def forward(self, x: Tensor, scale: int) -> Tensor:
        if scale not in self.scales:
            raise ValueError(f"this MDSR has branches for x{list(self.scales)}, not x{scale}")
        k = self.scales.index(scale)
        h = self.pre_process[k](self.head(self.sub_mean(x)))
        h = self.body(h) + h
        return self.add_mean(self.tail(self.upsample[k](h)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # head, 2 blocks of two 5x5 convs, the body's blocks and closing conv (LR), upsampler, tail
    lr = 1 + 2 * 2 * 2 + 2 * kwargs.get("n_resblocks", 80) + 1
    return receptive_radius([("conv", lr), *Upsampler.layout(scale), ("conv", 1)], scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "head.0.weight")[0]
    scales = [Upsampler.scale_of(sd, f"upsample.{k}.", feats) for k in indices(sd, "upsample.", "weight")]
    if None in scales:
        raise ValueError("an upsampler of unknown scale")
    return {"n_resblocks": len(indices(sd, "body.", "body.0.weight")), "n_feats": feats, "scales": tuple(scales)}, None


register_arch(
    Arch(
        name="mdsr",
        build=MDSR,
        convention="rgb255",
        radius=_radius,
        paper="Lim et al., MDSR (EDSR paper, Sec. 3.2), CVPRW 2017",
        multiscale=True,
        fp16=True,
        matches=layout_matcher(("sub_mean.weight", "pre_process.0.0.body.0.weight", "upsample.0.0.weight"), MDSR, _infer),
        infer_kwargs=_infer,
        default_kwargs={"n_resblocks": 80, "n_feats": 64},
        test_configs=(({"n_resblocks": 1, "n_feats": 8}, 3),),
    )
)

register_model(
    ModelSpec(
        name="mdsr",
        arch="mdsr",
        kwargs={"n_resblocks": 80, "n_feats": 64},
        scales=SCALES,
        description="MDSR: one EDSR for x2/x3/x4 with scale-specific heads and upsamplers (Lim et al. 2017); trainable, no public weights",
        trainable_only=True,
    )
)
register_model(
    ModelSpec(
        name="mdsr-baseline",
        arch="mdsr",
        kwargs={"n_resblocks": 16, "n_feats": 64},
        scales=SCALES,
        description="MDSR baseline: 16 shared residual blocks (EDSR-PyTorch mdsr_baseline); trainable, no public weights",
        trainable_only=True,
    )
)
