"""OmniSR: Wang, Chen, Ni, Liu, Liu, "Omni Aggregation Networks for Lightweight Image
Super-Resolution", CVPR 2023 (arXiv:2304.10244).

A 3x3 conv, ``res_num`` omni self-attention groups (OSAG, Sec. 3.3), a 3x3 conv with a long
skip and a 3x3 conv + pixel shuffle to RGB (Fig. 2).  An OSAG is ``block_num`` omni
self-attention blocks (OSA, Sec. 3.2, Fig. 4), a 1x1 conv, a skip and the enhanced spatial
attention of RFANet (ESA: 1x1 to ``max(num_feat / 4, 16)`` channels, a strided 3x3, a 7x7
max-pool of stride 3, a 3x3, bilinear back to full size, plus a 1x1 of the first projection,
a 1x1 and a sigmoid mask).  An OSA block, in the published order:

* an MBConv (1x1, GELU, depthwise 3x3, GELU, squeeze-excitation over the whole map, 1x1) with
  a skip;
* spatial attention in ``window`` x ``window`` windows (pre-LayerNorm, 4 heads, a learned
  relative position bias when ``pe``), a gated depthwise feed-forward (GDFN), channel attention
  within each window (the "omni" channel branch, Eq. 5: L2-normalised queries and keys, a
  learned temperature per head), a GDFN;
* the same two attentions on the *grid*: tokens ``H / window`` pixels apart that span the whole
  map (spatial), and the pixels of every window at one in-window offset (channel), each
  followed by a GDFN.

Global context (``Arch.global_context``): the squeeze-excitation averages the whole map and the
grid attentions mix tokens strided across the whole image, so the output depends on all of it
(not weakly: tiles cannot equal the whole image).  :func:`_radius` is the field of the local
operations (convolutions, the window attentions, the ESA, whose reach is bounded by
:data:`ESA_REACH`); tiles then differ from the whole image through the global paths.

Input range: the authors' trainer feeds ``(x - 0.5) * 2`` (``data_tools/*_memory.py``) and maps
outputs back with ``(y + 1) / 2``; community trainers (traiNNer-redux, neosr; what spandrel
runs) use RGB 0..1 as is.  ``signed=True`` selects the authors' range.  The authors' files
hold the buffers that thop's profiler leaves on the modules it cannot count
(``*.total_ops``, ``*.total_params``; their trainer profiles the network before training):
:func:`convert_keys` drops them and marks the file with a ``signed_range`` key, which the
network of ``signed=True`` holds as a buffer, so such files load as published with no flag.

Published configuration (``train_yamls/train_OmniSR_X{2,3,4}_*.yaml``): ``num_feat`` 64,
``res_num`` 5, ``block_num`` 1, ``window_size`` 8, ``pe`` True, ``bias`` True; community files
keep it.  Every hyperparameter is read off the shapes (the window off the relative position
table; without ``pe`` the keys do not tell it and 8 is assumed).

Key layout = Francis0625/Omni-SR ``components/OmniSR.py``, ``ops/OSAG.py``, ``ops/OSA.py``,
``ops/esa.py``, ``ops/layernorm.py``, ``ops/pixelshuffle.py`` (spandrel's copy has the same
keys): ``input``, ``residual_layer.{i}.residual_layer.{j}.layer.{k}`` (``k`` = 0 MBConv
``fn.{0,2,4.gate.1,4.gate.3,5}``; 2 and 8 attention ``norm``, ``fn.to_qkv``,
``fn.rel_pos_bias``, ``fn.to_out.0``; 4, 6, 10, 12 GDFN ``norm``, ``fn.project_in``,
``fn.dwconv``, ``fn.project_out``; 5 and 11 channel attention ``norm``, ``fn.temperature``,
``fn.qkv``, ``fn.qkv_dwconv``, ``fn.project_out``; 1, 3, 7, 9 are the published einops
rearranges, without parameters), ``residual_layer.{i}.residual_layer.{block_num}`` (the 1x1),
``residual_layer.{i}.esa.{conv1,conv_f,conv2,conv3,conv4}``, ``output``, ``up.0``.  The
published forward pads the input with zeros to a multiple of the window; this one also pads
it to at least :data:`MIN_SIDE` (the ESA's pooling needs 15 pixels), and crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    constant,
    multihead_attention,
    relative_position_index,
    tail_layout,
    window_merge,
    window_of_table,
    window_multiple,
    window_partition,
    window_radius,
)
from .layers import conv, indices, layout_matcher, shape, shuffle_scale
from .registry import Arch, register_arch

MIN_SIDE = 15
"""Smallest side the ESA runs on (a 3x3 of stride 2, then a 7x7 pool): smaller inputs are padded."""

ESA_REACH = 28
"""Pixels an ESA output reads on either side (in its input): the strided conv, the pool and the
3x3 cover rows ``6j - 6 .. 6j + 20`` of coarse row ``j``, and the bilinear upsampling reads the
two coarse rows around ``(x + 0.5) * H3 / H - 0.5``; the ratio depends on the map's size, and
28 is the largest reach over sides 15 to 1500 (computed from that index arithmetic)."""

MARKER = "signed_range"
"""The key that marks a network (and a file) trained on the authors' [-1, 1] range."""

