"""RCAN: Zhang, Li, Li, Wang, Zhong, Fu, "Image Super-Resolution Using Very Deep Residual
Channel Attention Networks", ECCV 2018.

Residual in residual (Sec. 3.2): ``n_resgroups`` residual groups, each of ``n_resblocks``
residual channel-attention blocks (RCAB, Eq. 11: ``x + CA(conv(ReLU(conv(x))))``) and a 3x3
conv, with a short skip per group (Eq. 8) and a long skip over all groups (Eq. 9).  Channel
attention (Eqs. 5-7): global average pooling, a 1x1 conv down by ``reduction``, ReLU, a 1x1 conv
up, sigmoid, channel-wise rescaling.  Head, tail, mean shift and 0..255 range as in EDSR.

Key layout = the official ``RCAN_TrainCode/code/model/rcan.py``: ``sub_mean``, ``add_mean``,
``head.0``, ``body.{g}.body.{b}.body.{0,2}``, ``body.{g}.body.{b}.body.3.conv_du.{0,2}``,
``body.{g}.body.{n_resblocks}``, ``body.{n_resgroups}``, ``tail.0.{0,2,...}``, ``tail.1``.

Receptive field: the global average pooling of channel attention makes every output pixel
depend (weakly, through 64 per-channel scalars) on the whole input, so no finite tile overlap
reproduces the whole-image output bit for bit.  The declared radius is that of the
convolutions; tiles then differ from the whole image only through their channel statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .layers import (
    MeanShiftNet,
    Upsampler,
    conv,
    has,
    indices,
    mean_shift_kwargs,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, register_arch, register_model


class CALayer(nn.Module):
    """Channel attention (Zhang et al. 2018, Eqs. 5-7); keys ``conv_du.{0,2}``."""

    def __init__(self, feats: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(feats, feats // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(feats // reduction, feats, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel attention block (Eq. 11); keys ``body.{0,2}`` and ``body.3.conv_du``."""

    def __init__(self, feats: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(feats, feats), nn.ReLU(inplace=True), conv(feats, feats), CALayer(feats, reduction)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``n_resblocks`` RCABs and a 3x3 conv, with a short skip connection (Eq. 8)."""

    def __init__(self, feats: int, reduction: int, n_resblocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*(RCAB(feats, reduction) for _ in range(n_resblocks)), conv(feats, feats))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RCAN(MeanShiftNet):
    """RCAN (Zhang et al. 2018, Fig. 2); input and output RGB in 0..255."""

    def __init__(
        self,
        scale: int = 2,
        n_resgroups: int = 10,
        n_resblocks: int = 20,
        n_feats: int = 64,
        reduction: int = 16,
        rgb_range: float = 255.0,
    ) -> None:
        super().__init__(rgb_range)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(
            *(ResidualGroup(n_feats, reduction, n_resblocks) for _ in range(n_resgroups)), conv(n_feats, n_feats)
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, 3))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # convolutions only (see the module docstring): head, per group 2 per RCAB + 1, body conv
    groups, blocks = kwargs.get("n_resgroups", 10), kwargs.get("n_resblocks", 20)
    lr = 1 + groups * (2 * blocks + 1) + 1
    return receptive_radius([("conv", lr), *Upsampler.layout(scale), ("conv", 1)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return has(sd, "sub_mean.weight", "head.0.weight", "body.0.body.0.body.3.conv_du.0.weight", "tail.1.weight")


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    kwargs, scale = mean_shift_kwargs(sd)
    kwargs["n_resgroups"] = len(indices(sd, "body.", "body.0.body.0.weight"))
    kwargs["n_resblocks"] = len(indices(sd, "body.0.body.", "body.0.weight"))
    kwargs["reduction"] = kwargs["n_feats"] // shape(sd, "body.0.body.0.body.3.conv_du.0.weight")[0]
    return kwargs, scale


ARCH = register_arch(
    Arch(
        name="rcan",
        build=RCAN,
        convention="rgb255",
        radius=_radius,
        paper="Zhang et al., RCAN, ECCV 2018",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"n_resgroups": 10, "n_resblocks": 20, "n_feats": 64, "reduction": 16},
        test_configs=tuple(({"n_resgroups": 2, "n_resblocks": 2, "n_feats": 8, "reduction": 4}, s) for s in (2, 4)),
        global_context=True,  # channel attention pools the whole map (see the module docstring)
    )
)

register_model(
    ModelSpec(
        name="rcan",
        arch="rcan",
        kwargs={"n_resgroups": 10, "n_resblocks": 20, "n_feats": 64, "reduction": 16},
        scales=(2, 3, 4),
        description="RCAN: 10 residual groups x 20 channel-attention blocks, 64 channels (Zhang et al. 2018)",
        trainable_only=True,
    )
)
