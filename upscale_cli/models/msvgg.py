"""MSVGG: a compact multi-scale plain-conv network with a bicubic skip (the project's default is
its luma variant, ``msvgg-y``).

A VGG-style stack of 3x3 convolutions at low resolution (the compact design of Real-ESRGAN's
SRVGGNetCompact and of ESPCN, Shi et al., CVPR 2016), shared by x2, x3 and x4 as in MDSR
(Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017,
Sec. 3.2: one body, one upsampling head per scale), predicting only the residual over the
bicubic upscale (Kim et al., VDSR, CVPR 2016, Sec. 3.1, residual learning):

    ``y = PS_s(up_s(body(head(x)))) + bicubic_s(x)``

where ``PS_s`` is the pixel shuffle (ESPCN Eq. 4) and ``bicubic_s`` the MATLAB-compatible
``imresize`` of :mod:`upscale_cli.resize`.  Starting from the bicubic image makes the net
useful after a few hundred steps, which is what a CPU training budget allows.

RGB in 0..1 in and out; ``forward(x, scale)``.  Keys: ``head``, ``body.{1,3,...}``,
``up{2,3,4}``.

``msvgg-y`` is the same network on the BT.601 luma alone (``channels=1``; the chroma is the
bicubic of the input's, as in SRCNN, Dong et al., TPAMI 2016, Sec. 4.1, and VDSR), so that all
of its capacity goes to the channel the standard protocol scores.  :func:`to_luma` turns a
trained RGB MSVGG into a luma one that computes the same for grey images.

:func:`grow` widens and deepens a trained MSVGG without changing its output (the
function-preserving "Net2Net" transforms of Chen et al., ICLR 2016), so a larger net can start
from a smaller one's weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..color import LUMA_COEFFS, LUMA_OFFSET
from ..resize import imresize
from .layers import conv, he_init_, indices, receptive_radius, shape
from .registry import Arch, Convention, ModelSpec, StateDict, register_arch, register_model

SCALES = (2, 3, 4)


class MSVGG(nn.Module):
    """``PS(up_s(ReLU(conv(...ReLU(head(x)))))) + bicubic(x)``, one body for every scale."""

    def __init__(self, scale: int = 2, feats: int = 48, n_conv: int = 6, channels: int = 3) -> None:
        super().__init__()
        del scale  # one network for every scale
        self.head = conv(channels, feats)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for _ in range(n_conv):
            layers += [conv(feats, feats), nn.ReLU(inplace=True)]
        # body.0 is the head's activation, so the convs sit at body.1, body.3, ...
        self.body = nn.Sequential(*layers)
        self.up2, self.up3, self.up4 = (conv(feats, channels * s * s) for s in SCALES)
        self.shuffles = nn.ModuleDict({str(s): nn.PixelShuffle(s) for s in SCALES})
        # He init for the ReLU stack; zero residual branches, so training starts at bicubic
        # (a plain net at PyTorch's default init spends its first steps undoing its own noise)
        he_init_(self)
        for branch in (self.up2, self.up3, self.up4):
            nn.init.zeros_(branch.weight)

    def forward(self, x: Tensor, scale: int) -> Tensor:
        if scale not in SCALES:
            raise ValueError(f"MSVGG has upsamplers for x{SCALES}, not x{scale}")
        res = self.shuffles[str(scale)](getattr(self, f"up{scale}")(self.body(self.head(x))))
        return res + imresize(x, scale=scale)


def grow(sd: StateDict, feats: int, n_conv: int, generator: torch.Generator | None = None) -> StateDict:
    """A state dict for ``MSVGG(feats, n_conv)`` that computes exactly what ``sd`` computes.

    Net2WiderNet (Chen et al., ICLR 2016, Sec. 2.2) in its zero-output form: the new channels
    get He-normal input weights (so they carry signal and receive gradient) and zero weights
    wherever an old channel or the output reads them.  Net2DeeperNet (Sec. 2.3): the new
    convolutions are appended to the body as identity (Dirac) kernels with zero bias; their
    input is the output of a ReLU, hence non-negative, so ``ReLU(I * h) = h``.

    Raises:
        ValueError: ``sd`` is not an MSVGG, or the target is smaller than it.
    """
    channels = _channels(sd)
    if channels is None:
        raise ValueError("not an MSVGG state dict")
    old = _infer(sd)[0]
    if feats < old["feats"] or n_conv < old["n_conv"]:
        raise ValueError(f"cannot shrink MSVGG {old} to feats={feats}, n_conv={n_conv}")
    f = old["feats"]
    dtype = sd["head.weight"].dtype
    new = {k: v.to(dtype) for k, v in MSVGG(feats=feats, n_conv=n_conv, channels=channels).state_dict().items()}
    he = ["head.weight"] + [f"body.{2 * i + 1}.weight" for i in range(old["n_conv"])]
    for key, w in new.items():
        w.zero_()
        if key in he and feats > f:  # new output channels: random inputs from every channel (as he_init_)
            nn.init.kaiming_normal_(w[f:], nonlinearity="relu", generator=generator)
        if key in sd:
            src = sd[key]
            w[tuple(slice(0, n) for n in src.shape)] = src
    for i in range(old["n_conv"], n_conv):
        nn.init.dirac_(new[f"body.{2 * i + 1}.weight"])
    return new


def to_luma(sd: StateDict) -> StateDict:
    """An ``msvgg-y`` state dict computing, for grey images, the luma of what RGB ``sd`` computes.

    On a grey input ``R = G = B = g`` the luma net sees ``y = (16 + 219 g) / 255`` (BT.601), so
    its head weights are the RGB head's summed over the input channels times 255/219, the
    offset going into the bias; each upsampler's output at a sub-pixel is the BT.601
    combination ``(65.481 R + 128.553 G + 24.966 B) / 255`` of the RGB one's three outputs
    there (its residual; the bicubic skip commutes with the affine colour map).  Exact up to
    the zero padding of the first conv, which does not carry the offset; a warm start for
    training the luma net, not a replacement.

    Raises:
        ValueError: ``sd`` is not an RGB MSVGG.
    """
    if _channels(sd) != 3:
        raise ValueError("not an RGB MSVGG state dict")
    out = {k: v.clone() for k, v in sd.items()}
    head, swing = sd["head.weight"].double(), sum(LUMA_COEFFS)  # 219: grey g in 0..1 gives y = (16 + 219 g) / 255
    out["head.weight"] = (head.sum(dim=1, keepdim=True) * 255 / swing).to(head.dtype)
    out["head.bias"] = (sd["head.bias"].double() - head.sum(dim=(1, 2, 3)) * LUMA_OFFSET / swing).to(head.dtype)
    coeffs = torch.tensor(LUMA_COEFFS, dtype=torch.float64) / 255
    for s in SCALES:
        for p in ("weight", "bias"):
            w = sd[f"up{s}.{p}"].double()
            rgb = w.reshape(3, s * s, *w.shape[1:])  # PixelShuffle reads channel c * s^2 + k
            out[f"up{s}.{p}"] = torch.einsum("c,ck...->k...", coeffs, rgb).to(w.dtype)
    return out


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # head + body convs + the upsampling conv at LR, then the shuffle; the bicubic skip reads
    # only 2 px around each parent, which is inside this
    n = int(kwargs.get("n_conv", 6))
    return max(
        receptive_radius([("conv", n + 2), ("up", scale)], scale),
        receptive_radius([("cubic", scale)], scale),
    )


def _convs(sd: StateDict) -> list[int]:
    return indices(sd, "body.", "weight")


def _channels(sd: StateDict) -> int | None:
    """3 for an RGB MSVGG state dict, 1 for a luma one, ``None`` for anything else."""
    convs = _convs(sd)
    expected = {f"{k}.{p}" for k in ("head", "up2", "up3", "up4") for p in ("weight", "bias")}
    expected |= {f"body.{i}.{p}" for i in convs for p in ("weight", "bias")}
    if set(sd) != expected or convs != list(range(1, 2 * len(convs) + 1, 2)):
        return None
    channels = shape(sd, "head.weight")[1]
    return channels if channels in (1, 3) else None


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {"feats": shape(sd, "head.weight")[0], "n_conv": len(_convs(sd))}, None


_SMALL = {"feats": 48, "n_conv": 6}
"""The trainable models' kwargs (``default`` is larger)."""


