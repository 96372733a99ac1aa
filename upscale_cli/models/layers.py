"""Building blocks shared by the families of the zoo, and the helpers their registrations use.

Modules keep the attribute layout of the official implementations they come from, because the
state-dict key names of public checkpoints depend on it:

* :class:`MeanShift` - the frozen 1x1 convolution that subtracts/adds the DIV2K mean
  (EDSR-PyTorch ``common.MeanShift``; RCAN, MDSR and CARN use the same one).
* :class:`ResBlock` - ``conv-ReLU-conv`` with residual scaling, keys ``body.{0,2}``
  (Lim et al., EDSR, CVPRW 2017, Fig. 2c; the scaling of Sec. 3.2).
* :class:`Upsampler` - the sub-pixel upsampler (Shi et al., ESPCN, CVPR 2016, Eq. 4) in the
  EDSR layout: a conv to ``r^2 x feats`` channels before each ``PixelShuffle(r)``, ``r`` = 2
  repeated for powers of two, one ``r`` = 3 step for x3.

Plus :func:`receptive_radius`, the exact receptive-field radius of a chain of layers in input
pixels (what tiling needs), and small state-dict readers for ``matches`` / ``infer_kwargs``.

Precision flags of the families (``Arch.fp16`` / ``Arch.bf16``): fp16 (10-bit mantissa, range
65504) is declared safe for every family here.  Measured on the checkpoints at hand (CARN-M,
FSRCNN, SRVGGNetCompact) the output moves by < 0.25 8-bit levels RMS (FSRCNN x2 on Set5:
37.143 -> 37.137 dB); for EDSR/RCAN (0..255) and RRDBNet, which have no fixture here, the flag
follows their official code, which runs them in half precision (EDSR-PyTorch
``--precision half``, Real-ESRGAN's default fp16).  bf16 (8-bit
mantissa) rounds every activation to ~1/256 of its magnitude: 0.4-1.2 levels RMS (FSRCNN x2 on
Set5: -0.16 dB; CARN-M x2 on a Set5 crop: -0.2 dB), so it is off by default (``Arch.bf16``):
the fidelity (PSNR-trained) families leave it off, and only the perceptual (GAN-trained) ones,
whose outputs move by < 2 levels anywhere, declare it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

from .registry import StateDict

DIV2K_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)
"""Mean RGB of the DIV2K training set (0..1), subtracted at the input of EDSR, RCAN, CARN."""


# --- receptive field -----------------------------------------------------------------------

RFLayer = tuple
"""One step of a chain for :func:`receptive_radius`, in input-to-output order:

* ``("conv", r)``: convolutions totalling radius ``r`` at the current resolution
  (a 3x3 conv is 1, a 5x5 is 2, a 1x1 is 0; a chain of them adds up);
