"""CARN and CARN-M: Ahn, Kang, Sohn, "Fast, Accurate, and Lightweight Super-Resolution with
Cascading Residual Network", ECCV 2018.

Cascading (Sec. 3.1-3.2): the outputs of the blocks are concatenated and fused by 1x1 convs,
both inside each cascading block (over its residual blocks) and across the three blocks.
CARN uses three distinct residual blocks per cascading block; CARN-M (Sec. 3.3) uses one
*efficient* residual block (two grouped 3x3 convs and a 1x1 conv, Fig. 3c) applied three times
(recursive, shared weights) and grouped convs in the upsampler.  One network serves x2, x3 and
x4 through three upsampling branches (multi-scale learning, Sec. 3.4); ``forward(x, scale)``.
With ``single_scale=s`` the network holds only the branch ``up{s}`` (the authors' multi-scale
network cut to one scale: model ``carn-x2``, whose public weights hold the x2 branch only).

Input and output RGB in 0..1; the DIV2K mean is subtracted and added back inside by frozen
1x1 convs.  Key layout = the official nmhkahn/CARN-pytorch (``carn/model/carn.py``,
``carn_m.py``, ``ops.py``): ``sub_mean.shifter``, ``add_mean.shifter``, ``entry``,
``b{1-3}.b{1-3}.body.{0,2[,4]}``, ``b{1-3}.c{1-3}.body.0``, ``c{1-3}.body.0``,
``upsample.up{2,3,4}.body.{0[,3]}``, ``exit``.

:func:`convert_keys` reads the MXNet conversion of the authors' ``carn.pth`` (WolframRhodium/
Super-Resolution-Zoo ``CARN/plain``, anonymous ``learned_N`` arrays named by ``formats.mxnet``
after their graph nodes): its 35 (x2, x3) or 36 (x4) convolutions in graph order are the forward order of
``carn.py``: ``sub_mean``, ``entry``, per cascading block ``b{i}`` the residual blocks' two convs
each followed by their fusion (``b1``, ``c1``, ``b2``, ``c2``, ``b3``, ``c3``), then the block
fusion ``c{i}``; the one branch's upsampler convs; ``exit``; ``add_mean``.  The graph runs
``carn.py``'s ops unchanged (zero padding, ReLUs, concatenations, a pixel shuffle written as
reshape/transpose), so nothing of the family changed for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..formats.mxnet import op_nodes
from .layers import MeanShift, Upsampler, conv, has, receptive_radius, shape, shuffle_scale
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
    """The branches ``up2``, ``up3``, ``up4`` (multi-scale learning, Sec. 3.4), or one of them."""

    def __init__(self, feats: int, group: int, scales: tuple[int, ...] = SCALES) -> None:
        super().__init__()
        if not set(scales) <= set(SCALES):
            raise ValueError(f"CARN has upsamplers for x{SCALES}, not x{scales}")
        for s in scales:
            setattr(self, f"up{s}", _Branch(s, feats, group))
        self.scales = scales

    def forward(self, x: Tensor, scale: int) -> Tensor:
        if scale not in self.scales:
            raise ValueError(f"this CARN has upsamplers for x{self.scales}, not x{scale}")
        return getattr(self, f"up{scale}")(x)


class CARN(nn.Module):
    """CARN / CARN-M (Ahn et al. 2018, Fig. 2); ``forward(x, scale)``, RGB 0..1 in and out.

    ``single_scale``: hold only that scale's upsampler (``None``: x2, x3 and x4).
    """

    def __init__(
        self, scale: int = 2, mobile: bool = False, group: int = 1, feats: int = 64, single_scale: int | None = None
    ) -> None:
        super().__init__()
        del scale  # one network for every scale (or for single_scale)
        self.sub_mean = _Shifter(-1)
        self.add_mean = _Shifter(+1)
        self.entry = conv(3, feats)
        self.b1, self.b2, self.b3 = (_Block(feats, mobile, group) for _ in range(3))
        self.c1, self.c2, self.c3 = _Fuse(2, feats), _Fuse(3, feats), _Fuse(4, feats)
        self.upsample = _Upsample(feats, group, SCALES if single_scale is None else (single_scale,))
        self.exit = conv(feats, 3)

    def forward(self, x: Tensor, scale: int) -> Tensor:
        x = self.entry(self.sub_mean(x))
        x = _cascade(x, [self.b1, self.b2, self.b3], [self.c1, self.c2, self.c3])
        return self.add_mean(self.exit(self.upsample(x, scale)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # entry conv; 3 blocks x 3 residual blocks x two 3x3 convs (1x1 fusions add nothing);
    # the upsampler; the exit conv at HR
    return receptive_radius([("conv", 1 + 3 * 3 * 2), *Upsampler.layout(scale), ("conv", 1)], scale)


def _branches(sd: Mapping[str, Tensor]) -> list[int]:
    return [s for s in SCALES if f"upsample.up{s}.body.0.weight" in sd]


def _matches(sd: Mapping[str, Tensor]) -> bool:
    keys = ("sub_mean.shifter.weight", "entry.weight", "b1.b1.body.0.weight", "b1.c3.body.0.weight")
    return has(sd, *keys) and len(_branches(sd)) in (1, len(SCALES))


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "entry.weight")[0]
    branches = _branches(sd)
    per_group = shape(sd, f"upsample.up{branches[0]}.body.0.weight")[1]
    mobile = "b1.b1.body.4.weight" in sd
    kwargs: dict[str, Any] = {"mobile": mobile, "group": feats // per_group, "feats": feats}
    if len(branches) == 1:
        kwargs["single_scale"] = branches[0]
    return kwargs, None


def _forward_order(upsampler: list[str]) -> list[str]:
    """Full CARN's convolutions in the order ``carn.py``'s forward runs them."""
    order = ["sub_mean.shifter", "entry"]
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            order += [f"b{i}.b{j}.body.0", f"b{i}.b{j}.body.2", f"b{i}.c{j}.body.0"]
        order.append(f"c{i}.body.0")
    return [*order, *upsampler, "exit", "add_mean.shifter"]


_FIXED_CONVS = len(_forward_order([]))


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The MXNet conversion's graph names (``convolution{N}.weight``/``.bias``, see the module
    docstring) to ours; any other dict is returned as it is."""
    nodes = op_nodes(sd)
    if nodes is None or sd.keys() != {f"{n}.{p}" for n in nodes for p in ("weight", "bias")}:
        return sd
    ups = nodes[_FIXED_CONVS - 2 : -2]  # between the last block fusion and exit
    steps = tuple(shuffle_scale(sd[f"{n}.weight"].shape[0], sd[f"{n}.weight"].shape[1]) for n in ups)
    scale = {(2,): 2, (3,): 3, (2, 2): 4}.get(steps)
    if scale is None:
        return sd
    branch = [f"upsample.up{scale}.body.{3 * k}" for k in range(len(ups))]
    return {
        f"{key}.{p}": sd[f"{node}.{p}"] for key, node in zip(_forward_order(branch), nodes) for p in ("weight", "bias")
    }


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
        convert_keys=convert_keys,
        default_kwargs={"mobile": False, "group": 1},
        test_configs=(({"mobile": True, "group": 4, "feats": 8}, 4), ({"mobile": False, "feats": 4}, 3)),
    )
)

register_model(
    ModelSpec(
        name="carn",
        arch="carn",
        kwargs={"mobile": False, "group": 1, "single_scale": None},
        scales=SCALES,
        description="CARN: cascading residual network, one model for x2/x3/x4 (Ahn et al. 2018); "
        "trainable, no public weights",
        trainable_only=True,  # the authors' carn.pth exists, but no hash we can vouch for yet
    )
)
register_model(
    ModelSpec(
        name="carn-x2",
        arch="carn",
        kwargs={"mobile": False, "group": 1, "single_scale": 2},
        scales=(2,),
        description="CARN (Ahn et al. 2018), the authors' carn.pth with its x2 upsampler only "
        "(an MXNet conversion of it)",
    )
)
for _scale in (3, 4):
    register_model(
        ModelSpec(
            name=f"carn-x{_scale}",
            arch="carn",
            kwargs={"mobile": False, "group": 1, "single_scale": _scale},
            scales=(_scale,),
            description=f"CARN (Ahn et al. 2018) x{_scale}, in-house: the authors' body (carn-x2) with a "
            f"trained x{_scale} upsampler (recipes/inhouse/targets.toml)",
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
