"""ESPCN: Shi, Caballero, Huszar, Totz, Aitken, Bishop, Rueckert, Wang, "Real-Time Single Image
and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016.

Three layers at low resolution (Sec. 3.1-3.2): ``(f1, n1) = (5, 64)``, ``(f2, n2) = (3, 32)``,
``f3 = 3`` to ``r^2`` channels, tanh activations (Sec. 3.2), then the periodic shuffling ``PS``
of Eq. 4 (``nn.PixelShuffle``).  Like the paper (Sec. 4.1) it works on the luminance channel:
convention ``y`` (BT.601 Y in 0..1), chroma upscaled with bicubic.

Key layout = yjn870/ESPCN-pytorch (``models.py``): ``first_part.{0,2}``, ``last_part.0``.
No public weights with a verifiable hash: trainable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .layers import conv, has, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model


class ESPCN(nn.Module):
    """ESPCN 5-3-3 with 64/32 channels and tanh (Shi et al. 2016, Fig. 1); Y in 0..1."""

    def __init__(self, scale: int = 2, n1: int = 64, n2: int = 32) -> None:
        super().__init__()
        self.first_part = nn.Sequential(conv(1, n1, 5), nn.Tanh(), conv(n1, n2, 3), nn.Tanh())
        self.last_part = nn.Sequential(conv(n2, scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.last_part(self.first_part(x))


def _radius(_kwargs: Mapping[str, Any], scale: int) -> int:
    return receptive_radius([("conv", 2 + 1 + 1), ("up", scale)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return (
        has(sd, "first_part.0.weight", "first_part.2.weight", "last_part.0.weight")
        and "mid_part.0.weight" not in sd
        and shape(sd, "first_part.0.weight")[1] == 1
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    kwargs = {"n1": shape(sd, "first_part.0.weight")[0], "n2": shape(sd, "first_part.2.weight")[0]}
    return kwargs, shuffle_scale(shape(sd, "last_part.0.weight")[0], 1)


ARCH = register_arch(
    Arch(
        name="espcn",
        build=ESPCN,
        convention="y",
        radius=_radius,
        paper="Shi et al., ESPCN, CVPR 2016",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"n1": 64, "n2": 32},
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
