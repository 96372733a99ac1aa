"""IDN: Hui, Wang, Gao, "Fast and Accurate Single Image Super-Resolution via Information
Distillation Network", CVPR 2018.

Three parts on the LR image (Fig. 2), LeakyReLU 0.05 after every conv but the last:

* FBlock: two 3x3 convs, 64 filters;
* ``n`` = 4 DBlocks, each an enhancement unit and a compression unit (Fig. 3):
  the enhancement unit's upper module (three 3x3 convs, 48 -> 32 -> 64 filters, the middle one
  grouped by 4) gives ``P``; its first ``D3/s`` = 16 channels are *sliced* off and concatenated
  with the unit's input ``R = C(S(P, 1/s), x)``; the other 48 go through the lower module (three
  3x3 convs, 64 -> 48 -> 80, the middle one grouped by 4), whose output is added:
  ``P_k = P_2 + R``; the compression unit, a 1x1 conv, brings 80 channels back to 64;
* RBlock: a 17x17 transposed conv with stride ``scale`` to one channel, plus the bicubic
  upscaled input (global residual): ``y = deconv(F_n) + bicubic(x)``.

The deconvolution is aligned as in the authors' Caffe release (Zheng222/IDN-Caffe): their
``Deconvolution`` (kernel 17, stride ``s``, pad 8) gives ``s (h - 1) + 1`` pixels, and pixel ``i``
of it is HR pixel ``i + s - 1``: ``test/test_IDN.m`` adds ``mycrop(im_b, s)`` (the bicubic ILR
without its first ``s - 1`` rows and columns) and ``train/generate_train_IDN.m`` cuts the labels
at the same offset (``locx = x + scale - 1``).  Here the transposed conv has padding
``8 - (s - 1)`` and its output is cut to ``s h``: the same pixels, plus the ``s - 1`` top/left
rows and columns the authors do not compute (inside the ``s``-pixel border the protocol
shaves), from the same formula.  The ILR is the MATLAB bicubic of the LR (``imresize``),
Y is BT.601 studio swing in 0..1 (MATLAB ``rgb2ycbcr`` / 255), as in both scripts.

Keys: ``fblock.{0,1}``, ``dblocks.{i}.upper.{0,1,2}``, ``dblocks.{i}.lower.{0,1,2}``,
``dblocks.{i}.compress``, ``upsample``; 552,769 parameters (the paper's 553K).
:func:`convert_keys` reads the authors' Caffe models (one per scale, ``formats/caffe.py``
keys): ``conv1``, ``conv2`` (FBlock), ``conv{3+i}_{1..6}`` (block ``i``'s upper and lower
convs), ``down{1+i}`` (its compression unit) and ``upsample``, each ``.0`` weight and ``.1``
bias; the Caffe blob layouts are PyTorch's (``Convolution`` ``(out, in/g, kh, kw)``,
``Deconvolution`` ``(in, out/g, kh, kw)``), so only the names change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, has, he_init_, indices, layout_matcher, receptive_radius, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

SLOPE = 0.05
"""LeakyReLU negative slope (Sec. 4.1)."""
KERNEL = 17
"""Size of the RBlock's transposed conv."""


def _tconv_padding(scale: int) -> int:
    """Padding of the 17x17 stride-``scale`` transposed conv: the authors' Caffe pad 8, less the
    ``scale - 1`` pixels by which their output is offset on the HR grid (module docstring)."""
    pad = KERNEL // 2 - (scale - 1)
    if pad < 0:
        raise ValueError(f"IDN's {KERNEL}x{KERNEL} deconvolution reaches x{KERNEL // 2 + 1} at most, not x{scale}")
    return pad


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


def _chain(widths: tuple[int, int, int, int], groups: int) -> nn.ModuleList:
    """Three 3x3 convs through ``widths``; the middle one grouped."""
    a, b, c, d = widths
    return nn.ModuleList([conv(a, b), conv(b, c, groups=groups), conv(c, d)])


