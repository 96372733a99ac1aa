"""SwinIR: Liang, Cao, Sun, Zhang, Van Gool, Timofte, "SwinIR: Image Restoration Using Swin
Transformer", ICCV Workshops 2021.

The frame of :class:`~.attention.WindowSR` (Sec. 3.1, Fig. 2) around residual Swin transformer
blocks (RSTB, Eq. 5-6): each holds ``depth`` Swin layers, window attention alternating with
attention on windows shifted by half a window, then a conv (``resi_connection``) and a skip.
A layer norm before the RSTBs and one after them.  The published configurations
(``main_test_swinir.py``), all inferred here from the shapes:

* classical SR: embed 180, six RSTBs of six layers, 6 heads, window 8, MLP ratio 2,
  ``pixelshuffle`` (a conv to 64 channels, the sub-pixel upsampler, a conv);
* lightweight SR: embed 60, four RSTBs, ``pixelshuffledirect`` (one conv and one shuffle);
* real-world SR: ``nearest+conv`` (nearest x2 steps with convs), SwinIR-M (embed 180) and
  SwinIR-L (embed 240, nine RSTBs, 8 heads, ``3conv``);
* denoising and JPEG artefact reduction at x1: no upsampler, the net predicts a residual;
  grey (1 channel) or colour.  The JPEG models use window 7 and ``img_range`` 255, the only
  ones that do, so a window of 7 implies that range (it is not stored in the file).

Key layout = JingyunLiang/SwinIR ``models/network_swinir.py``: ``conv_first``,
``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}.{norm1,attn.qkv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}``, ``layers.{i}.conv``, ``norm``,
``conv_after_body``, then ``conv_before_upsample.0``, ``upsample.{0,2,..}``, ``conv_last``
(classical), ``upsample.0`` (lightweight), ``conv_up1``, ``conv_up2``, ``conv_hr`` (real-world).
The published files also hold buffers (``relative_position_index`` and, sized for the training
patch, ``attn_mask``) that are recomputed here: :func:`convert_keys` drops them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .attention import (
    Blocks,
    PatchEmbed,
    ResidualGroup,
    SwinBlock,
    WindowSR,
    alternate_shift,
    drop_buffers,
    frame_radius,
    window_multiple,
    window_of_table,
)
from .layers import Upsampler, indices, layout_matcher, shape, shuffle_scale
from .registry import Arch, register_arch


class RSTB(ResidualGroup):
    """Residual Swin transformer block (Eq. 6): ``x + conv(layers(x))``, ``depth`` Swin layers
    (``block``) whose odd ones are on shifted windows (keys ``residual_group.blocks.{j}``, ``conv``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        resi: str,
        block: type[SwinBlock] = SwinBlock,
    ) -> None:
        blocks = (block(dim, heads, window, alternate_shift(window, j), mlp_ratio, qkv_bias) for j in range(depth))
        super().__init__(Blocks(blocks), dim, resi)


class SwinIR(WindowSR):
    """SwinIR (Liang et al. 2021, Fig. 2); RGB 0..1 in and out."""

    block: type[SwinBlock] = SwinBlock
    """The layer of the RSTBs (SRFormer's subclass puts its PSA block there)."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
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
        groups = (
            RSTB(embed_dim, d, h, window_size, mlp_ratio, qkv_bias, resi_connection, self.block)
            for d, h in zip(depths, num_heads)
        )
        self.init_body(groups, embed_dim, resi_connection)


DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 180,
    "depths": [6, 6, 6, 6, 6, 6],
    "num_heads": [6, 6, 6, 6, 6, 6],
    "window_size": 8,
    "mlp_ratio": 2.0,
    "upsampler": "pixelshuffle",
    "resi_connection": "1conv",
}
"""The classical SwinIR-M of the paper (Table 2)."""


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    k = {**DEFAULTS, **kwargs}
    ws = k["window_size"]
    groups = ([("window", ws, alternate_shift(ws, j), 0, 0) for j in range(depth)] for depth in k["depths"])
    return frame_radius(groups, k["resi_connection"], k["upsampler"], scale)


_BUFFERS = (".relative_position_index", ".attn_mask")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the buffers of the published files (recomputed here, and ``attn_mask`` is sized for
    the training patch)."""
    return drop_buffers(sd, _BUFFERS)


