"""Window self-attention and the frame shared by the restoration transformers (SwinIR, HAT, DAT,
SRFormer, DRCT, RGT, ATD).

Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021, Sec. 3.2: self-attention inside non-overlapping windows (W-MSA),
every other block on windows shifted by half a window (SW-MSA), computed as a cyclic shift of
the feature map whose wrapped-around regions are kept apart by an attention mask, and a learned
relative position bias ``B`` added to the logits, ``softmax(QK^T / sqrt(d) + B) V`` (Eq. 4).
The masked logits get -100, the value of the published code (Swin, SwinIR, HAT, DAT).

:class:`WindowSR` is the frame of Liang et al., SwinIR, ICCVW 2021, Sec. 3.1 (Fig. 2), which HAT
and DAT keep: the DIV2K mean subtracted (times ``img_range``), a 3x3 shallow conv, deep features
with a conv and a long skip, and one of SwinIR's reconstruction modules.  Its modules keep the
published attribute names, so the state-dict keys are those of the published checkpoints.

:func:`window_radius` gives the exact receptive-field radius of a chain of window steps and
convolutions: with windows on a grid fixed to the image origin (tiles start at multiples of the
window, see :mod:`upscale_cli.tiling`), the shifted windows make a block's field grow by up to
half a window per side, which a fixed-size rule cannot express.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import DIV2K_MEAN, Upsampler, conv
from .loaded import pad_to_multiple

MASK = -100.0
"""Logit added between tokens of a shifted window that come from different image regions."""

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "none")
"""SwinIR's reconstruction modules (Sec. 3.1): classical, lightweight, real-world, and none
(denoising and JPEG artefact reduction: the net predicts a residual at x1)."""

RESIDUAL_CONVS = ("1conv", "3conv", "identity")
"""The conv closing each residual group and the body: a 3x3 conv; SwinIR-L's bottleneck (3x3 to
a quarter of the channels, 1x1, 3x3 back, LeakyReLU 0.2 between); none (HAT's option)."""


# --- tokens and windows ---------------------------------------------------------------------------


def to_tokens(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)


def to_image(x: Tensor, h: int, w: int) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, wh * ww, C)``: the ``wh x ww`` windows, row by row."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_merge(windows: Tensor, wh: int, ww: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def constant(cpu: Tensor) -> Tensor:
    """A copy of ``cpu`` on the default device, for buffers.  They are computed on the CPU: index
    arithmetic on the meta device costs seconds of set-up, and detection builds networks there."""
    return torch.empty(cpu.shape, dtype=cpu.dtype).copy_(cpu)


def relative_position_index(wh: int, ww: int) -> Tensor:
    """``(wh*ww, wh*ww)`` index into a ``(2wh-1)(2ww-1)`` bias table: the offset ``(dy, dx)`` of
    query ``i`` from key ``j`` as ``(dy + wh - 1) * (2ww - 1) + dx + ww - 1`` (Swin, Sec. 3.2)."""
    ys, xs = torch.meshgrid(torch.arange(wh, device="cpu"), torch.arange(ww, device="cpu"), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


def window_of_table(rows: int, other: int | None = None) -> int:
    """The window side ``w`` of a relative position bias table of ``(w + o - 1)^2`` rows, ``o`` the
    key window's side (``other``; the same window when None: ``(2w - 1)^2`` rows)."""
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"a bias table of {rows} rows is not square")
    if other is not None:
        return side + 1 - other
    if side % 2 == 0:
        raise ValueError(f"a bias table of {rows} rows is not (2w - 1)^2")
    return (side + 1) // 2


def bands(n: int, size: int, shift: int) -> Tensor:
    """Region of each row (or column) of a map rolled by ``-shift`` in windows of ``size``: 0 for
    the rows that stay whole, 1 for the last window's own rows, 2 for the rows wrapped around from
    the start (the regions of Swin's mask, Sec. 3.2; SRFormer's mask reuses them)."""
    idx = torch.arange(n)
    return (idx >= n - size).long() + (idx >= n - shift).long()