_THOP = ("total_ops", "total_params")


# --- the OSA block ---------------------------------------------------------------------------------


class _SpatialMean(nn.Module):
    """``(B, C, H, W)`` -> ``(B, C)``: the mean over the whole map (the published einops reduce)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(W2 SiLU(W1 mean(x)))``, bias-free linears (key ``gate.{1,3}``)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.gate = nn.Sequential(
            _SpatialMean(),
            nn.Linear(dim, hidden, bias=False),
            nn.SiLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]


class MBConv(nn.Module):
    """The inverted bottleneck at expansion 1 with a skip: ``x + fn(x)`` (key ``fn``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fn = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            SqueezeExcitation(dim),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fn(x)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of each pixel of a ``(B, C, H, W)`` map, eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class _Attention(nn.Module):
    """Multi-head self-attention over ``window^2`` tokens, bias-free projections, the optional
    learned relative position bias (keys ``to_qkv``, ``rel_pos_bias``, ``to_out.0``)."""

    def __init__(self, dim: int, window: int, pe: bool) -> None:
        super().__init__()
        head_dim = dim // 4
        if head_dim < 1 or dim % head_dim:
            raise ValueError(f"OSA attention splits {dim} channels in heads of {dim} // 4: they do not divide")
        self.heads, self.window = dim // head_dim, window
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.rel_pos_bias = nn.Embedding((2 * window - 1) ** 2, self.heads) if pe else None
        self.register_buffer("index", constant(relative_position_index(window, window)), persistent=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B * nW, window^2, C)`` -> the same."""
        n = tokens.shape[1]
        if self.rel_pos_bias is not None:
            bias = self.rel_pos_bias.weight[self.index].permute(2, 0, 1)[None]
        else:
            bias = tokens.new_zeros(1, self.heads, n, n)
        q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)
        return self.to_out(multihead_attention(q, k, v, bias, self.heads))


class SpatialAttention(nn.Module):
    """``x + attention(LN(x))`` over windows (``grid=False``: ``window`` x ``window`` blocks of
    neighbours) or the grid (``grid=True``: tokens ``H / window`` apart, spanning the map);
    keys ``norm``, ``fn``."""

    def __init__(self, dim: int, window: int, pe: bool, grid: bool) -> None:
        super().__init__()
        self.window, self.grid = window, grid
        self.norm = nn.LayerNorm(dim)
        self.fn = _Attention(dim, window, pe)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ws = self.window
        y = self.norm(x.permute(0, 2, 3, 1))  # B, H, W, C
        if self.grid:  # row r = i * (H / ws) + a: the i-th token of grid cell a
            y = y.reshape(b, ws, h // ws, ws, w // ws, c).transpose(1, 2).transpose(3, 4).reshape(b, h, w, c)
        y = window_merge(self.fn(window_partition(y, ws, ws)), ws, ws, h, w)
        if self.grid:
            y = y.reshape(b, h // ws, ws, w // ws, ws, c).transpose(1, 2).transpose(3, 4).reshape(b, h, w, c)
        return x + y.permute(0, 3, 1, 2)


class GatedFeedForward(nn.Module):
    """``x + project_out(GELU(a) * b)``, ``(a, b)`` = depthwise 3x3 of a 1x1 to twice the width,
    on the channel-normalised map; bias-free (keys ``norm``, ``fn.{project_in,dwconv,project_out}``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fn = nn.Module()
        self.fn.project_in = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        self.fn.dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False)
        self.fn.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.fn.dwconv(self.fn.project_in(self.norm(x))).chunk(2, dim=1)
        return x + self.fn.project_out(F.gelu(a) * g)


class _ChannelFn(nn.Module):
    """The projections of the channel attention (keys ``temperature``, ``qkv``, ``qkv_dwconv``,
    ``project_out``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)


class ChannelAttention(nn.Module):
    """``x + channel attention(LN2d(x))`` (Eq. 5): per head a ``d x d`` attention between
    channels from L2-normalised queries and keys, times a learned temperature, over the pixels
    of each window (``grid=False``) or over the pixels at one in-window offset of every window
    (``grid=True``, spanning the map); keys ``norm``, ``fn``."""

    def __init__(self, dim: int, window: int, grid: bool, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"OSA channel attention splits {dim} channels in {heads} heads: they do not divide")
        self.window, self.grid, self.heads = window, grid, heads
        self.norm = LayerNorm2d(dim)
        self.fn = _ChannelFn(dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ws, nh = self.window, self.heads
        d, gh, gw = c // nh, h // ws, w // ws
        qkv = self.fn.qkv_dwconv(self.fn.qkv(self.norm(x)))
        # (B, heads, d, gh, ws, gw, ws) -> (B, groups, heads, d, pixels of a group)
        order, pixels = ((0, 4, 6, 1, 2, 3, 5), gh * gw) if self.grid else ((0, 3, 5, 1, 2, 4, 6), ws * ws)
        q, k, v = (
            t.reshape(b, nh, d, gh, ws, gw, ws).permute(order).reshape(b, -1, nh, d, pixels)
            for t in qkv.chunk(3, dim=1)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.fn.temperature, dim=-1)
        out = attn @ v  # B, G, heads, d, P
        if self.grid:
            out = out.reshape(b, ws, ws, nh, d, gh, gw).permute(0, 3, 4, 5, 1, 6, 2)
        else:
            out = out.reshape(b, gh, gw, nh, d, ws, ws).permute(0, 3, 4, 1, 5, 2, 6)
        return x + self.fn.project_out(out.reshape(b, c, h, w))


class OSABlock(nn.Module):
    """The omni self-attention block (Fig. 4) as the published ``layer`` sequence: indices 1, 3,
    7 and 9 are the published parameter-free rearranges (identities here: each attention lays
    its tokens out itself)."""

    def __init__(self, dim: int, window: int, pe: bool) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            MBConv(dim),
            nn.Identity(),
            SpatialAttention(dim, window, pe, grid=False),
            nn.Identity(),
            GatedFeedForward(dim),
            ChannelAttention(dim, window, grid=False),
            GatedFeedForward(dim),
            nn.Identity(),
            SpatialAttention(dim, window, pe, grid=True),
            nn.Identity(),
            GatedFeedForward(dim),
            ChannelAttention(dim, window, grid=True),
            GatedFeedForward(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class ESA(nn.Module):
    """Enhanced spatial attention (RFANet), as OmniSR uses it: ``x * sigmoid(conv4(up(conv3(
    maxpool(conv2(c))))) + conv_f(c)))``, ``c = conv1(x)``."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, channels, 1)
        self.conv_f = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv4 = nn.Conv2d(channels, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.conv1(x)
        coarse = self.conv3(F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3))
        coarse = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(coarse + self.conv_f(c1)))