* ``("up", a)``: x``a`` by pixel shuffle or nearest neighbour (output ``q`` reads ``q // a``);
* ``("unshuffle", f)``: pixel unshuffle by ``f`` (cell ``c`` reads pixels ``c*f .. c*f+f-1``);
* ``("cubic", a)`` / ``("linear", a)``: x``a`` bicubic (Keys, 4 taps) / bilinear interpolation,
  half-pixel centres (MATLAB ``imresize``, ``align_corners=False``);
* ``("tconv", k, stride, padding)``: a transposed convolution.
"""


def _back(layer: RFLayer, lo: int, hi: int) -> tuple[int, int]:
    """Input interval that output pixels ``lo..hi`` of ``layer`` read (nonzero weights only)."""
    kind = layer[0]
    if kind == "conv":
        return lo - layer[1], hi + layer[1]
    if kind == "up":
        return lo // layer[1], hi // layer[1]
    if kind == "unshuffle":
        f = layer[1]
        return lo * f, hi * f + f - 1
    if kind in ("cubic", "linear"):
        a, support = layer[1], (2 if kind == "cubic" else 1)
        u_lo = Fraction(2 * lo + 1, 2 * a) - Fraction(1, 2)
        u_hi = Fraction(2 * hi + 1, 2 * a) - Fraction(1, 2)
        # taps j with |u - j| < support (the kernel is zero at the support's edge)
        return math.floor(u_lo - support) + 1, math.ceil(u_hi + support) - 1
    if kind == "tconv":
        k, stride, pad = layer[1:]
        return -((-(lo + pad - k + 1)) // stride), (hi + pad) // stride
    raise ValueError(f"unknown receptive-field layer {layer!r}")


def receptive_radius(layers: Sequence[RFLayer], scale: int) -> int:
    """Exact receptive-field radius, in input pixels, of a chain of layers (see :data:`RFLayer`).

    The radius ``R`` is the smallest integer such that output pixel ``p`` depends only on input
    pixels within ``R`` of its parent ``p // scale`` (per axis).  Tiles overlapping by ``R``
    input pixels then reproduce the whole-image output exactly.  Computed by propagating the
    dependency interval of every output pixel of one period back through the layers.
    """
    period = scale
    for layer in layers:
        if layer[0] in ("up", "unshuffle", "cubic", "linear"):
            period *= layer[1]
        elif layer[0] == "tconv":
            period *= layer[2]
    radius = 0
    for p in range(period):
        lo, hi = p, p
        for layer in reversed(layers):
            lo, hi = _back(layer, lo, hi)
        parent = p // scale
        radius = max(radius, parent - lo, hi - parent)
    return radius


# --- modules ------------------------------------------------------------------------------


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    """A stride-1 convolution with "same" zero padding (EDSR-PyTorch ``default_conv``)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias, groups=groups)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 convolution ``y = (x + sign * rgb_range * mean) / std`` per channel.

    ``sign=-1`` subtracts the mean at the input (``sub_mean``), ``sign=+1`` adds it back at
    the output (``add_mean``).  The weight and bias are parameters with ``requires_grad=False``,
    so they appear in the state dict as in the official checkpoints (``sub_mean.weight`` ...).
    """

    def __init__(
        self,
        rgb_range: float = 255.0,
        sign: int = -1,
        mean: Sequence[float] = DIV2K_MEAN,
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        # constants made on the CPU and copied, so building under torch.device("meta") is cheap
        std_t = torch.tensor(std, dtype=torch.float32, device="cpu")
        mean_t = torch.tensor(mean, dtype=torch.float32, device="cpu")
        with torch.no_grad():
            self.weight.copy_(torch.eye(3, device="cpu").view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * mean_t / std_t)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """EDSR residual block without batch norm: ``x + res_scale * conv(act(conv(x)))``.

    Lim et al., EDSR, CVPRW 2017, Fig. 2(c); ``res_scale`` is the constant residual scaling
    (0.1 for the 256-channel EDSR, Sec. 3.2).  Keys: ``body.0`` and ``body.2``.
    """

    def __init__(
        self,
        feats: int,
        kernel_size: int = 3,
        res_scale: float = 1.0,
        act: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True),
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(feats, feats, kernel_size), act(), conv(feats, feats, kernel_size))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        res = self.body(x)
        return x + res * self.res_scale if self.res_scale != 1 else x + res


def _shuffle_steps(scale: int) -> list[int]:
    """The pixel-shuffle factors that make up ``scale``: ``[2]*log2(scale)`` or ``[3]``."""
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    if scale == 3:
        return [3]
    raise ValueError(f"the sub-pixel upsampler supports x2^n and x3, not x{scale}")


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler (Shi et al., ESPCN, CVPR 2016, Eq. 4) in the EDSR layout.

    For each factor ``r`` of ``scale`` (``2`` repeated, or one ``3``): a ``kernel_size`` conv
    from ``feats`` to ``r^2 * feats`` channels, then ``act()`` if given, then ``PixelShuffle(r)``.
    Without ``act`` the convs sit at indices ``0, 2, ...`` (EDSR/RCAN ``tail.0``); with an
    activation at ``0, 3, ...`` (CARN ``upsample.up{s}.body``, which also uses ``groups``).
    """

    def __init__(
        self,
        scale: int,
        feats: int,
        kernel_size: int = 3,
        act: Callable[[], nn.Module] | None = None,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        for r in _shuffle_steps(scale):
            layers.append(conv(feats, r * r * feats, kernel_size, bias=bias, groups=groups))
            if act is not None:
                layers.append(act())
            layers.append(nn.PixelShuffle(r))
        super().__init__(*layers)

    @staticmethod
    def layout(scale: int, kernel_size: int = 3) -> list[RFLayer]:
        """The upsampler as :func:`receptive_radius` layers."""
        out: list[RFLayer] = []
        for r in _shuffle_steps(scale):
            out += [("conv", kernel_size // 2), ("up", r)]
        return out

    @staticmethod
    def scale_of(sd: Mapping[str, Tensor], prefix: str, feats: int) -> int | None:
        """The scale of an upsampler stored under ``prefix`` (``"tail.0."``), read off shapes:
        ``2**n`` for ``n`` convs to ``4*feats`` channels, 3 for one conv to ``9*feats``."""
        convs = indices(sd, prefix, "weight")
        if not convs:
            return None
        steps = [shuffle_scale(shape(sd, f"{prefix}{i}.weight")[0], feats) for i in convs]
        if steps == [3]:
            return 3
        return 2 ** len(steps) if all(r == 2 for r in steps) else None


class MeanShiftNet(nn.Module):
    """The EDSR skeleton shared by EDSR and RCAN (Lim et al., EDSR, CVPRW 2017, Fig. 3).

    ``y = add_mean(tail(body(h) + h))`` with ``h = head(sub_mean(x))``: the DIV2K mean is
    subtracted at the input and added back at the output by frozen 1x1 convs, and a long skip
    spans the body.  Subclasses set ``head``, ``body`` and ``tail``.

    The forward takes RGB in 0..255 (the ``rgb255`` convention).  ``rgb_range`` is the range the
    weights were trained on (EDSR-PyTorch ``--rgb_range``; 255 for every released model): other
    ranges are rescaled to it and back, so checkpoints trained on 0..1 also run.
    """

    head: nn.Module
    body: nn.Module
    tail: nn.Module

    def __init__(self, rgb_range: float = 255.0) -> None:
        super().__init__()
        self.rgb_range = float(rgb_range)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=+1)

    def forward(self, x: Tensor) -> Tensor:
        k = self.rgb_range / 255.0
        x = self.head(self.sub_mean(x * k if k != 1 else x))
        y = self.add_mean(self.tail(self.body(x) + x))
        return y / k if k != 1 else y


# --- state-dict readers for matches() / infer_kwargs() -------------------------------------


def indices(sd: Mapping[str, Tensor], prefix: str, suffix: str = "") -> list[int]:
    """Sorted distinct integers ``i`` of keys ``{prefix}{i}.{rest}`` in ``sd`` whose ``rest``
    is ``suffix`` or ends with ``.{suffix}`` (any ``rest`` when ``suffix`` is empty)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    found = set()
    for key in sd:
        m = pat.fullmatch(key)
        if m and (not suffix or m.group(2) == suffix or m.group(2).endswith("." + suffix)):
            found.add(int(m.group(1)))
    return sorted(found)


def has(sd: Mapping[str, Tensor], *keys: str) -> bool:
    """Whether every key is in ``sd`` (``matches`` helper)."""
    return all(k in sd for k in keys)


def shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``sd[key]`` as a tuple."""
    return tuple(sd[key].shape)


def shuffle_scale(out_ch: int, in_ch: int) -> int | None:
    """The ``r`` with ``out_ch == r*r*in_ch`` (a pixel-shuffle conv), or None."""
    if in_ch <= 0 or out_ch % in_ch:
        return None
    r = math.isqrt(out_ch // in_ch)
    return r if r * r * in_ch == out_ch else None


def mean_shift_kwargs(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    """``n_feats``, ``rgb_range`` (when not 255) and the scale of a :class:`MeanShiftNet`
    checkpoint whose upsampler is ``tail.0``; ``rgb_range`` is read off ``sub_mean.bias``
    (``-rgb_range * mean``)."""
    feats = shape(sd, "head.0.weight")[0]
    kwargs: dict[str, Any] = {"n_feats": feats}
    rgb_range = round(-float(sd["sub_mean.bias"][0]) / DIV2K_MEAN[0], 2)
    if rgb_range > 0 and abs(rgb_range - 255.0) > 0.5:
        kwargs["rgb_range"] = rgb_range
    return kwargs, Upsampler.scale_of(sd, "tail.0.", feats)

def he_init_(module: nn.Module, negative_slope: float = 0.0, mode: str = "fan_in") -> nn.Module:
    """He et al. (ICCV 2015) normal initialisation of every (transposed) conv weight for a
    (leaky) ReLU network, zero biases - the "msra" filler of the Caffe/MatConvNet releases of
    VDSR, DRRN, MemNet and LapSRN.  ``mode`` "fan_out" is the paper's backward-pass condition
    (Sec. 2.2), which it shows suffices as well.  Returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope, mode=mode, nonlinearity="leaky_relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module

def doublings(scale: int, family: str) -> int:
    """``log2(scale)`` for the families that upscale x2 per stage (LapSRN, SRGAN, DenseSR)."""
    if scale < 2 or scale & (scale - 1):
        raise ValueError(f"{family} upscales by powers of two, not x{scale}")
    return scale.bit_length() - 1

def ilr_radius(depth: int, scale: int) -> int:
    """Radius of a net that runs ``depth`` 3x3 convs (receptive-field radius ``depth``) on the
    bicubic-upscaled input: the cubic kernel's two LR taps plus ``depth`` HR pixels."""
    return receptive_radius([("cubic", scale), ("conv", depth)], scale)

def layout_matcher(
    signature: Sequence[str],
    build: Callable[..., nn.Module],
    infer: Callable[[StateDict], tuple[dict[str, Any], int | None]],
) -> Callable[[StateDict], bool]:
    """A ``matches`` function: ``sd`` has the ``signature`` keys, and exactly the keys and shapes
    of ``build(**infer(sd))`` (built on the meta device, so it costs no memory)."""

    def matches(sd: StateDict) -> bool:
        if not has(sd, *signature):
            return False
        try:
            kwargs, scale = infer(sd)
            with torch.device("meta"):
                ref = build(scale=scale or 2, **kwargs).state_dict()
        except (KeyError, IndexError, ValueError, TypeError):  # shapes no network of the family has
            return False
        return ref.keys() == sd.keys() and all(tuple(ref[k].shape) == tuple(sd[k].shape) for k in ref)

    return matches


def matlab_filter(value: Tensor) -> Tensor:
    """A MATLAB / MatConvNet filter ``H x W x A x B`` (MATLAB drops trailing singleton dims) as
    ``B x A x H x W``: PyTorch's order both for a conv (``A`` in, ``B`` out) and for a
    ``vl_nnconvt`` transposed conv (``A`` out, ``B`` in)."""
    return value.reshape(*value.shape, *[1] * (4 - value.dim())).permute(3, 2, 0, 1).contiguous()


def rename_layout(sd: dict[str, Tensor], renames: Mapping[str, str]) -> dict[str, Tensor]:
    """``sd`` with each ``{old}.weight`` / ``{old}.bias`` renamed ``{new}.*`` when its keys are
    exactly those of the ``renames`` modules (another repository's names for the same layers);
    any other state dict unchanged."""
    if set(sd) != {f"{old}.{p}" for old in renames for p in ("weight", "bias")}:
        return sd
    out = {}
    for key, value in sd.items():
        module, param = key.rsplit(".", 1)
        out[f"{renames[module]}.{param}"] = value
    return out
