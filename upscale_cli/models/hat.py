"""HAT: Chen, Wang, Zhou, Qiao, Dong, "Activating More Pixels in Image Super-Resolution
Transformer", CVPR 2023.

SwinIR's frame (:class:`~.attention.WindowSR`, classical ``pixelshuffle`` reconstruction) around
residual hybrid attention groups (RHAG, Sec. 3.2, Fig. 4):

* hybrid attention blocks (HAB): a Swin layer (window attention, every other block on shifted
  windows) with a channel attention block (CAB) beside the attention, added with weight
  ``conv_scale`` = 0.01 (Eq. 2-3).  The CAB is a 3x3 conv to ``dim / compress_ratio``
  channels, GELU, a 3x3 conv back, and RCAN's channel attention (global average pooling, 1x1 to
  ``dim / squeeze_factor``, ReLU, 1x1, sigmoid);
* one overlapping cross-attention block (OCAB, Eq. 4-5) closing each group: queries from
  ``window`` windows, keys and values from windows of ``window * (1 + overlap_ratio)``
  around them (zero-padded at the map's edges), with a relative position bias of
  ``(window + overlap_window - 1)^2`` entries;
* a 3x3 conv (or none) and a skip.

The published configurations (``options/test``): HAT-S (embed 144, six groups of six HABs,
compress ratio 24, squeeze factor 24), HAT (embed 180, compress 3, squeeze 30) and HAT-L (twelve
groups), all with window 16, overlap ratio 0.5, 6 heads, MLP ratio 2; read off the shapes here.

Key layout = XPixelGroup/HAT ``hat/archs/hat_arch.py``: ``conv_first``, ``patch_embed.norm``,
``layers.{i}.residual_group.blocks.{j}.{norm1,attn.*,conv_block.cab.{0,2,3.attention.{1,3}},
norm2,mlp.*}``, ``layers.{i}.residual_group.overlap_attn.{norm1,qkv,relative_position_bias_table,
proj,norm2,mlp.*}``, ``layers.{i}.conv``, ``norm``, ``conv_after_body``, ``conv_before_upsample.0``,
``upsample.{0,2,..}``, ``conv_last``.  The published buffers ``relative_position_index_SA`` /
``_OCA`` are recomputed here (:func:`convert_keys` drops them).  The published forward does not
pad (its test code pads to the window), this one pads as SwinIR's does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    Blocks,
    Mlp,
    PatchEmbed,
    ResidualGroup,
    SwinBlock,
    WindowSR,
    alternate_shift,
    constant,
    frame_radius,
    multihead_attention,
    to_tokens,
    window_merge,
    window_multiple,
    window_of_table,
    window_partition,
)
from .layers import Upsampler, conv, indices, layout_matcher, shape
from .registry import Arch, register_arch


class ChannelAttention(nn.Module):
    """RCAN's channel attention: ``x * sigmoid(W2 ReLU(W1 avgpool(x)))`` (key ``attention.{1,3}``)."""

    def __init__(self, dim: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            conv(dim, dim // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            conv(dim // squeeze_factor, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block (Eq. 3): 3x3 conv, GELU, 3x3 conv, channel attention (key ``cab``)."""

    def __init__(self, dim: int, compress_ratio: int, squeeze_factor: int) -> None:
        super().__init__()
        mid = dim // compress_ratio
        self.cab = nn.Sequential(conv(dim, mid), nn.GELU(), conv(mid, dim), ChannelAttention(dim, squeeze_factor))

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class HAB(SwinBlock):
    """Hybrid attention block (Eq. 2): ``x + (S)W-MSA(LN x) + conv_scale * CAB(LN x)``, then the MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        compress_ratio: int,
        squeeze_factor: int,
        conv_scale: float,
    ) -> None:
        super().__init__(dim, heads, window, shift, mlp_ratio, qkv_bias)
        self.conv_scale = conv_scale
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        y = self.norm1(x).reshape(x.shape[0], h, w, -1)
        conv_x = to_tokens(self.conv_block(y.permute(0, 3, 1, 2)))
        x = x + self.attend(y, mask).reshape(x.shape) + self.conv_scale * conv_x
        return x + self.mlp(self.norm2(x))


def overlap_size(window: int, overlap_ratio: float) -> int:
    """Side of OCAB's key windows: ``window + int(window * overlap_ratio)`` (as published)."""
    return window + int(window * overlap_ratio)


def overlap_index(window: int, overlap: int) -> Tensor:
    """``(window^2, overlap^2)`` index into OCAB's bias table of ``(window + overlap - 1)^2``
    entries: the published mapping, key minus query coordinates plus ``window - overlap + 1``
    per axis, rows of ``window + overlap - 1``; its negative entries count from the table's end,
    as the published (negative) indexing does."""
    side = window + overlap - 1
    q, k = torch.arange(window, device="cpu"), torch.arange(overlap, device="cpu")
    qy, qx = (t.flatten() for t in torch.meshgrid(q, q, indexing="ij"))
    ky, kx = (t.flatten() for t in torch.meshgrid(k, k, indexing="ij"))
    dy = ky[None, :] - qy[:, None] + window - overlap + 1
    dx = kx[None, :] - qx[:, None] + window - overlap + 1
    return (dy * side + dx) % (side * side)


class OCAB(nn.Module):
    """Overlapping cross-attention block (Eq. 4-5): ``x + proj(OCA(LN x))``, then the MLP."""

    def __init__(
        self, dim: int, window: int, overlap_ratio: float, heads: int, qkv_bias: bool, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.overlap = overlap_size(window, overlap_ratio)
        if (self.overlap - window) % 2:
            raise ValueError(f"OCAB windows of {self.overlap} do not extend windows of {window} evenly")
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window + self.overlap - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("index", constant(overlap_index(window, self.overlap)), persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _key_windows(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B * nW, overlap^2, C)``: the zero-padded overlapping windows."""
        b, c = x.shape[:2]
        ow, ws = self.overlap, self.window
        cols = F.unfold(x, ow, stride=ws, padding=(ow - ws) // 2)  # B, C * ow * ow, nW
        return cols.reshape(b, c, ow * ow, -1).permute(0, 3, 2, 1).reshape(-1, ow * ow, c)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        ws = self.window
        q, k, v = self.qkv(self.norm1(x)).reshape(b, h, w, 3 * c).chunk(3, dim=-1)
        k, v = (self._key_windows(t.permute(0, 3, 1, 2)) for t in (k, v))
        bias = self.relative_position_bias_table[self.index].permute(2, 0, 1)[None]  # 1, heads, ws^2, ow^2
        y = multihead_attention(window_partition(q, ws, ws), k, v, bias, self.heads)
        x = x + self.proj(window_merge(y, ws, ws, h, w).reshape(x.shape))
        return x + self.mlp(self.norm2(x))


class AttenBlocks(Blocks):
    """The HABs of one group, then its OCAB (keys ``blocks.{j}``, ``overlap_attn``)."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, opts: Mapping[str, Any]) -> None:
        super().__init__(
            HAB(
                dim,
                heads,
                window,
                alternate_shift(window, j),
                opts["mlp_ratio"],
                opts["qkv_bias"],
                opts["compress_ratio"],
                opts["squeeze_factor"],
                opts["conv_scale"],
            )
            for j in range(depth)
        )
        self.overlap_attn = OCAB(dim, window, opts["overlap_ratio"], heads, opts["qkv_bias"], opts["mlp_ratio"])

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        return self.overlap_attn(super().forward(x, h, w, mask), h, w)


class RHAG(ResidualGroup):
    """Residual hybrid attention group: ``x + conv(OCAB(HABs(x)))``."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, resi: str, opts: Mapping[str, Any]) -> None:
        super().__init__(AttenBlocks(dim, depth, heads, window, opts), dim, resi)


class HAT(WindowSR):
    """HAT (Chen et al. 2023, Fig. 4); RGB 0..1 in and out."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        mlp_ratio: float = 2.0,
        resi_connection: str = "1conv",
        num_feat: int = 64,
        img_range: float = 1.0,
        patch_norm: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        if resi_connection == "3conv":
            raise ValueError("HAT closes its groups with 1conv or identity")
        super().__init__(scale, in_chans, embed_dim, "pixelshuffle", num_feat, img_range, window_size)
        self.window = window_size
        opts = {
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "compress_ratio": compress_ratio,
            "squeeze_factor": squeeze_factor,
            "conv_scale": conv_scale,
            "overlap_ratio": overlap_ratio,
        }
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        groups = (RHAG(embed_dim, d, h, window_size, resi_connection, opts) for d, h in zip(depths, num_heads))
        self.init_body(groups, embed_dim, resi_connection)


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 180,
    "depths": [6, 6, 6, 6, 6, 6],
    "num_heads": [6, 6, 6, 6, 6, 6],
    "window_size": 16,
    "compress_ratio": 3,
    "squeeze_factor": 30,
    "overlap_ratio": 0.5,
    "mlp_ratio": 2.0,
    "resi_connection": "1conv",
}
"""HAT of the paper (Table 1, 20.8M parameters at x4)."""


def group_steps(window: int, depth: int, pad: int) -> list[tuple]:
    """An RHAG as :func:`~.attention.window_radius` steps: each HAB's (shifted) window beside the
    CAB's two 3x3 convs, then the OCAB's window, whose keys reach ``pad`` pixels beyond it."""
    habs = [(("window", window, alternate_shift(window, j), 0, 0),) for j in range(depth)]
    return [*(("branches", (hab, (("conv", 2),))) for hab in habs), ("window", window, 0, pad, pad)]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    """The local field: windows beside the CAB's two 3x3 convs, the OCAB's wider keys, the convs.
    The CAB's channel attention pools the whole map: that part is global (a small leak)."""
    k = {**DEFAULTS, **kwargs}
    ws = k["window_size"]
    pad = (overlap_size(ws, k["overlap_ratio"]) - ws) // 2
    groups = (group_steps(ws, depth, pad) for depth in k["depths"])
    return frame_radius(groups, k["resi_connection"], "pixelshuffle", scale)


_BUFFERS = ("relative_position_index_SA", "relative_position_index_OCA")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the published relative position index buffers (recomputed here)."""
    return {k: v for k, v in sd.items() if k not in _BUFFERS}


def divisor_of(dim: int, out: int) -> int:
    """A ``ratio`` with ``dim // ratio == out`` (``dim / out`` when exact), as the published
    layers size their channels."""
    if out > 0 and dim % out == 0:
        return dim // out
    return next(r for r in range(1, dim + 1) if dim // r == out)


def _overlap_ratio(window: int, overlap: int) -> float:
    ratio = (overlap - window) / window
    return ratio if overlap_size(window, ratio) == overlap else (overlap - window + 0.5) / window


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    layers = indices(sd, "layers.", "residual_group.overlap_attn.qkv.weight")
    block = "layers.0.residual_group.blocks.0."
    window = window_of_table(shape(sd, f"{block}attn.relative_position_bias_table")[0])
    oca_rows = shape(sd, "layers.0.residual_group.overlap_attn.relative_position_bias_table")[0]
    num_feat = shape(sd, "conv_before_upsample.0.weight")[0]
    kwargs = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": [len(indices(sd, f"layers.{i}.residual_group.blocks.", "norm1.weight")) for i in layers],
        "num_heads": [
            shape(sd, f"layers.{i}.residual_group.overlap_attn.relative_position_bias_table")[1] for i in layers
        ],
        "window_size": window,
        "compress_ratio": divisor_of(embed_dim, shape(sd, f"{block}conv_block.cab.0.weight")[0]),
        "squeeze_factor": divisor_of(embed_dim, shape(sd, f"{block}conv_block.cab.3.attention.1.weight")[0]),
        "overlap_ratio": _overlap_ratio(window, window_of_table(oca_rows, window)),
        "mlp_ratio": shape(sd, f"{block}mlp.fc1.weight")[0] / embed_dim,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "num_feat": num_feat,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": f"{block}attn.qkv.bias" in sd,
    }
    return kwargs, Upsampler.scale_of(sd, "upsample.", num_feat)


_SIGNATURE = (
    "conv_first.weight",
    "layers.0.residual_group.blocks.0.conv_block.cab.0.weight",
    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
    "layers.0.residual_group.overlap_attn.relative_position_bias_table",
    "conv_last.weight",
)

_TINY = {"embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0, "num_feat": 8}

ARCH = register_arch(
    Arch(
        name="hat",
        build=HAT,
        convention="rgb",
        radius=_radius,
        paper="Chen et al., HAT, CVPR 2023",
        global_context=True,  # the CAB's channel attention pools the whole map
        size_multiple=window_multiple(DEFAULTS["window_size"]),
        fp16=False,  # a residual stream like SwinIR's (spandrel too runs all three in fp32 or bf16)
        bf16=False,  # 65 dB from fp32, random weights (benchmarks/transformer_tiling.py): as SwinIR
        matches=layout_matcher(_SIGNATURE, HAT, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        test_configs=(
            ({**_TINY, "compress_ratio": 3, "squeeze_factor": 6}, 2),  # HAT-shaped
            ({**_TINY, "compress_ratio": 6, "squeeze_factor": 12}, 3),  # HAT-S: thinner CAB
            ({**_TINY, "depths": [1, 1], "num_heads": [2, 2], "compress_ratio": 3, "squeeze_factor": 6}, 4),  # HAT-L
        ),
    )
)