class OSAG(nn.Module):
    """Omni self-attention group: ``esa(x + conv1x1(blocks(x)))`` (keys ``residual_layer``, ``esa``)."""

    def __init__(self, dim: int, block_num: int, window: int, pe: bool, bias: bool) -> None:
        super().__init__()
        blocks: list[nn.Module] = [OSABlock(dim, window, pe) for _ in range(block_num)]
        self.residual_layer = nn.Sequential(*blocks, nn.Conv2d(dim, dim, 1, bias=bias))
        self.esa = ESA(max(dim // 4, 16), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.esa(self.residual_layer(x) + x)


class OmniSR(nn.Module):
    """OmniSR (Wang et al. 2023, Fig. 2); RGB 0..1 in and out (``signed``: the net runs on the
    authors' [-1, 1] range)."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        res_num: int = 5,
        block_num: int = 1,
        window_size: int = 8,
        pe: bool = True,
        bias: bool = True,
        signed: bool = False,
    ) -> None:
        super().__init__()
        self.scale, self.in_chans, self.window, self.signed = scale, in_chans, window_size, signed
        self.input = nn.Conv2d(in_chans, num_feat, 3, padding=1, bias=bias)
        self.residual_layer = nn.Sequential(*(OSAG(num_feat, block_num, window_size, pe, bias) for _ in range(res_num)))
        self.output = nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=bias)
        self.up = nn.Sequential(conv(num_feat, in_chans * scale * scale, bias=bias), nn.PixelShuffle(scale))
        if signed:  # the marker of the authors' range (see the module docstring); its value is unused
            self.register_buffer(MARKER, constant(torch.ones(1, device="cpu")))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c != self.in_chans and self.in_chans == 1:
            return self.forward(x.reshape(b * c, 1, h, w)).reshape(b, c, h * self.scale, w * self.scale)
        ws = self.window
        ph, pw = (-max(h, MIN_SIDE)) % ws + max(h, MIN_SIDE) - h, (-max(w, MIN_SIDE)) % ws + max(w, MIN_SIDE) - w
        if self.signed:
            x = x * 2.0 - 1.0
        x = F.pad(x, (0, pw, 0, ph))  # zeros, as published
        feat = self.input(x)
        y = self.up(self.output(self.residual_layer(feat)) + feat)[..., : h * self.scale, : w * self.scale]
        return (y + 1.0) / 2.0 if self.signed else y


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "num_feat": 64,
    "res_num": 5,
    "block_num": 1,
    "window_size": 8,
    "pe": True,
    "bias": True,
}
"""The published OmniSR (``train_OmniSR_X4_DF2K.yaml``; 0.79M parameters at x4)."""


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    """The local field: MBConv's depthwise 3x3, the window attentions, the GDFNs' and the channel
    attentions' depthwise 3x3s, the ESA; the grid attentions and the squeeze-excitation are
    global and count as the identity here."""
    k = {**DEFAULTS, **kwargs}
    ws = k["window_size"]
    window = ("window", ws, 0, 0, 0)
    block = [("conv", 1), window, ("conv", 1), ("conv", 1), window, ("conv", 1), ("conv", 1), ("conv", 2)]
    group = block * k["block_num"] + [("conv", ESA_REACH)]
    return window_radius(
        [("conv", 1), *group * k["res_num"], ("conv", 1), *tail_layout("pixelshuffledirect", scale)], scale
    )


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop thop's profiling buffers; where they were, mark the file as the authors' (``signed``)."""
    profiled = [k for k in sd if k.rsplit(".", 1)[-1] in _THOP]
    if not profiled:
        return sd
    out = {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in _THOP}
    if "input.weight" in out and "up.0.weight" in out:
        out.setdefault(MARKER, torch.ones(1))
    return out


_BLOCK = "residual_layer.0.residual_layer.0.layer."


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    num_feat, in_chans = shape(sd, "input.weight")[:2]
    table = f"{_BLOCK}2.fn.rel_pos_bias.weight"
    kwargs = {
        "in_chans": in_chans,
        "num_feat": num_feat,
        "res_num": len(indices(sd, "residual_layer.", "esa.conv1.weight")),
        "block_num": len(indices(sd, "residual_layer.0.residual_layer.", "layer.0.fn.0.weight")),
        "window_size": window_of_table(shape(sd, table)[0]) if table in sd else DEFAULTS["window_size"],
        "pe": table in sd,
        "bias": "input.bias" in sd,
        "signed": MARKER in sd,
    }
    return kwargs, shuffle_scale(shape(sd, "up.0.weight")[0], in_chans)


_SIGNATURE = (
    "input.weight",
    f"{_BLOCK}0.fn.0.weight",
    "residual_layer.0.esa.conv1.weight",
    "output.weight",
    "up.0.weight",
)

_TINY = {"num_feat": 8, "res_num": 1, "block_num": 1, "window_size": 1}

ARCH = register_arch(
    Arch(
        name="omnisr",
        build=OmniSR,
        convention="rgb",
        radius=_radius,
        paper="Wang et al., OmniSR, CVPR 2023",
        size_multiple=window_multiple(DEFAULTS["window_size"]),
        global_context=True,  # squeeze-excitation over the map, grid attentions strided across it
        fp16=False,  # unmeasured: a fidelity transformer stays fp32 (as SwinIR, HAT, DAT)
        bf16=False,
        matches=layout_matcher(_SIGNATURE, OmniSR, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        # window 1 and one block only: at larger windows the grid attention mixes tokens H / window
        # apart, and deeper random nets amplify the global paths, beyond the contract's bounds on
        # the leak (1 % of the change, 45 dB); tests/test_omnisr_srformer.py covers those forms
        test_configs=(
            (_TINY, 2),
            ({**_TINY, "bias": False, "signed": True}, 3),
            (_TINY, 4),
        ),
    )
)