def _register(name: str, channels: int, convention: Convention, paper: str, description: str) -> Arch:
    """Register one MSVGG family (RGB or luma) and its trainable model of the same name."""

    def build(scale: int = 2, feats: int = _SMALL["feats"], n_conv: int = _SMALL["n_conv"]) -> MSVGG:
        return MSVGG(scale, feats, n_conv, channels=channels)

    arch = register_arch(
        Arch(
            name=name,
            build=build,
            convention=convention,
            radius=_radius,
            paper=paper,
            multiscale=True,
            fp16=True,
            matches=lambda sd: _channels(sd) == channels,
            infer_kwargs=_infer,
            default_kwargs=_SMALL,
            test_configs=(({"feats": 8, "n_conv": 2}, 2),),
            recipe="msvgg",
        )
    )
    register_model(ModelSpec(name=name, arch=name, kwargs=_SMALL, scales=SCALES, description=description, trainable_only=True))
    return arch


ARCH = _register(
    "msvgg",
    3,
    "rgb",
    "this project: multi-scale compact VGG with a bicubic skip (after ESPCN, VDSR, MDSR)",
    "Compact multi-scale plain-conv net with a bicubic skip (this project's own)",
)
LUMA_ARCH = _register(
    "msvgg-y",
    1,
    "y",
    "this project: MSVGG on the BT.601 luma, bicubic chroma (after SRCNN, VDSR)",
    "MSVGG on the BT.601 luma, chroma bicubic (this project's own)",
)
register_model(
    ModelSpec(
        name="default",
        arch="msvgg-y",
        kwargs={"feats": 64, "n_conv": 10},
        scales=SCALES,
        aliases=("msvgg-291",),
        description="The in-house default: MSVGG on the luma (64 features, 10 convs) trained on T91 + BSD200 "
        "(recipes/default-model*.toml), shipped in the package, no download",
    )
)
