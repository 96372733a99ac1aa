"""RRDBNet: the generator of ESRGAN and Real-ESRGAN, in every published key layout.

Wang, Yu, Wu, Gu, Liu, Dong, Qiao, Loy, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018 (Sec. 3.1, Fig. 4); Wang, Xie, Dong, Shan,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021
(Sec. 3.4: pixel-unshuffle for x2 and x1); Rakotonirina, Rasoanaivo, "ESRGAN+: Further
Improving Enhanced Super-Resolution Generative Adversarial Network", ICASSP 2020 (``plus``).

Residual-in-residual dense blocks: each RDB is five 3x3 convs densely connected (growth
``num_grow_ch``, LeakyReLU 0.2 after the first four), output ``x + 0.2 * conv5(...)``; an RRDB
chains three RDBs with ``x + 0.2 * RDB3(RDB2(RDB1(x)))`` (residual scaling beta = 0.2).  A
conv closes the trunk with a global skip; ``n`` (nearest x2, conv, LeakyReLU) steps upsample
by ``2^n`` (none at x1, one at x2, two at x4, three at x8), then ``conv_hr`` + LeakyReLU and
``conv_last``.  Real-ESRGAN's x2 / x1 models pixel-unshuffle the input by 2 / 4 first (so H
and W must be multiples of it) and run the x4 body on that: ``scale = 2^n / unshuffle``.
ESRGAN+ adds, in every RDB, a bias-free 1x1 conv of the input to the second conv's output and
that output again to the fourth's (``plus=True``).

RGB in 0..1.  Key layout = BasicSR ``rrdbnet_arch.py``: ``conv_first``,
``body.{i}.rdb{1-3}.conv{1-5}``, ``conv_body``, ``conv_up{1..n}``, ``conv_hr``, ``conv_last``.
:func:`convert_keys` maps the older layouts onto it: xinntao/ESRGAN ``RRDBNet_arch.py`` and
BSRGAN / RealSR (``RRDB_trunk.{i}.RDB{k}``, ``trunk_conv``, ``upconv{1..n}``, ``HRconv``), and
the original ``architecture.py`` sequential (``model.0``, ``model.1.sub.{i}.RDB{k}.conv{j}.0``,
``model.1.sub.{nb}``, then ``n`` (upsample, conv, LeakyReLU) triples from ``model.2``, so the
upconvs sit at ``model.3``, ``model.6``, ... ``model.{3n}``, ``conv_hr`` at ``model.{3n+2}``
and ``conv_last`` at ``model.{3n+4}``).  Every hyperparameter is read off the shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, has, indices, layout_matcher, receptive_radius, shape
from .registry import Arch, ModelSpec, register_arch, register_model

REAL_ESRGAN_UNSHUFFLE = {2: 2, 1: 4}
"""Pixel-unshuffle factor of Real-ESRGAN's x2 and x1 models (Sec. 3.4), the default there."""

BETA = 0.2  # residual scaling (ESRGAN Sec. 3.1)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


def unshuffle_factor(scale: int, unshuffle: int | None) -> int:
    """The input's pixel-unshuffle factor: ``unshuffle``, or Real-ESRGAN's for ``scale``."""
    return REAL_ESRGAN_UNSHUFFLE.get(scale, 1) if unshuffle is None else unshuffle