def shift_mask(h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None = None) -> Tensor:
    """``(nW, N, N)`` mask of the windows of an ``h x w`` map rolled by ``(-sh, -sw)``:
    :data:`MASK` between tokens of different regions, 0 within one (Swin Sec. 3.2, Fig. 4)."""
    regions = bands(h, wh, sh)[:, None] * 3 + bands(w, ww, sw)[None, :]
    windows = window_partition(regions[None, :, :, None], wh, ww)[..., 0]
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape).masked_fill_(differ, MASK).to(device)


def alternate_shift(window: int, block: int) -> int:
    """Shift of the windows of a group's ``block``-th block: Swin's schedule (Sec. 3.2), the odd
    blocks on windows shifted by half a window (SwinIR, HAT, SRFormer, ATD)."""
    return window // 2 if block % 2 else 0


def shifted_windows(
    attn: Callable[[Tensor, Tensor | None], Tensor], x: Tensor, window: int, shift: int, mask: Tensor
) -> Tensor:
    """``attn`` (windows, mask or None -> windows) on the ``window`` windows of a ``(B, H, W, C)``
    map: with ``shift`` > 0 the map is rolled by ``-shift`` first and back after, and ``attn``
    gets ``mask`` (SW-MSA, Swin Sec. 3.2).  Returns the merged ``(B, H, W, C')`` map."""
    _, h, w, _ = x.shape
    if shift:
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
    y = window_merge(attn(window_partition(x, window, window), mask if shift else None), window, window, h, w)
    return torch.roll(y, (shift, shift), dims=(1, 2)) if shift else y


