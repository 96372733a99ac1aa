"""DRCT: Hsu, Lee, Chou, "DRCT: Saving Image Super-resolution away from Information
Bottleneck", CVPR Workshops (NTIRE) 2024.

SwinIR's frame (:class:`~.attention.WindowSR`, classical ``pixelshuffle`` reconstruction) around
residual dense groups (RDG, Sec. 3.2, Fig. 3, Eq. 4-6) in place of SwinIR's RSTBs.  Each RDG
holds five Swin layers (Swin-Dense-Residual-Connected block, SDRCB) with dense connections:
layer ``k`` sees the group input concatenated with the ``k - 1`` earlier outputs, so its width is
``dim + (k - 1) * gc``; after each layer a 1x1 conv (``adjust{k}``) to ``gc`` channels (to
``dim`` for the last), LeakyReLU 0.2 after the first four; the group returns
``x + 0.2 * adjust5(...)``.  Layers 2 and 4 use windows shifted by half a window, layers 4 and 5
an MLP ratio of 1, and layer ``k`` has ``heads - (width_k mod heads)`` heads (as published).
There is no conv closing a group; a layer norm before the groups and one after them.

The published configurations (``options/test``): DRCT (embed 180, six RDGs) and DRCT-L (twelve
RDGs), both window 16, 6 heads, MLP ratio 2, ``gc`` 32; all read off the shapes here.  The
published ``depths`` only count the groups (an RDG has five layers whatever its depth), so the
groups are given here by ``num_heads`` alone.

Key layout = ming053l/DRCT ``drct/archs/DRCT_arch.py``: ``conv_first``, ``patch_embed.norm``,
``layers.{i}.swin{k}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,
mlp.fc2}`` and ``layers.{i}.adjust{k}`` for ``k`` = 1..5, ``norm``, ``conv_after_body``,
``conv_before_upsample.0``, ``upsample.{0,2,..}``, ``conv_last``.  The published files also hold
``attn.relative_position_index`` and (sized for the training patch) ``attn_mask`` buffers, which
are recomputed here: :func:`convert_keys` drops them.  The published forward does not pad (its
test code pads to the window); this one pads as SwinIR's does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import (
    PatchEmbed,
    SwinBlock,
    WindowSR,
    drop_buffers,
    frame_radius,
    to_image,
    to_tokens,
    window_multiple,
    window_of_table,
)
from .layers import Upsampler, conv, indices, layout_matcher, shape
from .registry import Arch, register_arch

LAYERS = 5
"""Swin layers of an RDG."""

DENSE_SCALE = 0.2
"""Weight of the dense block's output on the group's skip (as published)."""


def layer_heads(width: int, heads: int) -> int:
    """Heads of a dense layer of ``width`` channels: ``heads - width % heads`` (as published)."""
    return heads - width % heads


class RDG(nn.Module):
    """Residual dense group: five densely connected Swin layers with 1x1 ``adjust`` convs,
    ``x + 0.2 * adjust5(swin5([x, x1, .., x4]))`` (keys ``swin{k}``, ``adjust{k}``)."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool, gc: int) -> None:
        super().__init__()
        for k in range(1, LAYERS + 1):
            width = dim + (k - 1) * gc
            n = layer_heads(width, heads)
            if width % n:
                raise ValueError(f"a dense layer of {width} channels does not split into {n} heads")
            shift = window // 2 if k % 2 == 0 else 0
            ratio = mlp_ratio if k <= 3 else 1.0
            setattr(self, f"swin{k}", SwinBlock(width, n, window, shift, ratio, qkv_bias))
            setattr(self, f"adjust{k}", conv(width, gc if k < LAYERS else dim, 1))

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        feats = [x]
        for k in range(1, LAYERS + 1):
            y = getattr(self, f"swin{k}")(torch.cat(feats, dim=-1), h, w, mask)
            y = getattr(self, f"adjust{k}")(to_image(y, h, w))
            if k < LAYERS:
                y = F.leaky_relu(y, 0.2)
            feats.append(to_tokens(y))
        return x + DENSE_SCALE * feats[-1]


