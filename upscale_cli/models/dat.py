"""DAT: Chen, Zhang, Gu, Kong, Yang, Yu, "Dual Aggregation Transformer for Image
Super-Resolution", ICCV 2023.

SwinIR's frame (:class:`~.attention.WindowSR`) around residual groups of dual aggregation
transformer blocks (DATB, Sec. 3, Fig. 2), alternating:

* spatial blocks (DSTB): window self-attention on half the channels in ``split_size[0] x
  split_size[1]`` windows and on the other half in the transposed windows (Sec. 3.2), every
  other spatial block on windows shifted by half their size; beside it a depth-wise 3x3 conv
  (with batch norm, GELU) on the values.  The adaptive interaction module (AIM, Sec. 3.3)
  crosses them: a channel map from the conv branch (global average pooling, 1x1 convs) gates the
  attention output, a spatial map from the attention (1x1 convs) gates the conv branch;
* channel blocks (DCTB): self-attention across channels per head (Eq. 3: L2-normalised
  queries and keys over all pixels, a learned temperature), the same conv branch and AIM with
  the roles of the maps swapped;
* each followed by the spatial-gate feed-forward network (SGFN, Sec. 3.4): a linear layer to
  ``expansion_factor * dim``, GELU, half of it gating the other half after layer norm and a
  depth-wise 3x3 conv, a linear layer back.

The window attention's position bias comes from a small MLP over the relative coordinates
(``rpe_biases``, a persistent buffer as published: the split size is read off it).
Published configurations (``options/Test``): DAT (embed 180, six groups of six blocks, split
8x32, expansion 4), DAT-S (split 8x16, expansion 2), DAT-2 (split 8x32, expansion 2),
DAT-light (embed 60, one group of 18, ``3conv``, ``pixelshuffledirect``); all 6 heads.

Key layout = zhengchen1999/DAT ``basicsr/archs/dat_arch.py``: ``conv_first``, ``before_RG.1``,
``layers.{i}.blocks.{j}.{norm1,attn.*,norm2,ffn.{fc1,sg.norm,sg.conv,fc2}}``, ``layers.{i}.conv``,
``norm``, ``conv_after_body``, the reconstruction.  Spatial ``attn``: ``qkv``, ``proj``,
``attns.{0,1}.{pos.*,rpe_biases}``, ``dwconv.{0,1}``, ``channel_interaction.{1,2,4}``,
``spatial_interaction.{0,1,3}``; channel ``attn``: ``temperature`` instead of ``attns``.  The
``relative_position_index`` and ``attn_mask_{0,1}`` buffers of the published files are
recomputed here (:func:`convert_keys` drops them).  The published blocks zero-pad the features
to the split size; here the input is padded (reflect) to it once, as for SwinIR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    ResidualBlocks,
    WindowSR,
    constant,
    drop_buffers,
    frame_radius,
    multihead_attention,
    relative_position_index,
    shift_mask,
    to_image,
    to_tokens,
    window_merge,
    window_partition,
)
from .layers import conv, indices, layout_matcher, shape
from .registry import Arch, register_arch
from .swinir import upsampler_scale


class ToTokens(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` (the published ``Rearrange``, ``before_RG.0``)."""

    def forward(self, x: Tensor) -> Tensor:
        return to_tokens(x)


def _mlp_layer(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))


class DynamicPosBias(nn.Module):
    """Position bias per head from the relative coordinates: ``pos3(pos2(pos1(pos_proj(d))))``,
    each ``pos{k}`` layer norm, ReLU, linear (the CrossFormer design DAT follows)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = _mlp_layer(pos_dim, pos_dim)
        self.pos2 = _mlp_layer(pos_dim, pos_dim)
        self.pos3 = _mlp_layer(pos_dim, heads)

    def forward(self, coords: Tensor) -> Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(coords))))


def relative_coords(wh: int, ww: int) -> Tensor:
    """``((2wh-1)(2ww-1), 2)`` relative offsets ``(dy, dx)``, row by row (``rpe_biases``)."""
    rows, cols = torch.arange(1 - wh, wh, device="cpu"), torch.arange(1 - ww, ww, device="cpu")
    dy, dx = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=1).float()


class SpatialAttention(nn.Module):
    """Multi-head self-attention in ``wh x ww`` windows with the dynamic position bias."""

    def __init__(self, dim: int, heads: int, wh: int, ww: int) -> None:
        super().__init__()
        self.heads, self.wh, self.ww = heads, wh, ww
        self.pos = DynamicPosBias(dim // 4, heads)
        self.register_buffer("rpe_biases", constant(relative_coords(wh, ww)))
        self.register_buffer("index", constant(relative_position_index(wh, ww)), persistent=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Maps ``(B, H, W, C)`` of queries, keys and values -> the attention output, same shape."""
        _, h, w, _ = q.shape
        wh, ww = self.wh, self.ww
        bias = self.pos(self.rpe_biases)[self.index].permute(2, 0, 1)[None]  # 1, heads, N, N
        if mask is not None:
            bias = bias + mask[:, None]
        q, k, v = (window_partition(t, wh, ww) for t in (q, k, v))
        return window_merge(multihead_attention(q, k, v, bias, self.heads), wh, ww, h, w)


