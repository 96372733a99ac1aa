"""SRCNN: Dong, Loy, He, Tang, "Image Super-Resolution Using Deep Convolutional Networks",
TPAMI 2016 (ECCV 2014).

Three layers on the bicubic-upscaled image (Sec. 3.1): patch extraction
``F1 = max(0, W1 * Y + B1)`` (Eq. 1, 9x9, n1 = 64), non-linear mapping
``F2 = max(0, W2 * F1 + B2)`` (Eq. 2, f2 x f2, n2 = 32) and reconstruction ``F = W3 * F2 + B3``
(Eq. 3, 5x5), zero-padded so the output keeps the size.  ``f2`` = 5 is the 9-5-5 setting of
Sec. 4.3.2 (the default), ``f2`` = 1 the basic 9-1-5 network of Sec. 4.1.
Like the paper (Sec. 4.1: "only on the luminance channel") convention ``y``: Y in 0..1.  The
bicubic upscaling is part of the forward, with the MATLAB-compatible
:func:`upscale_cli.resize.imresize`, so the model maps LR to HR like every other.

Key layout = yjn870/SRCNN-pytorch (``models.py``): ``conv1``, ``conv2``, ``conv3``;
:func:`convert_keys` reads Lornatang/SRCNN-PyTorch's ``features.0``, ``map.0``,
``reconstruction`` (9-1-5).  Lornatang's ``srcnn_x{2,3,4}.pth`` (commit 089306dd) are one and
the same file and an untrained net (about 8 dB on Set5), so no public weights: trainable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, receptive_radius, rename_layout, shape
from .registry import Arch, ModelSpec, register_arch, register_model


class SRCNN(nn.Module):
    """SRCNN 9-f2-5 (Dong et al. 2016, Fig. 2) on the bicubic-upscaled Y channel."""

    def __init__(self, scale: int = 2, n1: int = 64, n2: int = 32, f2: int = 5) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = conv(1, n1, 9)
        self.conv2 = conv(n1, n2, f2)
        self.conv3 = conv(n2, 1, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = imresize(x, scale=self.scale)
        y = torch.relu(self.conv1(y))
        y = torch.relu(self.conv2(y))
        return self.conv3(y)


_LORNATANG = {"features.0": "conv1", "map.0": "conv2", "reconstruction": "conv3"}


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Lornatang/SRCNN-PyTorch (``model.py``) names to ours; other layouts unchanged."""
    return rename_layout(sd, _LORNATANG)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # bicubic x scale, then 9x9, f2 x f2, 5x5 at HR
    return receptive_radius([("cubic", scale), ("conv", 4 + kwargs.get("f2", 5) // 2 + 2)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    return (
        set(sd) == {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
        and shape(sd, "conv1.weight")[1:] == (1, 9, 9)
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    n2, _, f2, _ = shape(sd, "conv2.weight")
    return {"n1": shape(sd, "conv1.weight")[0], "n2": n2, "f2": f2}, None


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
        convert_keys=convert_keys,
        default_kwargs={"n1": 64, "n2": 32, "f2": 5},
        test_configs=tuple(({"n1": 8, "n2": 4}, s) for s in (2, 3, 4)),
    )
)

register_model(
    ModelSpec(
        name="srcnn",
        arch="srcnn",
        kwargs={"n1": 64, "n2": 32, "f2": 5},
        scales=(2, 3, 4),
        description="SRCNN 9-5-5 on the bicubic-upscaled luma (Dong et al. 2016)",
        trainable_only=True,
    )
)