def upconvs(scale: int, unshuffle: int) -> int:
    """The number ``n`` of x2 upconvs: ``2^n = scale * unshuffle`` (ValueError if none)."""
    total = scale * unshuffle
    if scale < 1 or unshuffle < 1 or total & (total - 1):
        raise ValueError(f"RRDBNet runs at x1, x2, x4, x8 ... (unshuffle {unshuffle}), not x{scale}")
    return total.bit_length() - 1


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs, ``x + beta * conv5([x, x1, .., x4])``; with ``plus``
    the ESRGAN+ skips ``x2 += conv1x1(x)`` and ``x4 += x2``."""

    def __init__(self, num_feat: int, num_grow_ch: int, plus: bool = False) -> None:
        super().__init__()
        if plus:
            self.conv1x1 = nn.Conv2d(num_feat, num_grow_ch, 1, bias=False)
        for i in range(4):
            self.add_module(f"conv{i + 1}", conv(num_feat + i * num_grow_ch, num_grow_ch))
        self.conv5 = conv(num_feat + 4 * num_grow_ch, num_feat)
        self.plus = plus

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for i in range(1, 5):
            out = _lrelu(getattr(self, f"conv{i}")(torch.cat(feats, dim=1)))
            if self.plus and i == 2:
                out = out + self.conv1x1(x)
            elif self.plus and i == 4:
                out = out + feats[2]
            feats.append(out)
        return x + BETA * self.conv5(torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual in residual dense block (ESRGAN Fig. 4): ``x + beta * RDB3(RDB2(RDB1(x)))``."""

    def __init__(self, num_feat: int, num_grow_ch: int, plus: bool = False) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch, plus)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch, plus)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch, plus)

    def forward(self, x: Tensor) -> Tensor:
        return x + BETA * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator at x1, x2, x4, x8; RGB 0..1 in and out.

    ``unshuffle``: the input's pixel-unshuffle factor; ``None`` follows Real-ESRGAN (2 at x2,
    4 at x1, none otherwise).  ESRGAN's own x1 / x2 models have ``unshuffle=1``.
    """

    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        unshuffle: int | None = None,
        plus: bool = False,
    ) -> None:
        super().__init__()
        self.unshuffle = unshuffle_factor(scale, unshuffle)
        self.upconvs = upconvs(scale, self.unshuffle)
        self.conv_first = conv(num_in_ch * self.unshuffle**2, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch, plus) for _ in range(num_block)))
        self.conv_body = conv(num_feat, num_feat)
        for i in range(1, self.upconvs + 1):
            self.add_module(f"conv_up{i}", conv(num_feat, num_feat))
        self.conv_hr = conv(num_feat, num_feat)
        self.conv_last = conv(num_feat, num_out_ch)

    def forward(self, x: Tensor) -> Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.upconvs + 1):
            feat = _lrelu(getattr(self, f"conv_up{i}")(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # on the unshuffled grid: conv_first, num_block RRDBs x 3 RDBs x 5 convs, conv_body; one
    # conv after each x2 step; conv_hr and conv_last at the output resolution
    f = unshuffle_factor(scale, kwargs.get("unshuffle"))
    lr = 1 + 15 * kwargs.get("num_block", 23) + 1
    ups = [("up", 2), ("conv", 1)] * upconvs(scale, f)
    return receptive_radius([("unshuffle", f), ("conv", lr), *ups, ("conv", 2)], scale)


def _size_multiple(kwargs: Mapping[str, Any], scale: int) -> int:
    return unshuffle_factor(scale, kwargs.get("unshuffle"))


def _old_sequential(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The original ``architecture.py`` ``model.N`` layout renamed to BasicSR's."""
    nb = len(indices(sd, "model.1.sub.", "RDB1.conv1.0.weight"))
    last = max(indices(sd, "model.", "weight"))
    n = (last - 4) // 3  # model.{3n+4} is conv_last
    tail = {0: "conv_first", 3 * n + 2: "conv_hr", 3 * n + 4: "conv_last"}
    tail.update({3 * k: f"conv_up{k}" for k in range(1, n + 1)})
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)(?:\.0)?\.(weight|bias)", key):
            key = f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv1x1\.weight", key):
            key = f"body.{m[1]}.rdb{m[2]}.conv1x1.weight"
        elif m := re.fullmatch(rf"model\.1\.sub\.{nb}\.(weight|bias)", key):
            key = f"conv_body.{m[1]}"
        elif (m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key)) and int(m[1]) in tail:
            key = f"{tail[int(m[1])]}.{m[2]}"
        out[key] = value
    return out