def rectangle_attentions(dim: int, heads: int, split: Sequence[int]) -> nn.ModuleList:
    """The two window branches on half the channels each (Sec. 3.2): ``split[0] x split[1]``
    windows and the transposed ones (key ``attns.{0,1}``; RGT's L-SA keeps them)."""
    s0, s1 = split
    return nn.ModuleList(
        [SpatialAttention(dim // 2, heads // 2, s0, s1), SpatialAttention(dim // 2, heads // 2, s1, s0)]
    )


def attend_rectangles(
    attns: nn.ModuleList, split: Sequence[int], shifted: bool, qkv: Sequence[Tensor], masks: Sequence[Tensor]
) -> Tensor:
    """The branches of :func:`rectangle_attentions` on ``(B, H, W, C)`` maps of queries, keys and
    values: the first half of the channels in ``split`` windows, the second in the transposed
    ones, each rolled by half its window when ``shifted``; the outputs side by side, ``(B, H, W, C)``."""
    c = qkv[0].shape[-1]
    s0, s1 = (s // 2 for s in split)
    outs = []
    for i, (attn, shifts) in enumerate(zip(attns, ((s0, s1), (s1, s0)))):
        part = slice(0, c // 2) if i == 0 else slice(c // 2, c)
        branch = [t[..., part] for t in qkv]
        if shifted:
            branch = [torch.roll(t, (-shifts[0], -shifts[1]), dims=(1, 2)) for t in branch]
        y = attn(*branch, masks[i] if shifted else None)
        outs.append(torch.roll(y, shifts, dims=(1, 2)) if shifted else y)
    return torch.cat(outs, dim=-1)


class AIM(nn.Module):
    """The conv branch and the interaction maps shared by both attention blocks (Sec. 3.3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Sequential(conv(dim, dim, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
        self.channel_interaction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), conv(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8), nn.GELU(), conv(dim // 8, dim, 1)
        )
        self.spatial_interaction = nn.Sequential(
            conv(dim, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(), conv(dim // 16, 1, 1)
        )


class AdaptiveSpatialAttention(AIM):
    """Spatial block's attention: two window branches (``split`` and transposed), the conv branch
    on the values, ``attn * sigmoid(C-map(conv))`` + ``conv * sigmoid(S-map(attn))``, ``proj``."""

    def __init__(self, dim: int, heads: int, split: Sequence[int], shifted: bool, qkv_bias: bool) -> None:
        super().__init__(dim)
        self.split, self.shifted = tuple(split), shifted
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attns = rectangle_attentions(dim, heads, self.split)

    def forward(self, x: Tensor, h: int, w: int, masks: Sequence[Tensor]) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h, w, 3 * c).chunk(3, dim=-1)
        attended = attend_rectangles(self.attns, self.split, self.shifted, (q, k, v), masks).reshape(b, n, c)
        conv_x = self.dwconv(v.permute(0, 3, 1, 2))
        channel_map = self.channel_interaction(conv_x).reshape(b, 1, c)
        spatial_map = self.spatial_interaction(to_image(attended, h, w))
        mixed = attended * torch.sigmoid(channel_map) + to_tokens(torch.sigmoid(spatial_map) * conv_x)
        return self.proj(mixed)


class AdaptiveChannelAttention(AIM):
    """Channel block's attention (Eq. 3): ``softmax(temperature * q^ k^T) v`` over channels per
    head, ``q^``, ``k^`` L2-normalised over the pixels; the conv branch;
    ``attn * sigmoid(S-map(conv))`` + ``conv * sigmoid(C-map(attn))``, ``proj``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__(dim)
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: int, w: int, _masks: Sequence[Tensor]) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)  # B, heads, d, N
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1)
        attended = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        conv_x = self.dwconv(v.reshape(b, c, h, w))
        channel_map = self.channel_interaction(to_image(attended, h, w))
        spatial_map = self.spatial_interaction(conv_x).reshape(b, n, 1)
        mixed = attended * torch.sigmoid(spatial_map) + to_tokens(conv_x * torch.sigmoid(channel_map))
        return self.proj(mixed)


class SpatialGate(nn.Module):
    """``x1 * dwconv(LN(x2))`` for the two halves of the channels (keys ``norm``, ``conv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = conv(dim, dim, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x1 * to_tokens(self.conv(to_image(self.norm(x2), h, w)))


class SGFN(nn.Module):
    """Spatial-gate feed-forward network (Sec. 3.4): ``fc2(SG(GELU(fc1(x))))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.sg = SpatialGate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.sg(self.act(self.fc1(x)), h, w))


