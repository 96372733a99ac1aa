"""RRDBNet: the generator of ESRGAN and Real-ESRGAN.

Wang, Yu, Wu, Gu, Liu, Dong, Qiao, Loy, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018 (Sec. 3.1, Fig. 4); Wang, Xie, Dong, Shan,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021
(Sec. 3.4: pixel-unshuffle for x2 and x1).

Residual-in-residual dense blocks: each RDB is five 3x3 convs densely connected (growth
``num_grow_ch``, LeakyReLU 0.2 after the first four), output ``x + 0.2 * conv5(...)``; an RRDB
chains three RDBs with ``x + 0.2 * RDB3(RDB2(RDB1(x)))`` (residual scaling beta = 0.2).  A
conv closes the trunk with a global skip; two (nearest x2, conv, LeakyReLU) steps upsample x4,
then ``conv_hr`` + LeakyReLU and ``conv_last``.  For x2 / x1 the input is first pixel-unshuffled
by 2 / 4 (so H and W must be multiples of it) and the x4 body runs on that.

RGB in 0..1.  Key layout = BasicSR ``rrdbnet_arch.py``: ``conv_first``,
``body.{i}.rdb{1-3}.conv{1-5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
``conv_last``.  :func:`convert_keys` maps the two older ESRGAN layouts onto it:
xinntao/ESRGAN ``RRDBNet_arch.py`` (``RRDB_trunk.{i}.RDB{k}``, ``trunk_conv``, ``upconv{1,2}``,
``HRconv``) and the original ``architecture.py`` (``model.0``, ``model.1.sub.{i}.RDB{k}.conv{j}.0``,
``model.1.sub.{nb}``, ``model.3``, ``model.6``, ``model.8``, ``model.10``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, has, indices, receptive_radius, shape
from .registry import Arch, ModelSpec, register_arch, register_model

UNSHUFFLE = {4: 1, 2: 2, 1: 4}
"""Pixel-unshuffle factor applied to the input, per scale (Real-ESRGAN Sec. 3.4)."""

BETA = 0.2  # residual scaling (ESRGAN Sec. 3.1)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs, ``x + beta * conv5([x, x1, .., x4])``."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        for i in range(4):
            self.add_module(f"conv{i + 1}", conv(num_feat + i * num_grow_ch, num_grow_ch))
        self.conv5 = conv(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(_lrelu(getattr(self, f"conv{i}")(torch.cat(feats, dim=1))))
        return x + BETA * self.conv5(torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual in residual dense block (ESRGAN Fig. 4): ``x + beta * RDB3(RDB2(RDB1(x)))``."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return x + BETA * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator for x4, x2 and x1; RGB 0..1 in and out."""

    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in UNSHUFFLE:
            raise ValueError(f"RRDBNet runs at x{sorted(UNSHUFFLE)}, not x{scale}")
        self.unshuffle = UNSHUFFLE[scale]
        self.conv_first = conv(num_in_ch * self.unshuffle**2, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = conv(num_feat, num_feat)
        self.conv_up1 = conv(num_feat, num_feat)
        self.conv_up2 = conv(num_feat, num_feat)
        self.conv_hr = conv(num_feat, num_feat)
        self.conv_last = conv(num_feat, num_out_ch)

    def forward(self, x: Tensor) -> Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # conv_first, 23 RRDBs x 3 RDBs x 5 convs, conv_body at LR; conv_up1 at 2x; conv_up2,
    # conv_hr, conv_last at 4x (all relative to the unshuffled grid)
    lr = 1 + 15 * kwargs.get("num_block", 23) + 1
    layers = [("unshuffle", UNSHUFFLE[scale]), ("conv", lr), ("up", 2), ("conv", 1), ("up", 2), ("conv", 3)]
    return receptive_radius(layers, scale)


def _size_multiple(_kwargs: Mapping[str, Any], scale: int) -> int:
    return UNSHUFFLE[scale]


_ESRGAN_RENAMES = {"trunk_conv.": "conv_body.", "upconv1.": "conv_up1.", "upconv2.": "conv_up2.", "HRconv.": "conv_hr."}
_OLD_TAIL = {3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"}


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the ESRGAN-repo and original ESRGAN layouts to BasicSR names; others unchanged."""
    if "model.0.weight" in sd and "model.1.sub.0.RDB1.conv1.0.weight" in sd:
        nb = len(indices(sd, "model.1.sub.", "RDB1.conv1.0.weight"))
        out: dict[str, Tensor] = {}
        for key, value in sd.items():
            if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
                key = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
            elif m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
                name = "conv_first" if m[1] == "0" else _OLD_TAIL.get(int(m[1]), f"model.{m[1]}")
                key = f"{name}.{m[2]}"
            elif m := re.fullmatch(rf"model\.1\.sub\.{nb}\.(weight|bias)", key):
                key = f"conv_body.{m[1]}"
            out[key] = value
        return out
    if "RRDB_trunk.0.RDB1.conv1.weight" in sd:
        out = {}
        for key, value in sd.items():
            if m := re.fullmatch(r"RRDB_trunk\.(\d+)\.RDB(\d)\.(.*)", key):
                key = f"body.{m[1]}.rdb{m[2]}.{m[3]}"
            for old, new in _ESRGAN_RENAMES.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
            out[key] = value
        return out
    return sd


def _matches(sd: Mapping[str, Tensor]) -> bool:
    keys = ("conv_first", "body.0.rdb1.conv1", "conv_body", "conv_up2", "conv_last")
    return has(sd, *(f"{k}.weight" for k in keys))


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    num_feat, in_ch = shape(sd, "conv_first.weight")[:2]
    out_ch = shape(sd, "conv_last.weight")[0]
    kwargs = {
        "num_in_ch": out_ch,
        "num_out_ch": out_ch,
        "num_feat": num_feat,
        "num_block": len(indices(sd, "body.", "rdb1.conv1.weight")),
        "num_grow_ch": shape(sd, "body.0.rdb1.conv1.weight")[0],
    }
    # the unshuffled input has in_ch = out_ch * f^2 channels (images in and out alike)
    scale = next((s for s, f in UNSHUFFLE.items() if in_ch == out_ch * f * f), None)
    return kwargs, scale


ARCH = register_arch(
    Arch(
        name="rrdbnet",
        build=RRDBNet,
        convention="rgb",
        radius=_radius,
        paper="Wang et al., ESRGAN, ECCVW 2018; Real-ESRGAN, ICCVW 2021",
        size_multiple=_size_multiple,
        fp16=True,
        bf16=True,  # perceptual (GAN-trained) model: bf16 rounding is invisible (layers.py)
        matches=_matches,
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
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
