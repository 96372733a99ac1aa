"""EDSR: Lim, Son, Kim, Nah, Lee, "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPR Workshops (NTIRE) 2017.

Single-scale EDSR (Fig. 3): a 3x3 head conv, ``n_resblocks`` residual blocks without batch norm
(Fig. 2c) with constant residual scaling (Sec. 3.2: 0.1 for the 256-channel model), a 3x3 conv
closing the body, a global skip, the sub-pixel upsampler and a 3x3 conv to RGB.  The DIV2K
mean is removed and restored by frozen 1x1 convs; the network works in 0..255.

Key layout = the official EDSR-PyTorch (``src/model/edsr.py``): ``sub_mean``, ``add_mean``,
``head.0``, ``body.{i}.body.{0,2}``, ``body.{n}``, ``tail.0.{0,2,...}``, ``tail.1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .layers import (
    MeanShiftNet,
    ResBlock,
    Upsampler,
    conv,
    has,
    indices,
    mean_shift_kwargs,
    receptive_radius,
)
from .registry import Arch, ModelSpec, register_arch, register_model


class EDSR(MeanShiftNet):
    """EDSR / EDSR-baseline (Lim et al. 2017, Fig. 3); input and output RGB in 0..255."""

    def __init__(
        self,
        scale: int = 2,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
    ) -> None:
        super().__init__(rgb_range)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(
            *(ResBlock(n_feats, res_scale=res_scale) for _ in range(n_resblocks)), conv(n_feats, n_feats)
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, 3))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # head conv, two 3x3 per block, body conv (all at LR), the upsampler, the last conv at HR
    lr = 1 + 2 * kwargs.get("n_resblocks", 16) + 1
    return receptive_radius([("conv", lr), *Upsampler.layout(scale), ("conv", 1)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return (
        has(sd, "sub_mean.weight", "head.0.weight", "body.0.body.0.weight", "body.0.body.2.weight", "tail.1.weight")
        and "body.0.body.3.conv_du.0.weight" not in sd  # RCAN's channel attention
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    kwargs, scale = mean_shift_kwargs(sd)
    kwargs["n_resblocks"] = len(indices(sd, "body.", "body.0.weight"))
    # Residual scaling is not stored in the weights; the paper uses 0.1 for its wide model.
    kwargs["res_scale"] = 0.1 if kwargs["n_feats"] >= 256 else 1.0
    return kwargs, scale


ARCH = register_arch(
    Arch(
        name="edsr",
        build=EDSR,
        convention="rgb255",
        radius=_radius,
        paper="Lim et al., EDSR, CVPRW 2017",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
        test_configs=tuple(({"n_resblocks": 2, "n_feats": 8}, s) for s in (2, 3, 4)),
    )
)

register_model(
    ModelSpec(
        name="edsr-baseline",
        arch="edsr",
        kwargs={"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
        scales=(2, 3, 4),
        description="EDSR baseline: 16 residual blocks, 64 channels (Lim et al. 2017)",
    )
)
register_model(
    ModelSpec(
        name="edsr-baseline-291",
        arch="edsr",
        kwargs={"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
        scales=(2,),
        description="EDSR baseline (Lim et al. 2017) x2, in-house weights trained on T91 + BSD200, "
        "shipped in the package (recipes/inhouse/targets.toml)",
    )
)
register_model(
    ModelSpec(
        name="edsr",
        arch="edsr",
        kwargs={"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1},
        scales=(2, 3, 4),
        description="EDSR: 32 residual blocks, 256 channels, residual scaling 0.1 (Lim et al. 2017)",
    )
)