def detect_upsampler(sd: Mapping[str, Tensor]) -> str:
    """Which of SwinIR's reconstructions (:data:`~.attention.UPSAMPLERS`) a state dict holds, by
    its keys (SRFormer's and ATD's files too)."""
    if "conv_up1.weight" in sd:
        return "nearest+conv"
    if "conv_before_upsample.0.weight" in sd:
        return "pixelshuffle"
    return "pixelshuffledirect" if "upsample.0.weight" in sd else "none"


def upsampler_scale(sd: Mapping[str, Tensor], upsampler: str, in_chans: int, num_feat: int) -> int | None:
    """The scale of the reconstruction ``upsampler`` of a state dict (None where the shapes do not
    tell): the sub-pixel steps, the one shuffle's ``r``, the nearest steps, or 1 (SRFormer, DAT
    and ATD read theirs with it)."""
    if upsampler == "pixelshuffle":
        return Upsampler.scale_of(sd, "upsample.", num_feat)
    if upsampler == "pixelshuffledirect":
        return shuffle_scale(shape(sd, "upsample.0.weight")[0], in_chans)
    if upsampler == "nearest+conv":
        return 4 if "conv_up2.weight" in sd else 2
    return 1


def infer_rstb(
    sd: Mapping[str, Tensor], probe: str, query: str, window_factor: int = 1, jpeg_range: bool = True
) -> tuple[dict[str, Any], int | None]:
    """Kwargs and scale of a file of SwinIR's layout: groups found by their first block's
    ``probe`` key, queries projected by ``attn.{query}`` (its bias tells ``qkv_bias``), the window
    ``window_factor`` times that of the bias table, and with ``jpeg_range`` the ``img_range`` 255
    of the window-7 JPEG models (SwinIR: ``norm1``, ``qkv``; SRFormer: ``attn.q``, ``q``, 2, no)."""
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    layers = indices(sd, "layers.", f"residual_group.blocks.0.{probe}.weight")
    block = "layers.0.residual_group.blocks.0."
    tables = [shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table") for i in layers]
    window = window_factor * window_of_table(tables[0][0])
    upsampler = detect_upsampler(sd)
    num_feat = shape(sd, "conv_before_upsample.0.weight")[0] if "conv_before_upsample.0.weight" in sd else 64
    kwargs = {
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depths": [len(indices(sd, f"layers.{i}.residual_group.blocks.", "norm1.weight")) for i in layers],
        "num_heads": [t[1] for t in tables],
        "window_size": window,
        "mlp_ratio": shape(sd, f"{block}mlp.fc1.weight")[0] / embed_dim,
        "upsampler": upsampler,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        "num_feat": num_feat,
    }
    if jpeg_range:
        kwargs["img_range"] = 255.0 if window == 7 else 1.0
    kwargs |= {"patch_norm": "patch_embed.norm.weight" in sd, "qkv_bias": f"{block}attn.{query}.bias" in sd}
    return kwargs, upsampler_scale(sd, upsampler, in_chans, num_feat)


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    return infer_rstb(sd, "norm1", "qkv")


_SIGNATURE = (
    "conv_first.weight",
    "layers.0.residual_group.blocks.0.norm1.weight",
    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
    "layers.0.residual_group.blocks.0.mlp.fc1.weight",
    "norm.weight",
)

_TINY = {"embed_dim": 8, "depths": [2], "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0, "num_feat": 8}

ARCH = register_arch(
    Arch(
        name="swinir",
        build=SwinIR,
        convention="rgb",
        radius=_radius,
        paper="Liang et al., SwinIR, ICCVW 2021",
        size_multiple=window_multiple(DEFAULTS["window_size"]),
        fp16=False,  # the residual stream of the published SwinIR-M outgrows fp16 (SwinIR #103, #180)
        bf16=False,  # 48-65 dB from fp32 (benchmarks/transformer_tiling.py): off, as for fidelity nets
        matches=layout_matcher(_SIGNATURE, SwinIR, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs=DEFAULTS,
        test_configs=(
            (_TINY, 2),
            ({**_TINY, "upsampler": "pixelshuffledirect", "num_feat": 64}, 3),  # no num_feat layer
            ({**_TINY, "upsampler": "nearest+conv", "resi_connection": "3conv"}, 4),
            ({**_TINY, "upsampler": "none", "window_size": 7, "img_range": 255.0, "num_feat": 64}, 1),
        ),
    )
)
