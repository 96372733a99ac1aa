"""FSRCNN: Dong, Loy, Tang, "Accelerating the Super-Resolution Convolutional Neural Network",
ECCV 2016.

FSRCNN(d, s, m) (Sec. 3.1-3.2, Fig. 2) on the luminance channel, all at low resolution until the
last layer: feature extraction ``Conv(5, d, 1)``, shrinking ``Conv(1, s, d)``, ``m`` mapping
layers ``Conv(3, s, s)``, expanding ``Conv(1, d, s)``, each followed by a PReLU (Eq. 1, one slope
per channel), then deconvolution ``DeConv(9, 1, d)`` with stride ``scale`` (Sec. 3.2).  The
paper's best setting is FSRCNN(56, 12, 4).  Initialisation as Sec. 4.1: He et al.'s for the
PReLU convolutions (the backward, fan-out form), a zero-mean Gaussian of std 0.001 for the
deconvolution (as SRCNN's).

Input and output: the BT.601 Y channel in 0..1 (convention ``y``).  Key layout = yjn870/
FSRCNN-pytorch (``models.py``): ``first_part.{0,1}``, ``mid_part.{0..2m+3}``, ``last_part``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .layers import conv, has, he_init_, indices, receptive_radius, shape
from .registry import Arch, ModelSpec, register_arch, register_model

KERNEL = 9  # deconvolution size (Sec. 3.2)
PRELU_SLOPE = 0.25  # PyTorch's (and He et al.'s) initial PReLU slope
DECONV_STD = 1e-3  # the deconvolution's initial weights (Sec. 4.1)


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) (Dong et al. 2016, Fig. 2); Y in 0..1 in and out."""

    def __init__(self, scale: int = 2, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        self.first_part = nn.Sequential(conv(1, d, 5), nn.PReLU(d))
        mid: list[nn.Module] = [conv(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [conv(s, s, 3), nn.PReLU(s)]
        mid += [conv(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        # padding 4 and output_padding scale-1 make the output exactly scale x the input
        self.last_part = nn.ConvTranspose2d(
            d, 1, KERNEL, stride=scale, padding=KERNEL // 2, output_padding=scale - 1
        )
        he_init_(self, PRELU_SLOPE, mode="fan_out")
        nn.init.normal_(self.last_part.weight, 0.0, DECONV_STD)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # 5x5 extraction + m 3x3 mapping layers at LR (1x1 layers add nothing), then the deconv
    lr = 2 + kwargs.get("m", 4)
    return receptive_radius([("conv", lr), ("tconv", KERNEL, scale, KERNEL // 2)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return (
        has(sd, "first_part.0.weight", "first_part.1.weight", "mid_part.0.weight", "last_part.weight")
        and shape(sd, "first_part.0.weight")[1] == 1
        and len(shape(sd, "last_part.weight")) == 4
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    convs = indices(sd, "mid_part.", "bias")  # PReLUs have no bias
    kwargs = {
        "d": shape(sd, "first_part.0.weight")[0],
        "s": shape(sd, "mid_part.0.weight")[0],
        "m": len(convs) - 2,
    }
    return kwargs, None  # the deconvolution's stride is not in the weights


ARCH = register_arch(
    Arch(
        name="fsrcnn",
        build=FSRCNN,
        convention="y",
        radius=_radius,
        paper="Dong et al., FSRCNN, ECCV 2016",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"d": 56, "s": 12, "m": 4},
        test_configs=tuple(({"d": 8, "s": 4, "m": 2}, s) for s in (2, 3, 4)),
    )
)

register_model(
    ModelSpec(
        name="fsrcnn",
        arch="fsrcnn",
        kwargs={"d": 56, "s": 12, "m": 4},
        scales=(2, 3, 4),
        description="FSRCNN(56, 12, 4) on luma, deconvolution upsampler (Dong et al. 2016)",
    )
)