def is_shifted(group: int, block: int) -> bool:
    """Whether a spatial block (even ``block``) shifts its windows: the published schedule,
    blocks 2, 6, 10.. in even groups and 0, 4, 8.. in odd ones, so that shifts alternate."""
    return block % 4 == (2 if group % 2 == 0 else 0)


class DATB(nn.Module):
    """Dual aggregation transformer block: ``x + attn(LN x)``, then ``x + SGFN(LN x)``; spatial
    attention in even blocks, channel attention in odd ones."""

    def __init__(
        self, dim: int, heads: int, split: Sequence[int], expansion: float, qkv_bias: bool, group: int, block: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if block % 2 == 0:
            self.attn: nn.Module = AdaptiveSpatialAttention(dim, heads, split, is_shifted(group, block), qkv_bias)
        else:
            self.attn = AdaptiveChannelAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = SGFN(dim, int(dim * expansion))

    def forward(self, x: Tensor, h: int, w: int, masks: Sequence[Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), h, w, masks)
        return x + self.ffn(self.norm2(x), h, w)


class ResidualGroup(ResidualBlocks):
    """``x + conv(DATBs(x))`` (keys ``blocks.{j}``, ``conv``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        split: Sequence[int],
        expansion: float,
        qkv_bias: bool,
        resi: str,
        group: int,
    ) -> None:
        super().__init__((DATB(dim, heads, split, expansion, qkv_bias, group, j) for j in range(depth)), dim, resi)


class SplitWindowSR(WindowSR):
    """DAT's use of SwinIR's frame: tokens by ``before_RG`` (a layer norm after them), and for the
    groups the masks of the ``split`` windows and of the transposed ones, shifted by half their
    size (RGT keeps it)."""

    split: tuple[int, ...]

    def init_embedding(self, split: Sequence[int], embed_dim: int) -> None:
        """``split`` and the embedding (key ``before_RG.1``, the published ``Rearrange`` and norm)."""
        self.split = tuple(split)
        self.before_RG = nn.Sequential(ToTokens(), nn.LayerNorm(embed_dim))

    def embed(self, x: Tensor) -> Tensor:
        return self.before_RG(x)

    def layer_masks(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        s0, s1 = self.split
        return (
            shift_mask(h, w, s0, s1, s0 // 2, s1 // 2, device),
            shift_mask(h, w, s1, s0, s1 // 2, s0 // 2, device),
        )


class DAT(SplitWindowSR):
    """DAT (Chen et al. 2023, Fig. 2); RGB 0..1 in and out."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        embed_dim: int = 180,
        depth: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        split_size: list[int] | tuple[int, ...] = (8, 32),
        expansion_factor: float = 4.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
        num_feat: int = 64,
        img_range: float = 1.0,
        qkv_bias: bool = True,
    ) -> None:
        if len(depth) != len(num_heads):
            raise ValueError(f"depth {list(depth)} and num_heads {list(num_heads)} differ in length")
        if upsampler not in ("pixelshuffle", "pixelshuffledirect") or resi_connection == "identity":
            raise ValueError(f"DAT has no {upsampler} / {resi_connection} variant")
        super().__init__(scale, in_chans, embed_dim, upsampler, num_feat, img_range, math.lcm(*split_size))
        self.init_embedding(split_size, embed_dim)
        groups = (
            ResidualGroup(embed_dim, d, h, split_size, expansion_factor, qkv_bias, resi_connection, i)
            for i, (d, h) in enumerate(zip(depth, num_heads))
        )
        self.init_body(groups, embed_dim, resi_connection)


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 180,
    "depth": [6, 6, 6, 6, 6, 6],
    "num_heads": [6, 6, 6, 6, 6, 6],
    "split_size": [8, 32],
    "expansion_factor": 4.0,
    "upsampler": "pixelshuffle",
    "resi_connection": "1conv",
}
"""DAT of the paper (Table 3, 14.8M parameters at x4)."""