# --- modules ---------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """The transformer feed-forward network ``fc2(GELU(fc1(x)))`` (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, heads: int) -> Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` per head for ``(B * nW, N, C)`` windows of queries
    and ``(B * nW, M, C)`` of keys and values; ``bias`` is ``(nW or 1, heads, N, M)``."""
    bw, n, c = q.shape
    shape = (bw // bias.shape[0], bias.shape[0], -1, heads, c // heads)
    q, k, v = (t.reshape(shape).transpose(2, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return out.transpose(2, 3).reshape(bw, n, c)


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with a relative position bias (Swin Eq. 4).

    Keys: ``qkv``, ``proj`` and ``relative_position_bias_table`` (``(2wh-1)(2ww-1) x heads``).
    The index into the table is recomputed, not stored.  With ``qkv=False`` there is no ``qkv``
    projection and the windows given are the projections ``(B * nW, N, 3C)`` (ATD's ``attn_win``).
    """

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True, qkv: bool = True) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("index", constant(relative_position_index(window, window)), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias) if qkv else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``(B * nW, N, C)`` windows -> the same; ``mask`` ``(nW, N, N)`` or None."""
        bias = self.relative_position_bias_table[self.index].permute(2, 0, 1)  # heads, N, N
        bias = bias[None] if mask is None else bias[None] + mask[:, None]
        q, k, v = (x if self.qkv is None else self.qkv(x)).chunk(3, dim=-1)
        return self.proj(multihead_attention(q, k, v, bias, self.heads))


class SwinBlock(nn.Module):
    """Swin transformer layer: ``x + (S)W-MSA(LN(x))``, then ``x + MLP(LN(x))`` (Swin Eq. 3).

    ``shift`` > 0 rolls the map by ``-shift`` before the windows and back after (SW-MSA).
    Keys: ``norm1``, ``attn``, ``norm2``, ``mlp``; ``attn`` and ``mlp``, when given, replace the
    window attention and the MLP (SRFormer's PSA and ConvFFN).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        attn: nn.Module | None = None,
        mlp: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn if attn is not None else WindowAttention(dim, window, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp if mlp is not None else Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x: Tensor, mask: Tensor) -> Tensor:
        """(S)W-MSA of a normalised ``(B, H, W, C)`` map; ``mask``: this size's :func:`shift_mask`."""
        return shifted_windows(self.attn, x, self.window, self.shift, mask)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        y = self.attend(self.norm1(x).reshape(x.shape[0], h, w, -1), mask)
        x = x + y.reshape(x.shape)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """SwinIR's patch embedding with patch size 1: the map as tokens, layer-normalised when
    ``norm`` (key ``patch_embed.norm``)."""

    def __init__(self, dim: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = to_tokens(x)
        return self.norm(x) if self.norm is not None else x


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing a residual group or the body (:data:`RESIDUAL_CONVS`)."""
    if kind == "1conv":
        return conv(dim, dim)
    if kind == "3conv":
        act = nn.LeakyReLU(0.2, inplace=True)
        return nn.Sequential(conv(dim, dim // 4), act, conv(dim // 4, dim // 4, 1), act, conv(dim // 4, dim))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"resi_connection must be one of {', '.join(RESIDUAL_CONVS)}, not {kind!r}")


def residual_radius(kind: str) -> int:
    """Receptive-field radius of :func:`residual_conv`."""
    return {"1conv": 1, "3conv": 2, "identity": 0}[kind]


class Blocks(nn.Module):
    """A group's blocks in sequence, each ``(tokens, h, w, masks) -> tokens`` (key ``blocks.{j}``;
    SwinIR's ``BasicLayer``)."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, h: int, w: int, masks: Any) -> Tensor:
        for block in self.blocks:
            x = block(x, h, w, masks)
        return x


class ResidualBlocks(Blocks):
    """``x + conv(blocks(x))`` with the blocks beside the conv (keys ``blocks.{j}``, ``conv``; the
    residual groups of DAT and RGT)."""

    def __init__(self, blocks: Iterable[nn.Module], dim: int, resi: str) -> None:
        super().__init__(blocks)
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, h: int, w: int, masks: Any) -> Tensor:
        return to_tokens(self.conv(to_image(super().forward(x, h, w, masks), h, w))) + x


class ResidualGroup(nn.Module):
    """SwinIR's residual group (RSTB, Eq. 6): ``x + conv(group(x))`` (keys ``residual_group``,
    ``conv``); HAT's RHAG, SRFormer's PSA groups and ATD's ATDB keep it around their own groups."""

    def __init__(self, group: nn.Module, dim: int, resi: str) -> None:
        super().__init__()
        self.residual_group = group
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, h: int, w: int, masks: Any) -> Tensor:
        return to_tokens(self.conv(to_image(self.residual_group(x, h, w, masks), h, w))) + x


# --- the frame -------------------------------------------------------------------------------------


