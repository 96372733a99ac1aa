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

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    MASK,
    PatchEmbed,
    WindowSR,
    _bands,
    constant,
    multihead_attention,
    relative_position_index,
    residual_conv,
    residual_radius,
    tail_layout,
    to_image,
    to_tokens,
    window_merge,
    window_of_table,
    window_partition,
    window_radius,
)
from .layers import Upsampler, indices, layout_matcher, shape
from .registry import Arch, register_arch


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
    fine = _bands(h, window, shift)[:, None] * 3 + _bands(w, window, shift)[None, :]
    coarse = _bands(h // 2, p, half)[:, None] * 3 + _bands(w // 2, p, half)[None, :]
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


class PSABlock(nn.Module):
    """``x + PSA(LN x)`` on (shifted) windows, then ``x + ConvFFN(LN x)``; keys ``norm1``,
    ``attn``, ``norm2``, ``mlp``."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PSA(dim, window, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        s, ws = self.shift, self.window
        y = self.norm1(x).reshape(x.shape[0], h, w, -1)
        if s:
            y = torch.roll(y, (-s, -s), dims=(1, 2))
        y = window_merge(self.attn(window_partition(y, ws, ws), mask if s else None), ws, ws, h, w)
        if s:
            y = torch.roll(y, (s, s), dims=(1, 2))
        x = x + y.reshape(x.shape)
        return x + self.mlp(self.norm2(x), h, w)


class PSAGroup(nn.Module):
    """``x + conv(blocks(x))``, the odd blocks on shifted windows (keys ``residual_group.blocks``, ``conv``)."""

    def __init__(
        self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool, resi: str
    ) -> None:
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            PSABlock(dim, heads, window, window // 2 if j % 2 else 0, mlp_ratio, qkv_bias) for j in range(depth)
        )
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, h, w, mask)
        return to_tokens(self.conv(to_image(y, h, w))) + x


class SRFormer(WindowSR):
    """SRFormer (Zhou et al. 2023, Fig. 3); RGB 0..1 in and out."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 22,
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
        num_feat: int = 64,
        img_range: float = 1.0,
        patch_norm: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        super().__init__(scale, in_chans, embed_dim, upsampler, num_feat, img_range, window_size)
        self.window = window_size
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            PSAGroup(embed_dim, d, h, window_size, mlp_ratio, qkv_bias, resi_connection)
            for d, h in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ws = self.window
        mask = permuted_mask(h, w, ws, ws // 2, x.device)
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, h, w, mask)
        return to_image(self.norm(tokens), h, w)


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 180,
    "depths": [6, 6, 6, 6, 6, 6],
    "num_heads": [6, 6, 6, 6, 6, 6],
    "window_size": 22,
    "mlp_ratio": 2.0,
    "upsampler": "pixelshuffle",
    "resi_connection": "1conv",
}
"""The classical SRFormer of the paper (``test_SRFormer_DF2Ksrx{2,3,4}.yml``: window 22)."""


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    """Each block: its (shifted) window, then the ConvFFN's 5x5 depthwise conv."""
    k = {**DEFAULTS, **kwargs}
    ws = k["window_size"]
    resi = ("conv", residual_radius(k["resi_connection"]))
    body = []
    for depth in k["depths"]:
        for j in range(depth):
            body += [("window", ws, ws // 2 if j % 2 else 0, 0, 0), ("conv", 2)]
        body.append(resi)
    return window_radius([("conv", 1), *body, resi, *tail_layout(k["upsampler"], scale)], scale)


def _size_multiple(kwargs: Mapping[str, Any], _scale: int) -> int:
    return int(kwargs.get("window_size", DEFAULTS["window_size"]))


_BUFFERS = (".aligned_relative_position_index", ".attn_mask")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the buffers of the published files (recomputed here; ``attn_mask`` is sized for the
    training patch)."""
    return {k: v for k, v in sd.items() if not k.endswith(_BUFFERS)}


def _upsampler(sd: Mapping[str, Tensor]) -> str:
    if "conv_up1.weight" in sd:
        return "nearest+conv"
    if "conv_before_upsample.0.weight" in sd:
        return "pixelshuffle"
    return "pixelshuffledirect" if "upsample.0.weight" in sd else "none"


def _scale(sd: Mapping[str, Tensor], upsampler: str, in_chans: int, num_feat: int) -> int | None:
    if upsampler == "pixelshuffle":
        return Upsampler.scale_of(sd, "upsample.", num_feat)
    if upsampler == "pixelshuffledirect":
        out = shape(sd, "upsample.0.weight")[0]
        r = math.isqrt(out // in_chans)
        return r if r * r * in_chans == out else None
    if upsampler == "nearest+conv":
        return 4 if "conv_up2.weight" in sd else 2
    return 1


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    layers = indices(sd, "layers.", "residual_group.blocks.0.attn.q.weight")
    block = "layers.0.residual_group.blocks.0."
    tables = [shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table") for i in layers]
    upsampler = _upsampler(sd)
    num_feat = shape(sd, "conv_before_upsample.0.weight")[0] if "conv_before_upsample.0.weight" in sd else 64
    kwargs = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": [len(indices(sd, f"layers.{i}.residual_group.blocks.", "norm1.weight")) for i in layers],
        "num_heads": [t[1] for t in tables],
        "window_size": 2 * window_of_table(tables[0][0]),
        "mlp_ratio": shape(sd, f"{block}mlp.fc1.weight")[0] / embed_dim,
        "upsampler": upsampler,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        "num_feat": num_feat,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": f"{block}attn.q.bias" in sd,
    }
    return kwargs, _scale(sd, upsampler, in_chans, num_feat)


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
        size_multiple=_size_multiple,
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