_TRUNK_RENAMES = ((r"RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."), (r"trunk_conv\.", "conv_body."),
                  (r"upconv(\d+)\.", r"conv_up\1."), (r"HRconv\.", "conv_hr."))


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the original ESRGAN (``model.N``) and the ESRGAN-repo / BSRGAN (``RRDB_trunk``)
    layouts to BasicSR names; any other state dict unchanged."""
    if has(sd, "model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"):
        return _old_sequential(sd)
    if "RRDB_trunk.0.RDB1.conv1.weight" in sd:
        out = {}
        for key, value in sd.items():
            for old, new in _TRUNK_RENAMES:
                key = re.sub(f"^{old}", new, key)
            out[key] = value
        return out
    return sd


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    num_feat, in_ch = shape(sd, "conv_first.weight")[:2]
    out_ch = shape(sd, "conv_last.weight")[0]
    # the unshuffled input has in_ch = out_ch * f^2 channels (images in and out alike)
    f = next((f for f in (1, 2, 4) if in_ch == out_ch * f * f), None)
    if f is None:
        raise ValueError(f"conv_first takes {in_ch} channels, conv_last gives {out_ch}")
    n = len(indices(sd, "conv_up", "weight"))
    if (1 << n) % f:
        raise ValueError(f"{n} upconvs on an input unshuffled by {f}")
    kwargs = {
        "num_in_ch": out_ch,
        "num_out_ch": out_ch,
        "num_feat": num_feat,
        "num_block": len(indices(sd, "body.", "rdb1.conv1.weight")),
        "num_grow_ch": shape(sd, "body.0.rdb1.conv1.weight")[0],
        "unshuffle": f,
        "plus": "body.0.rdb1.conv1x1.weight" in sd,
    }
    return kwargs, (1 << n) // f


_SMALL = {"num_feat": 4, "num_block": 1, "num_grow_ch": 4}

ARCH = register_arch(
    Arch(
        name="rrdbnet",
        build=RRDBNet,
        convention="rgb",
        radius=_radius,
        paper="Wang et al., ESRGAN, ECCVW 2018; Real-ESRGAN, ICCVW 2021; Rakotonirina et al., ESRGAN+, ICASSP 2020",
        size_multiple=_size_multiple,
        fp16=True,
        bf16=True,  # perceptual (GAN-trained) model: bf16 rounding is invisible (layers.py)
        matches=layout_matcher(("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight"), RRDBNet, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
        aliases=("esrgan", "rrdb"),  # --arch esrgan: the family (kwargs from the file), not the named model
        test_configs=(
            *(({**_SMALL, "unshuffle": 1}, s) for s in (1, 2, 4, 8)),  # ESRGAN: 0-3 upconvs
            *(({**_SMALL, "unshuffle": f}, s) for s, f in REAL_ESRGAN_UNSHUFFLE.items()),  # Real-ESRGAN
            ({**_SMALL, "unshuffle": 1, "plus": True}, 4),  # ESRGAN+
        ),
    )
)

_RRDB = {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}

register_model(
    ModelSpec(
        name="realesrgan-x4plus",
        arch="rrdbnet",
        kwargs=_RRDB,
        scales=(4,),
        aliases=("realesrgan",),
        description="Real-ESRGAN x4plus: RRDBNet trained on synthetic real-world degradations (Wang et al. 2021)",
    )
)
register_model(
    ModelSpec(
        name="realesrgan-x2plus",
        arch="rrdbnet",
        kwargs=_RRDB,
        scales=(2,),
        description="Real-ESRGAN x2plus: RRDBNet on a pixel-unshuffled input (Wang et al. 2021)",
    )
)
register_model(
    ModelSpec(
        name="esrgan",
        arch="rrdbnet",
        kwargs=_RRDB,
        scales=(4,),
        description="ESRGAN: RRDBNet, 23 RRDBs, 64 channels, GAN-trained (Wang et al. 2018)",
    )
)