class DRCT(WindowSR):
    """DRCT (Hsu et al. 2024, Fig. 3); RGB 0..1 in and out."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        embed_dim: int = 180,
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        mlp_ratio: float = 2.0,
        gc: int = 32,
        resi_connection: str = "1conv",
        num_feat: int = 64,
        img_range: float = 1.0,
        patch_norm: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"DRCT closes its body with 1conv or identity, not {resi_connection!r}")
        super().__init__(scale, in_chans, embed_dim, "pixelshuffle", num_feat, img_range, window_size)
        self.window = window_size
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        groups = (RDG(embed_dim, h, window_size, mlp_ratio, qkv_bias, gc) for h in num_heads)
        self.init_body(groups, embed_dim, resi_connection)


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 180,
    "num_heads": [6] * 6,
    "window_size": 16,
    "mlp_ratio": 2.0,
    "gc": 32,
    "resi_connection": "1conv",
}
"""DRCT of the paper (Table 2, ``options/test/DRCT_SRx4.yml``); DRCT-L has twelve groups."""

VARIANTS: dict[str, dict[str, Any]] = {"drct-l": {"num_heads": [6] * 12}}
"""DRCT-L (``options/test/DRCT-L_SRx4_ImageNet-pretrain.yml``)."""


def group_steps(window: int) -> list[tuple]:
    """An RDG as :func:`~.attention.window_radius` steps: the dense paths that skip layers read
    less than the one through all five windows (the 1x1 convs add nothing)."""
    return [("window", window, window // 2 if k % 2 == 0 else 0, 0, 0) for k in range(1, LAYERS + 1)]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    k = {**DEFAULTS, **kwargs}
    groups = (group_steps(k["window_size"]) for _ in k["num_heads"])
    return frame_radius(groups, k["resi_connection"], "pixelshuffle", scale, group_conv=False)


_BUFFERS = (".relative_position_index", ".attn_mask")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the buffers of the published files (recomputed here; ``attn_mask`` is sized for the
    training patch)."""
    return drop_buffers(sd, _BUFFERS)


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    groups = indices(sd, "layers.", "swin1.norm1.weight")
    tables = [shape(sd, f"layers.{i}.swin1.attn.relative_position_bias_table") for i in groups]
    num_feat = shape(sd, "conv_before_upsample.0.weight")[0]
    kwargs = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "num_heads": [t[1] for t in tables],
        "window_size": window_of_table(tables[0][0]),
        "mlp_ratio": shape(sd, "layers.0.swin1.mlp.fc1.weight")[0] / embed_dim,
        "gc": shape(sd, "layers.0.adjust1.weight")[0],
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "num_feat": num_feat,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": "layers.0.swin1.attn.qkv.bias" in sd,
    }
    return kwargs, Upsampler.scale_of(sd, "upsample.", num_feat)


_SIGNATURE = (
    "conv_first.weight",
    "layers.0.swin1.attn.relative_position_bias_table",
    "layers.0.adjust1.weight",
    "layers.0.swin5.mlp.fc1.weight",
    "layers.0.adjust5.weight",
    "conv_last.weight",
)

_TINY = {"embed_dim": 8, "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0, "gc": 4, "num_feat": 8}

ARCH = register_arch(
    Arch(
        name="drct",
        build=DRCT,
        convention="rgb",
        radius=_radius,
        paper="Hsu et al., DRCT, CVPRW 2024",
        size_multiple=window_multiple(DEFAULTS["window_size"]),
        fp16=False,  # a residual stream like SwinIR's (spandrel runs DRCT in fp32 or bf16 only)
        bf16=False,  # unmeasured here: off, as for the other fidelity transformers
        matches=layout_matcher(_SIGNATURE, DRCT, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        test_configs=(
            (_TINY, 2),
            ({**_TINY, "embed_dim": 12, "num_heads": [3, 3], "resi_connection": "identity"}, 3),  # uneven heads
            ({**_TINY, "mlp_ratio": 1.0}, 4),
        ),
        variants=VARIANTS,
    )
)