class WindowSR(nn.Module):
    """SwinIR's frame (Liang et al. 2021, Sec. 3.1): ``x' = (x - mean) * img_range``,
    ``F0 = conv_first(x')``, ``F = conv_after_body(body(F0)) + F0``, then the reconstruction
    of ``upsampler`` (:data:`UPSAMPLERS`), and back ``y / img_range + mean``.

    Subclasses build the body with :meth:`init_body` (the groups ``layers``, ``norm``,
    ``conv_after_body``) after their embedding (``patch_embed``, or their own :meth:`embed`) and
    set ``window``, or override :meth:`layer_masks`; :meth:`forward_features` runs them.
    Inputs are padded (reflect) to ``multiple`` at the bottom and right and the output cropped,
    as the published test code does.  A grey network (``in_chans=1``) given RGB runs on each
    channel.  RGB 0..1 in and out.
    """

    conv_after_body: nn.Module
    patch_embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    window: int

    def __init__(
        self,
        scale: int,
        in_chans: int,
        embed_dim: int,
        upsampler: str,
        num_feat: int,
        img_range: float,
        multiple: int,
    ) -> None:
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {', '.join(UPSAMPLERS)}, not {upsampler!r}")
        if (upsampler == "none") != (scale == 1) or (upsampler == "nearest+conv" and scale not in (2, 4)):
            raise ValueError(f"the {upsampler} reconstruction does not make x{scale}")
        self.scale, self.in_chans, self.upsampler = scale, in_chans, upsampler
        self.img_range, self.multiple = float(img_range), multiple
        mean = torch.tensor(DIV2K_MEAN if in_chans == 3 else (0.0,) * in_chans, device="cpu")
        self.register_buffer("mean", constant(mean.view(1, in_chans, 1, 1)), persistent=False)
        self.conv_first = conv(in_chans, embed_dim)
        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(conv(embed_dim, num_feat), nn.LeakyReLU(inplace=True))
        if upsampler == "pixelshuffle":
            self.upsample = Upsampler(scale, num_feat)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(conv(embed_dim, scale * scale * in_chans), nn.PixelShuffle(scale))
        elif upsampler == "nearest+conv":
            self.conv_up1 = conv(num_feat, num_feat)
            if scale == 4:
                self.conv_up2 = conv(num_feat, num_feat)
            self.conv_hr = conv(num_feat, num_feat)
        if upsampler != "pixelshuffledirect":
            self.conv_last = conv(num_feat if upsampler != "none" else embed_dim, in_chans)

    def init_body(self, layers: Iterable[nn.Module], embed_dim: int, resi_connection: str) -> None:
        """The body after the embedding, as SwinIR builds it: the groups (key ``layers.{i}``), a
        layer norm (``norm``) and ``conv_after_body``; then the published initialisation."""
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.init_weights()

    def embed(self, x: Tensor) -> Tensor:
        """The feature map as tokens: SwinIR's ``patch_embed``."""
        return self.patch_embed(x)

    def layer_masks(self, h: int, w: int, device: torch.device) -> Any:
        """What each group takes beside the tokens of an ``h x w`` map: the :func:`shift_mask` of
        ``window`` windows shifted by half a window."""
        ws = self.window
        return shift_mask(h, w, ws, ws, ws // 2, ws // 2, device)

    def forward_features(self, x: Tensor) -> Tensor:
        """The deep feature extraction, ``(B, embed_dim, H, W)`` to the same: tokens
        (:meth:`embed`), the groups, the norm (SwinIR Sec. 3.1)."""
        h, w = x.shape[-2:]
        masks = self.layer_masks(h, w, x.device)
        tokens = self.embed(x)
        for layer in self.layers:
            tokens = layer(tokens, h, w, masks)
        return to_image(self.norm(tokens), h, w)

    def init_weights(self) -> None:
        """The published initialisation (subclasses call it last): linear weights from a normal
        of std 0.02 truncated at +-2, zero biases; norms to identity; convs keep torch's."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reconstruct(self, x: Tensor, feat: Tensor) -> Tensor:
        """The reconstruction of ``upsampler`` from the deep features ``feat`` (input ``x``)."""
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(feat)
        if self.upsampler == "none":
            return x + self.conv_last(feat)
        feat = self.conv_before_upsample(feat)
        for up in ("conv_up1", "conv_up2")[: self.scale // 2]:
            feat = F.leaky_relu(getattr(self, up)(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c != self.in_chans and self.in_chans == 1:
            return self.forward(x.reshape(b * c, 1, h, w)).reshape(b, c, h * self.scale, w * self.scale)
        mean = self.mean.to(x.dtype)
        x = (pad_to_multiple(x, self.multiple) - mean) * self.img_range
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        y = self.reconstruct(x, feat) / self.img_range + mean
        return y[..., : h * self.scale, : w * self.scale]


def tail_layout(upsampler: str, scale: int) -> list[tuple]:
    """The reconstruction of :class:`WindowSR` as :func:`window_radius` steps."""
    if upsampler == "pixelshuffle":
        return [("conv", 1), *Upsampler.layout(scale), ("conv", 1)]
    if upsampler == "pixelshuffledirect":
        return [("conv", 1), ("up", scale)]
    if upsampler == "nearest+conv":
        return [("conv", 1), *[("up", 2), ("conv", 1)] * (scale // 2), ("conv", 2)]
    return [("conv", 1)]


def window_multiple(default: int) -> Callable[[Mapping[str, Any], int], int]:
    """``Arch.size_multiple`` of a family whose inputs are padded to its ``window_size`` kwarg
    (``default`` when not given)."""

    def size_multiple(kwargs: Mapping[str, Any], _scale: int) -> int:
        return int(kwargs.get("window_size", default))

    return size_multiple


def drop_buffers(sd: dict[str, Tensor], suffixes: tuple[str, ...]) -> dict[str, Tensor]:
    """``sd`` without the keys ending in ``suffixes``: the buffers of the published files that
    the networks here recompute (index tables, and masks sized for the training patch)."""
    return {k: v for k, v in sd.items() if not k.endswith(suffixes)}


# --- receptive field -------------------------------------------------------------------------------

Step = tuple
"""One step of a chain for :func:`window_radius`, input to output:

* ``("conv", r)``: convolutions of total radius ``r`` (a 3x3 is 1);
* ``("up", a)``: x``a`` by pixel shuffle or nearest neighbour;
* ``("window", size, offset, before, after)``: attention within windows of ``size`` on a grid
  at ``offset`` (a shifted window: half the size), whose keys reach ``before`` / ``after``
  pixels beyond the window (HAT's overlapping windows; 0 for plain ones);
* ``("branches", (chain, ...))``: parallel chains of steps whose outputs are combined
  (attention beside a conv branch).
"""


def _back(step: Step, lo: int, hi: int) -> tuple[int, int]:
    """Input interval that output pixels ``lo..hi`` of ``step`` read."""
    kind = step[0]
    if kind == "conv":
        return lo - step[1], hi + step[1]
    if kind == "up":
        return lo // step[1], hi // step[1]
    if kind == "window":
        size, offset, before, after = step[1:]
        return (lo - offset) // size * size + offset - before, (hi - offset) // size * size + offset + size - 1 + after
    if kind == "branches":
        spans = [_chain_back(chain, lo, hi) for chain in step[1]]
        return min(s[0] for s in spans), max(s[1] for s in spans)
    raise ValueError(f"unknown receptive-field step {step!r}")


def _chain_back(chain: Sequence[Step], lo: int, hi: int) -> tuple[int, int]:
    for step in reversed(chain):
        lo, hi = _back(step, lo, hi)
    return lo, hi


def _sizes(chain: Sequence[Step]) -> list[int]:
    out = []
    for step in chain:
        if step[0] == "window":
            out.append(step[1])
        elif step[0] == "branches":
            out += [s for sub in step[1] for s in _sizes(sub)]
    return out


def window_radius(chain: Sequence[Step], scale: int) -> int:
    """Exact receptive-field radius, in input pixels, of a chain of :data:`Step` s: the smallest
    ``R`` such that output pixel ``p`` reads only input pixels within ``R`` of ``p // scale``,
    per axis, in the interior of the image.  The field depends on where a pixel lies in its
    windows, so every output pixel of one period (``scale`` times the windows' common multiple)
    is traced back."""
    period = scale * math.lcm(1, *_sizes(chain))
    radius = 0
    for p in range(period):
        lo, hi = _chain_back(chain, p, p)
        radius = max(radius, p // scale - lo, hi - p // scale)
    return radius


def frame_radius(
    groups: Iterable[Sequence[Step]], resi_connection: str, upsampler: str, scale: int, group_conv: bool = True
) -> int:
    """:func:`window_radius` of :class:`WindowSR` around the steps of its groups: ``conv_first``,
    each group closed by its ``resi_connection`` conv (none with ``group_conv=False``: DRCT's),
    ``conv_after_body``, then the reconstruction (:func:`tail_layout`)."""
    resi = ("conv", residual_radius(resi_connection))
    body: list[Step] = []
    for group in groups:
        body += [*group, resi] if group_conv else group
    return window_radius([("conv", 1), *body, resi, *tail_layout(upsampler, scale)], scale)