def block_steps(split: Sequence[int], group: int, block: int) -> list[tuple]:
    """A DATB as :func:`~.attention.window_radius` steps, along either axis (the two window
    branches hold both orientations).  The channel attention and the C-maps read the whole map:
    that part is global.  RGT's L-SA blocks have the same field."""
    if block % 2:
        return [("conv", 1), ("conv", 1)]  # the conv branch on the values, the SGFN's dwconv
    shifted = is_shifted(group, block)
    windows = tuple((("window", s, s // 2 if shifted else 0, 0, 0),) for s in split)
    return [("branches", (*windows, (("conv", 1),))), ("conv", 1)]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    k = {**DEFAULTS, **kwargs}
    split = k["split_size"]
    groups = ([s for j in range(d) for s in block_steps(split, i, j)] for i, d in enumerate(k["depth"]))
    return frame_radius(groups, k["resi_connection"], k["upsampler"], scale)


def _size_multiple(kwargs: Mapping[str, Any], _scale: int) -> int:
    return math.lcm(*kwargs.get("split_size", DEFAULTS["split_size"]))


_BUFFERS = (".relative_position_index", ".attn_mask_0", ".attn_mask_1")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the published index and mask buffers (recomputed here; the masks are sized for the
    training patch)."""
    return drop_buffers(sd, _BUFFERS)


def _heads(sd: Mapping[str, Tensor], group: int) -> int:
    """Heads of a group: the channel block's temperatures, or twice a window branch's."""
    key = f"layers.{group}.blocks.1.attn.temperature"
    if key in sd:
        return shape(sd, key)[0]
    return 2 * shape(sd, f"layers.{group}.blocks.0.attn.attns.0.pos.pos3.2.weight")[0]


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    groups = indices(sd, "layers.", "blocks.0.norm1.weight")
    upsampler = "pixelshuffle" if "conv_last.weight" in sd else "pixelshuffledirect"
    num_feat = shape(sd, "conv_before_upsample.0.weight")[0] if "conv_before_upsample.0.weight" in sd else 64
    corner = sd["layers.0.blocks.0.attn.attns.0.rpe_biases"][-1]  # the offset (wh - 1, ww - 1)
    kwargs = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": [len(indices(sd, f"layers.{i}.blocks.", "norm1.weight")) for i in groups],
        "num_heads": [_heads(sd, i) for i in groups],
        "split_size": [int(c) + 1 for c in corner.tolist()],
        "expansion_factor": shape(sd, "layers.0.blocks.0.ffn.fc1.weight")[0] / embed_dim,
        "upsampler": upsampler,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        "num_feat": num_feat,
        "qkv_bias": "layers.0.blocks.0.attn.qkv.bias" in sd,
    }
    return kwargs, upsampler_scale(sd, upsampler, in_chans, num_feat)


_SIGNATURE = (
    "conv_first.weight",
    "before_RG.1.weight",
    "layers.0.blocks.0.attn.attns.0.rpe_biases",
    "layers.0.blocks.0.ffn.sg.conv.weight",
    "norm.weight",
)

_TINY = {"embed_dim": 32, "depth": [2], "num_heads": [2], "split_size": [2, 4], "expansion_factor": 2.0, "num_feat": 8}

ARCH = register_arch(
    Arch(
        name="dat",
        build=DAT,
        convention="rgb",
        radius=_radius,
        paper="Chen et al., DAT, ICCV 2023",
        global_context=True,  # channel self-attention and the AIM's channel maps span the whole map
        size_multiple=_size_multiple,
        fp16=False,  # a residual stream like SwinIR's (spandrel too runs all three in fp32 or bf16)
        bf16=False,  # 64-66 dB from fp32, random weights (benchmarks/transformer_tiling.py): as SwinIR
        matches=layout_matcher(_SIGNATURE, DAT, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        test_configs=(
            (_TINY, 2),  # DAT / DAT-2 shaped (the expansion factor tells them apart)
            ({**_TINY, "split_size": [2, 2], "depth": [1, 2], "num_heads": [2, 2]}, 3),  # DAT-S: other split
            (
                {**_TINY, "upsampler": "pixelshuffledirect", "resi_connection": "3conv", "depth": [3], "num_feat": 64},
                4,
            ),  # DAT-light
        ),
    )
)
