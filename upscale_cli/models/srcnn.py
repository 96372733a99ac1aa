"""SRCNN: Dong, Loy, He, Tang, "Image Super-Resolution Using Deep Convolutional Networks",
TPAMI 2016 (ECCV 2014).

Three layers on the bicubic-upscaled image (Sec. 3.1): patch extraction
``F1 = max(0, W1 * Y + B1)`` (Eq. 1, 9x9, n1 = 64), non-linear mapping
``F2 = max(0, W2 * F1 + B2)`` (Eq. 2, 5x5, n2 = 32) and reconstruction ``F = W3 * F2 + B3``
(Eq. 3, 5x5): the 9-5-5 setting of Sec. 4.3.2, zero-padded so the output keeps the size.
Like the paper (Sec. 4.1: "only on the luminance channel") convention ``y``: Y in 0..1.  The
bicubic upscaling is part of the forward, with the MATLAB-compatible
:func:`upscale_cli.resize.imresize`, so the model maps LR to HR like every other.

Key layout = yjn870/SRCNN-pytorch (``models.py``): ``conv1``, ``conv2``, ``conv3``.
No public weights with a verifiable hash: trainable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, receptive_radius, shape
from .registry import Arch, ModelSpec, register_arch, register_model


class SRCNN(nn.Module):
    """SRCNN 9-5-5 (Dong et al. 2016, Fig. 2) on the bicubic-upscaled Y channel."""

    def __init__(self, scale: int = 2, n1: int = 64, n2: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = conv(1, n1, 9)
        self.conv2 = conv(n1, n2, 5)
        self.conv3 = conv(n2, 1, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = imresize(x, scale=self.scale)
        y = torch.relu(self.conv1(y))
        y = torch.relu(self.conv2(y))
        return self.conv3(y)


def _radius(_kwargs: Mapping[str, Any], scale: int) -> int:
    # bicubic x scale, then 9x9, 5x5, 5x5 at HR
    return receptive_radius([("cubic", scale), ("conv", 4 + 2 + 2)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return (
        set(sd) == {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
        and shape(sd, "conv1.weight")[1:] == (1, 9, 9)
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    return {"n1": shape(sd, "conv1.weight")[0], "n2": shape(sd, "conv2.weight")[0]}, None


ARCH = register_arch(
    Arch(
        name="srcnn",
        build=SRCNN,
        convention="y",
        radius=_radius,
        paper="Dong et al., SRCNN, TPAMI 2016",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"n1": 64, "n2": 32},
    )
)

register_model(
    ModelSpec(
        name="srcnn",
        arch="srcnn",
        kwargs={"n1": 64, "n2": 32},
        scales=(2, 3, 4),
        description="SRCNN 9-5-5 on the bicubic-upscaled luma (Dong et al. 2016)",
        trainable_only=True,
    )
)