class DBlock(nn.Module):
    """Enhancement unit with slicing + 1x1 compression unit (Fig. 3)."""

    def __init__(self, feats: int = 64, d: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.d = d
        third = feats - d  # 48: the upper module's first width and the lower module's input
        self.upper = _chain((feats, third, feats // 2, feats), groups)
        self.lower = _chain((third, feats, third, feats + d), groups)
        self.compress = conv(feats + d, feats, 1)

    def forward(self, x: Tensor) -> Tensor:
        p = x
        for layer in self.upper:
            p = _lrelu(layer(p))
        r = p[:, self.d :]
        for layer in self.lower:
            r = _lrelu(layer(r))
        return _lrelu(self.compress(r + torch.cat([x, p[:, : self.d]], dim=1)))


class IDN(nn.Module):
    """IDN (Hui et al. 2018, Fig. 2).

    Args:
        scale: upscaling factor (2, 3, 4 in the paper).
        blocks: DBlocks ``n`` (4).
        feats: ``D3`` (64); the slice is ``d`` = 16 channels, the groups 4 (``s``).
    """

    def __init__(self, scale: int = 4, blocks: int = 4, feats: int = 64, d: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.fblock = nn.ModuleList([conv(1, feats), conv(feats, feats)])
        self.dblocks = nn.Sequential(*(DBlock(feats, d, groups) for _ in range(blocks)))
        self.upsample = nn.ConvTranspose2d(feats, 1, KERNEL, stride=scale, padding=_tconv_padding(scale))
        he_init_(self, SLOPE)
        # the transposed conv starts at zero, so training starts from the bicubic image (a
        # random 17x17 transposed conv to one channel adds a large random residual)
        nn.init.zeros_(self.upsample.weight)
        nn.init.zeros_(self.upsample.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.fblock:
            h = _lrelu(layer(h))
        # s h + s - 1 rows come out; the last s - 1 lie beyond the image
        residual = self.upsample(self.dblocks(h))[..., : self.scale * x.shape[-2], : self.scale * x.shape[-1]]
        return residual + imresize(x, scale=self.scale)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    trunk = 2 + 6 * kwargs.get("blocks", 4)  # FBlock, six 3x3 convs on the longest DBlock path
    features = receptive_radius([("conv", trunk), ("tconv", KERNEL, scale, _tconv_padding(scale))], scale)
    return max(features, receptive_radius([("cubic", scale)], scale))


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "fblock.0.weight")[0]
    groups = shape(sd, "dblocks.0.upper.0.weight")[0] // shape(sd, "dblocks.0.upper.1.weight")[1]
    d = shape(sd, "dblocks.0.compress.weight")[1] - feats
    return {"blocks": len(indices(sd, "dblocks.", "compress.weight")), "feats": feats, "d": d, "groups": groups}, None


_CAFFE = re.compile(r"(?:conv(?P<f>[12])|conv(?P<block>\d+)_(?P<conv>[1-6])|down(?P<down>\d+)|upsample)\.(?P<blob>[01])")


def _caffe_module(m: re.Match[str]) -> str:
    """Our module name of the authors' Caffe layer matched by :data:`_CAFFE`."""
    if m["f"]:
        return f"fblock.{int(m['f']) - 1}"
    if m["block"]:
        j = int(m["conv"]) - 1
        return f"dblocks.{int(m['block']) - 3}.{('upper', 'lower')[j // 3]}.{j % 3}"
    if m["down"]:
        return f"dblocks.{int(m['down']) - 1}.compress"
    return "upsample"


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' Caffe layer names (module docstring) as ours; other layouts unchanged."""
    if not has(sd, "conv1.0", "down1.0", "upsample.0"):
        return sd
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := _CAFFE.fullmatch(key):
            bias = m["blob"] == "1"
            key = f"{_caffe_module(m)}.{'bias' if bias else 'weight'}"
            value = value.reshape(-1) if bias else value  # a legacy blob is 4-D
        out[key] = value
    return out


register_arch(
    Arch(
        name="idn",
        build=IDN,
        convention="y",
        radius=_radius,
        paper="Hui et al., IDN, CVPR 2018",
        fp16=True,
        matches=layout_matcher(("fblock.0.weight", "dblocks.0.compress.weight", "upsample.weight"), IDN, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"blocks": 4, "feats": 64, "d": 16, "groups": 4},
        test_configs=(({"blocks": 1, "feats": 8, "d": 2, "groups": 2}, 3),),
    )
)

register_model(
    ModelSpec(
        name="idn",
        arch="idn",
        kwargs={"blocks": 4, "feats": 64, "d": 16, "groups": 4},
        scales=(2, 3, 4),
        description="IDN: information distillation blocks with slicing and 1x1 compression (Hui et al. 2018), the authors' Caffe models",
    )
)
