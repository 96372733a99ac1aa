"""CARN and CARN-M: Ahn, Kang, Sohn, "Fast, Accurate, and Lightweight Super-Resolution with
Cascading Residual Network", ECCV 2018.

Cascading (Sec. 3.1-3.2): the outputs of the blocks are concatenated and fused by 1x1 convs,
both inside each cascading block (over its residual blocks) and across the three blocks.
CARN uses three distinct residual blocks per cascading block; CARN-M (Sec. 3.3) uses one
*efficient* residual block (two grouped 3x3 convs and a 1x1 conv, Fig. 3c) applied three times
(recursive, shared weights) and grouped convs in the upsampler.  One network serves x2, x3 and
x4 through three upsampling branches (multi-scale learning, Sec. 3.4); ``forward(x, scale)``.

Input and output RGB in 0..1; the DIV2K mean is subtracted and added back inside by frozen
1x1 convs.  Key layout = the official nmhkahn/CARN-pytorch (``carn/model/carn.py``,
``carn_m.py``, ``ops.py``): ``sub_mean.shifter``, ``add_mean.shifter``, ``entry``,
``b{1-3}.b{1-3}.body.{0,2[,4]}``, ``b{1-3}.c{1-3}.body.0``, ``c{1-3}.body.0``,
``upsample.up{2,3,4}.body.{0[,3]}``, ``exit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .layers import MeanShift, Upsampler, conv, has, receptive_radius, shape
from .registry import Arch, ModelSpec, register_arch, register_model

SCALES = (2, 3, 4)


class _Shifter(nn.Module):
    """CARN's mean shift: a :class:`MeanShift` (range 1) held as ``shifter``."""

    def __init__(self, sign: int) -> None:
        super().__init__()
        self.shifter = MeanShift(1.0, sign=sign)

    def forward(self, x: Tensor) -> Tensor:
        return self.shifter(x)


class _Fuse(nn.Module):
    """1x1 conv + ReLU fusing ``k`` concatenated feature maps; key ``body.0``."""

    def __init__(self, k: int, feats: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(k * feats, feats, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _Residual(nn.Module):
    """``ReLU(x + body(x))``: CARN's residual block (``conv-ReLU-conv``, Fig. 3b) or, with
    ``efficient``, CARN-M's (``gconv-ReLU-gconv-ReLU-conv1x1``, Fig. 3c)."""

    def __init__(self, feats: int, efficient: bool, group: int) -> None:
        super().__init__()
        if efficient:
            layers: list[nn.Module] = [
                conv(feats, feats, groups=group),
                nn.ReLU(inplace=True),
                conv(feats, feats, groups=group),
                nn.ReLU(inplace=True),
                conv(feats, feats, 1),
            ]
        else:
            layers = [conv(feats, feats), nn.ReLU(inplace=True), conv(feats, feats)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


def _cascade(x: Tensor, blocks: list[nn.Module], fuses: list[nn.Module]) -> Tensor:
    """Cascading connections (Sec. 3.1): ``c_i = [c_{i-1}, B_i(o_{i-1})]``, ``o_i = F_i(c_i)``."""
    cat, out = x, x
    for block, fuse in zip(blocks, fuses):
        cat = torch.cat([cat, block(out)], dim=1)
        out = fuse(cat)
    return out


class _Block(nn.Module):
    """Cascading block: three residual blocks (``b1..b3``; CARN-M: ``b1`` three times) and
    the 1x1 fusions ``c1..c3``."""

    def __init__(self, feats: int, mobile: bool, group: int) -> None:
        super().__init__()
        self.b1 = _Residual(feats, mobile, group)
        if not mobile:
            self.b2 = _Residual(feats, False, group)
            self.b3 = _Residual(feats, False, group)
        self.c1, self.c2, self.c3 = _Fuse(2, feats), _Fuse(3, feats), _Fuse(4, feats)
        self.mobile = mobile

    def forward(self, x: Tensor) -> Tensor:
        blocks = [self.b1] * 3 if self.mobile else [self.b1, self.b2, self.b3]
        return _cascade(x, blocks, [self.c1, self.c2, self.c3])


class _Branch(nn.Module):
    """One scale's sub-pixel branch, ``body``: (grouped conv, ReLU, PixelShuffle) per step."""

    def __init__(self, scale: int, feats: int, group: int) -> None:
        super().__init__()
        self.body = Upsampler(scale, feats, act=lambda: nn.ReLU(inplace=True), groups=group)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _Upsample(nn.Module):
    """The three branches ``up2``, ``up3``, ``up4`` (multi-scale learning, Sec. 3.4)."""

    def __init__(self, feats: int, group: int) -> None:
        super().__init__()
        self.up2, self.up3, self.up4 = (_Branch(s, feats, group) for s in SCALES)

    def forward(self, x: Tensor, scale: int) -> Tensor:
        if scale not in SCALES:
            raise ValueError(f"CARN has upsamplers for x{SCALES}, not x{scale}")
        return getattr(self, f"up{scale}")(x)


class CARN(nn.Module):
    """CARN / CARN-M (Ahn et al. 2018, Fig. 2); ``forward(x, scale)``, RGB 0..1 in and out."""

    def __init__(self, scale: int = 2, mobile: bool = False, group: int = 1, feats: int = 64) -> None:
        super().__init__()
        del scale  # one network for every scale
        self.sub_mean = _Shifter(-1)
        self.add_mean = _Shifter(+1)
        self.entry = conv(3, feats)
        self.b1, self.b2, self.b3 = (_Block(feats, mobile, group) for _ in range(3))
        self.c1, self.c2, self.c3 = _Fuse(2, feats), _Fuse(3, feats), _Fuse(4, feats)
        self.upsample = _Upsample(feats, group)
        self.exit = conv(feats, 3)

    def forward(self, x: Tensor, scale: int) -> Tensor:
        x = self.entry(self.sub_mean(x))
        x = _cascade(x, [self.b1, self.b2, self.b3], [self.c1, self.c2, self.c3])
        return self.add_mean(self.exit(self.upsample(x, scale)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # entry conv; 3 blocks x 3 residual blocks x two 3x3 convs (1x1 fusions add nothing);
    # the upsampler; the exit conv at HR
    return receptive_radius([("conv", 1 + 3 * 3 * 2), *Upsampler.layout(scale), ("conv", 1)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    keys = ("sub_mean.shifter.weight", "entry.weight", "b1.b1.body.0.weight", "b1.c3.body.0.weight")
    return has(sd, *keys, "upsample.up2.body.0.weight")


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "entry.weight")[0]
    per_group = shape(sd, "upsample.up2.body.0.weight")[1]
    mobile = "b1.b1.body.4.weight" in sd
    return {"mobile": mobile, "group": feats // per_group, "feats": feats}, None


ARCH = register_arch(
    Arch(
        name="carn",
        build=CARN,
        convention="rgb",
        radius=_radius,
        paper="Ahn et al., CARN, ECCV 2018",
        multiscale=True,
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"mobile": False, "group": 1},
    )
)

register_model(
    ModelSpec(
        name="carn",
        arch="carn",
        kwargs={"mobile": False, "group": 1},
        scales=SCALES,
        description="CARN: cascading residual network, one model for x2/x3/x4 (Ahn et al. 2018)",
        trainable_only=True,  # the authors' carn.pth exists, but no hash we can vouch for yet
    )
)
register_model(
    ModelSpec(
        name="carn-m",
        arch="carn",
        kwargs={"mobile": True, "group": 4},
        scales=SCALES,
        description="CARN-M: mobile CARN, efficient residual blocks, grouped convs (Ahn et al. 2018)",
    )
)
