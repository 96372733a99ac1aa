"""ESPCN: Shi, Caballero, Huszar, Totz, Aitken, Bishop, Rueckert, Wang, "Real-Time Single Image
and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016.

Three layers at low resolution (Sec. 3.1-3.2): ``(f1, n1) = (5, 64)``, ``(f2, n2) = (3, 32)``,
``f3 = 3`` to ``C r^2`` channels, tanh activations (Sec. 3.2), then the periodic shuffling ``PS``
of Eq. 4 (``nn.PixelShuffle``).  Two families:

* ``espcn``: like the paper (Sec. 4.1) on the luminance channel, ``C`` = 1: convention ``y``
  (BT.601 Y in 0..1), chroma upscaled with bicubic.  No public weights: trainable.
* ``espcn-ycbcr``: Nhat-Thanh/ESPCN-Pytorch (``neuralnet.py``, ``utils/common.py``), ``C`` = 3
  on all three channels of the JPEG (JFIF, full-range) YCbCr in 0..1, output clipped to 0..1
  (``torch.clip``): :class:`ESPCNYCbCr` takes and returns RGB (convention ``rgb``) and does the
  conversions inside.  That repository's ``rgb2ycbcr`` also clips Y to 16..235 and Cb/Cr to
  16..240 and truncates to 8 bits; both are left out (data preparation, not the network; the
  clip costs 1.3 dB on Set5 x3).

Key layout = yjn870/ESPCN-pytorch (``models.py``): ``first_part.{0,2}``, ``last_part.0``;
:func:`convert_keys` reads Nhat-Thanh's ``conv_1``, ``conv_2``, ``conv_3``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .layers import conv, has, receptive_radius, rename_layout, shape, shuffle_scale
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

# JFIF YCbCr in 0..1 (Nhat-Thanh utils/common.py rgb2ycbcr / ycbcr2rgb, "Intel IPP specific
# for the JPEG codec"): Y = 0.299 R + 0.587 G + 0.114 B, Cb and Cr centred on 128/255.
_RGB_TO_JFIF = ((0.299, 0.587, 0.114), (-0.16874, -0.33126, 0.5), (0.5, -0.41869, -0.08131))
_JFIF_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.34414, -0.71414), (1.0, 1.772, 0.0))
_JFIF_OFFSET = (0.0, 128 / 255, 128 / 255)


def _mix(x: Tensor, matrix: tuple[tuple[float, ...], ...]) -> Tensor:
    return torch.einsum("ij,...jhw->...ihw", torch.tensor(matrix, dtype=x.dtype, device=x.device), x)


def _offset(x: Tensor) -> Tensor:
    return torch.tensor(_JFIF_OFFSET, dtype=x.dtype, device=x.device).view(3, 1, 1)


def rgb_to_jfif(rgb: Tensor) -> Tensor:
    """RGB (0..1) -> JFIF full-range YCbCr (0..1), ``(..., 3, H, W)``."""
    return _mix(rgb, _RGB_TO_JFIF) + _offset(rgb)


def jfif_to_rgb(ycc: Tensor) -> Tensor:
    """JFIF YCbCr (0..1) -> RGB (0..1), unclamped."""
    return _mix(ycc - _offset(ycc), _JFIF_TO_RGB)


class ESPCN(nn.Module):
    """ESPCN 5-3-3 with 64/32 channels and tanh (Shi et al. 2016, Fig. 1) on ``channels`` planes."""

    def __init__(self, scale: int = 2, n1: int = 64, n2: int = 32, channels: int = 1) -> None:
        super().__init__()
        self.first_part = nn.Sequential(conv(channels, n1, 5), nn.Tanh(), conv(n1, n2, 3), nn.Tanh())
        self.last_part = nn.Sequential(conv(n2, channels * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.last_part(self.first_part(x))


class ESPCNYCbCr(ESPCN):
    """Nhat-Thanh's ESPCN: the net on JFIF YCbCr, its output clipped to 0..1; RGB in and out."""

    def __init__(self, scale: int = 2, n1: int = 64, n2: int = 32) -> None:
        super().__init__(scale, n1, n2, channels=3)

    def forward(self, x: Tensor) -> Tensor:
        return jfif_to_rgb(super().forward(rgb_to_jfif(x)).clamp(0.0, 1.0))


_NHAT_THANH = {"conv_1": "first_part.0", "conv_2": "first_part.2", "conv_3": "last_part.0"}


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Nhat-Thanh/ESPCN-Pytorch (``neuralnet.py``) names to ours; other layouts unchanged."""
    return rename_layout(sd, _NHAT_THANH)


def _radius(_kwargs: Mapping[str, Any], scale: int) -> int:
    return receptive_radius([("conv", 2 + 1 + 1), ("up", scale)], scale)


def _matcher(channels: int) -> Callable[[StateDict], bool]:
    def matches(sd: StateDict) -> bool:
        return (
            has(sd, "first_part.0.weight", "first_part.2.weight", "last_part.0.weight")
            and "mid_part.0.weight" not in sd
            and shape(sd, "first_part.0.weight")[1] == channels
        )

    return matches


def _inferrer(channels: int) -> Callable[[StateDict], tuple[dict[str, Any], int | None]]:
    def infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
        kwargs = {"n1": shape(sd, "first_part.0.weight")[0], "n2": shape(sd, "first_part.2.weight")[0]}
        return kwargs, shuffle_scale(shape(sd, "last_part.0.weight")[0], channels)

    return infer


ARCH = register_arch(
    Arch(
        name="espcn",
        build=ESPCN,
        convention="y",
        radius=_radius,
        paper="Shi et al., ESPCN, CVPR 2016",
        fp16=True,
        matches=_matcher(1),
        infer_kwargs=_inferrer(1),
        convert_keys=convert_keys,
        default_kwargs={"n1": 64, "n2": 32},
        test_configs=tuple(({"n1": 8, "n2": 4}, s) for s in (2, 3)),
    )
)

YCBCR_ARCH = register_arch(
    Arch(
        name="espcn-ycbcr",
        build=ESPCNYCbCr,
        convention="rgb",
        radius=_radius,
        paper="Shi et al., ESPCN, CVPR 2016 (Nhat-Thanh/ESPCN-Pytorch, on YCbCr)",
        fp16=True,
        recipe="espcn",
        matches=_matcher(3),
        infer_kwargs=_inferrer(3),
        convert_keys=convert_keys,
        default_kwargs={"n1": 64, "n2": 32},
        test_configs=(({"n1": 8, "n2": 4}, 3),),
    )
)

register_model(
    ModelSpec(
        name="espcn",
        arch="espcn",
        kwargs={"n1": 64, "n2": 32},
        scales=(2, 3, 4),
        description="ESPCN: 3 layers at low resolution + sub-pixel shuffle, on luma (Shi et al. 2016)",
        trainable_only=True,
    )
)

register_model(
    ModelSpec(
        name="espcn-ycbcr",
        arch="espcn-ycbcr",
        kwargs={"n1": 64, "n2": 32},
        scales=(2, 3, 4),
        description="ESPCN on all three JPEG YCbCr channels (Shi et al. 2016; Nhat-Thanh/ESPCN-Pytorch weights)",
        trainable_only=False,
    )
)
