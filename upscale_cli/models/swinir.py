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

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .attention import (
    PatchEmbed,
    SwinBlock,
    WindowSR,
    residual_conv,
    residual_radius,
    shift_mask,
    tail_layout,
    to_image,
    to_tokens,
    window_of_table,
    window_radius,
)
from .layers import Upsampler, indices, layout_matcher, shape
from .registry import Arch, register_arch


class BasicLayer(nn.Module):
    """``depth`` Swin layers, the odd ones on shifted windows (key ``blocks.{j}``)."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, window // 2 if j % 2 else 0, mlp_ratio, qkv_bias) for j in range(depth)
        )

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, h, w, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin transformer block (Eq. 6): ``x + conv(layers(x))``."""

    def __init__(
        self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool, resi: str
    ) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, heads, window, mlp_ratio, qkv_bias)
        self.conv = residual_conv(dim, resi)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor) -> Tensor:
        return to_tokens(self.conv(to_image(self.residual_group(x, h, w, mask), h, w))) + x


class SwinIR(WindowSR):
    """SwinIR (Liang et al. 2021, Fig. 2); RGB 0..1 in and out."""

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
        self.layers = nn.ModuleList(
            RSTB(embed_dim, d, h, window_size, mlp_ratio, qkv_bias, resi_connection) for d, h in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ws = self.window
        mask = shift_mask(h, w, ws, ws, ws // 2, ws // 2, x.device)
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, h, w, mask)
        return to_image(self.norm(tokens), h, w)


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
    resi = ("conv", residual_radius(k["resi_connection"]))
    body = []
    for depth in k["depths"]:
        body += [("window", ws, ws // 2 if j % 2 else 0, 0, 0) for j in range(depth)] + [resi]
    return window_radius([("conv", 1), *body, resi, *tail_layout(k["upsampler"], scale)], scale)


def _size_multiple(kwargs: Mapping[str, Any], _scale: int) -> int:
    return int(kwargs.get("window_size", DEFAULTS["window_size"]))


_BUFFERS = (".relative_position_index", ".attn_mask")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the buffers of the published files (recomputed here, and ``attn_mask`` is sized for
    the training patch)."""
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
        r = math.isqrt(shape(sd, "upsample.0.weight")[0] // in_chans)
        return r if r * r * in_chans == shape(sd, "upsample.0.weight")[0] else None
    if upsampler == "nearest+conv":
        return 4 if "conv_up2.weight" in sd else 2
    return 1


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    embed_dim, in_chans = shape(sd, "conv_first.weight")[:2]
    layers = indices(sd, "layers.", "residual_group.blocks.0.norm1.weight")
    block = "layers.0.residual_group.blocks.0."
    tables = [shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table") for i in layers]
    window = window_of_table(tables[0][0])
    upsampler = _upsampler(sd)
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
        "img_range": 255.0 if window == 7 else 1.0,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": f"{block}attn.qkv.bias" in sd,
    }
    return kwargs, _scale(sd, upsampler, in_chans, num_feat)


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
        size_multiple=_size_multiple,
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
