"""SRFormer: Zhou, Li, Wang, Guo, Hou, "SRFormer: Permuted Self-Attention for Single Image
Super-Resolution", ICCV 2023.

SwinIR's frame (:class:`~.attention.WindowSR`, Sec. 3.1 of SwinIR) around permuted
self-attention groups (PSA groups, Sec. 3.2, Fig. 3): each holds ``depth`` PSA blocks, every
other one on windows shifted by half a window, then a conv and a skip.  A PSA block is
``x + PSA(LN x)``, then ``x + ConvFFN(LN x)``:

* permuted self-attention (Eq. 2-4): queries from every token of a ``window`` x ``window``
  window, keys and values from a linear to half the channels whose 2 x 2 neighbourhoods are
  stacked into the channels (the spatial-to-channel permutation), so each window attends to
  ``(window / 2)^2`` tokens of full width.  The relative position bias (a table of
  ``(window - 1)^2`` entries) is indexed by the offset of the query's 2 x 2 cell from the key's;
  on shifted windows the published mask compares each query's region with its key cell's
  region on the half-size map, whose last band starts ``ceil(shift / 2)`` cells from the end;
* ConvFFN (Sec. 3.3): ``fc2(h + GELU(dwconv5x5(h)))`` with ``h = GELU(fc1 x)``.

The published configurations (``options/test/SRFormer``), read off the shapes here: classical
SRFormer (embed 180, six groups of six blocks, 6 heads, window 22, MLP ratio 2,
``pixelshuffle``), SRFormer-light (embed 60, four groups, window 16, ``pixelshuffledirect``)
and the real-world SRFormer-S x4 (classical layout, window 24, ``pixelshuffle``); the published
code also builds ``nearest+conv`` and the x1 restoration form.

A quirk of the published mask kept here: with an odd shift (window 22: shift 11), the key
cells on the shifted bands' border pair a row (column) from the image's far edge with one from
its near edge, and queries of the wrapped band attend to them: the first ``shift`` rows and
columns of the image read its last row and column.  Interior pixels keep the window field;
tiles differ from the whole image in the image's first rows and columns only.  Windows of a
multiple of 4 (16, 24) have no such cells.

Key layout = HVision-NKU/SRFormer ``basicsr/archs/srformer_arch.py``: ``conv_first``,
``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}.{norm1,attn.q,attn.kv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.dwconv.depthwise_conv.0,mlp.fc2}``,
``layers.{i}.conv``, ``norm``, ``conv_after_body``, then SwinIR's reconstruction keys.  The
published buffers (``attn.aligned_relative_position_index``, ``attn_mask`` sized for the
training patch) are recomputed: :func:`convert_keys` drops them.  The absolute position
embedding (``ape``, off in every published configuration) is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    MASK,
    SwinBlock,
    alternate_shift,
    bands,
    constant,
    drop_buffers,
    frame_radius,
    multihead_attention,
    relative_position_index,
    to_image,
    to_tokens,
    window_multiple,
    window_partition,
)
from .layers import layout_matcher
from .registry import Arch, register_arch
from . import swinir
from .swinir import SwinIR, infer_rstb


def aligned_index(window: int) -> Tensor:
    """``(window^2, (window/2)^2)`` index into the bias table: query ``(y, x)`` of the window and
    key cell ``(a, b)`` get the Swin index of ``(y // 2, x // 2)`` against ``(a, b)``."""
    p = window // 2
    base = relative_position_index(p, p)  # p^2, p^2
    ys, xs = torch.meshgrid(torch.arange(window, device="cpu"), torch.arange(window, device="cpu"), indexing="ij")
    return base[((ys // 2) * p + xs // 2).flatten()]


def permuted_mask(h: int, w: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """``(nW, window^2, (window/2)^2)`` mask of the shifted windows: :data:`MASK` where a query's
    region (bands of the rolled map, Swin's) differs from its key cell's region on the half-size
    map (bands of ``window / 2`` and ``ceil(shift / 2)``, as published)."""
    p, half = window // 2, -(-shift // 2)
    fine = bands(h, window, shift)[:, None] * 3 + bands(w, window, shift)[None, :]
    coarse = bands(h // 2, p, half)[:, None] * 3 + bands(w // 2, p, half)[None, :]
    queries = window_partition(fine[None, :, :, None], window, window)[..., 0]
    keys = window_partition(coarse[None, :, :, None], p, p)[..., 0]
    differ = queries[:, :, None] != keys[:, None, :]
    return torch.zeros(differ.shape).masked_fill_(differ, MASK).to(device)


class PSA(nn.Module):
    """Permuted self-attention (Eq. 2-4); keys ``q``, ``kv``, ``proj``, ``relative_position_bias_table``."""

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if window % 2 or dim % 4:
            raise ValueError(f"PSA needs an even window and channels in fours, not {window} and {dim}")
        self.window, self.heads = window, heads
        p = window // 2
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * p - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("index", constant(aligned_index(window)), persistent=False)
        self.kv = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``(B * nW, window^2, C)`` windows -> the same; ``mask`` ``(nW, N, N / 4)`` or None."""
        bw, n, c = x.shape
        p = self.window // 2
        # each 2 x 2 cell's keys (then values), a quarter of the channels per token, stacked
        kv = self.kv(x).reshape(bw, p, 2, p, 2, 2, c // 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(bw, n // 4, 2, c)
        bias = self.relative_position_bias_table[self.index].permute(2, 0, 1)  # heads, N, N / 4
        bias = bias[None] if mask is None else bias[None] + mask[:, None]
        return self.proj(multihead_attention(self.q(x), kv[:, :, 0], kv[:, :, 1], bias, self.heads))


class _DWConv(nn.Module):
    """The ConvFFN's depthwise 5x5 with GELU (key ``depthwise_conv.0``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.depthwise_conv = nn.Sequential(nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden), nn.GELU())

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return to_tokens(self.depthwise_conv(to_image(x, h, w)))


class ConvFFN(nn.Module):
    """``fc2(y + dwconv(y))``, ``y = GELU(fc1 x)`` (Sec. 3.3; keys ``fc1``, ``dwconv``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        y = F.gelu(self.fc1(x))
        return self.fc2(y + self.dwconv(y, h, w))


class PSABlock(SwinBlock):
    """``x + PSA(LN x)`` on (shifted) windows, then ``x + ConvFFN(LN x)``: a Swin layer with
    SRFormer's attention and feed-forward network (keys ``norm1``, ``attn``, ``norm2``, ``mlp``)."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool) -> None:
        attn, mlp = PSA(dim, window, heads, qkv_bias), ConvFFN(dim, int(dim * mlp_ratio))
        super().__init__(dim, heads, window, shift, mlp_ratio, qkv_bias, attn=attn, mlp=mlp)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        x = x + self.attend(self.norm1(x).reshape(x.shape[0], h, w, -1), mask).reshape(x.shape)
        return x + self.mlp(self.norm2(x), h, w)


class SRFormer(SwinIR):
    """SRFormer (Zhou et al. 2023, Fig. 3): SwinIR with PSA blocks in its groups and the permuted
    mask, window 22 by default; the other kwargs are SwinIR's.  RGB 0..1 in and out."""

    block = PSABlock

    def __init__(self, scale: int = 4, *, window_size: int = 22, **kwargs: Any) -> None:
        super().__init__(scale, window_size=window_size, **kwargs)

    def layer_masks(self, h: int, w: int, device: torch.device) -> Tensor:
        """The :func:`permuted_mask` of the windows shifted by half a window."""
        return permuted_mask(h, w, self.window, self.window // 2, device)


DEFAULTS: dict[str, Any] = {**swinir.DEFAULTS, "window_size": 22}
"""The classical SRFormer of the paper (``test_SRFormer_DF2Ksrx{2,3,4}.yml``): SwinIR-M's
layout at window 22."""


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    """Each block: its (shifted) window, then the ConvFFN's 5x5 depthwise conv."""
    k = {**DEFAULTS, **kwargs}
    ws = k["window_size"]
    groups = (
        [s for j in range(d) for s in (("window", ws, alternate_shift(ws, j), 0, 0), ("conv", 2))] for d in k["depths"]
    )
    return frame_radius(groups, k["resi_connection"], k["upsampler"], scale)


_BUFFERS = (".aligned_relative_position_index", ".attn_mask")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the buffers of the published files (recomputed here; ``attn_mask`` is sized for the
    training patch)."""
    return drop_buffers(sd, _BUFFERS)


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    """SwinIR's reading, with PSA's query projection and its bias table of half the window."""
    return infer_rstb(sd, "attn.q", "q", window_factor=2, jpeg_range=False)


_SIGNATURE = (
    "conv_first.weight",
    "layers.0.residual_group.blocks.0.attn.q.weight",
    "layers.0.residual_group.blocks.0.attn.kv.weight",
    "layers.0.residual_group.blocks.0.mlp.dwconv.depthwise_conv.0.weight",
    "norm.weight",
)

_TINY = {"embed_dim": 8, "depths": [2], "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0, "num_feat": 8}

ARCH = register_arch(
    Arch(
        name="srformer",
        build=SRFormer,
        convention="rgb",
        radius=_radius,
        paper="Zhou et al., SRFormer, ICCV 2023",
        size_multiple=window_multiple(DEFAULTS["window_size"]),
        fp16=False,  # unmeasured: a residual stream like SwinIR's, fidelity nets stay fp32
        bf16=False,
        matches=layout_matcher(_SIGNATURE, SRFormer, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        # windows of a multiple of 4: odd shifts (window 22's) tie the image's first rows to its
        # last (see the module docstring), which tiles cannot reproduce exactly
        test_configs=(
            (_TINY, 2),
            ({**_TINY, "upsampler": "pixelshuffledirect", "num_feat": 64}, 3),  # no num_feat layer
            ({**_TINY, "upsampler": "nearest+conv", "resi_connection": "3conv"}, 4),
            ({**_TINY, "upsampler": "none", "num_feat": 64, "window_size": 8, "depths": [1]}, 1),
        ),
    )
)
