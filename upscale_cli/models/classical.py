"""Classical interpolation as parameter-free models: ``bicubic``, ``lanczos``, ``nearest``.

They are the baselines of every SR table (the ``bicubic`` row is MATLAB's ``imresize``, see
:mod:`upscale_cli.resize`) and run through the same engine, bench and CLI as the networks.
One multi-scale family, ``resample``, serves every positive integer scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..resize import KERNELS, imresize
from .registry import Arch, ModelSpec, register_arch, register_model

# Receptive-field radius in input pixels when enlarging: the kernel's half-width.
_RADIUS = {"cubic": 2, "lanczos3": 3, "nearest": 0}


class Resample(nn.Module):
    """MATLAB-compatible ``imresize`` by ``scale`` with a fixed kernel; no parameters."""

    def __init__(self, kernel: str = "cubic") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown resampling kernel {kernel!r}; choose from {sorted(KERNELS)}")
        self.kernel = kernel

    def forward(self, x: Tensor, scale: int) -> Tensor:
        return imresize(x, scale=scale, kernel=self.kernel)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}"


def _build(scale: int, kernel: str = "cubic") -> Resample:
    del scale  # multi-scale: the scale is given to forward
    return Resample(kernel)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    return _RADIUS[kwargs.get("kernel", "cubic")]


register_arch(
    Arch(
        name="resample",
        build=_build,
        convention="rgb",
        radius=_radius,
        paper="Keys, Cubic convolution interpolation, IEEE TASSP 1981 (MATLAB imresize)",
        multiscale=True,
        default_kwargs={"kernel": "cubic"},
    )
)

_SCALES = (2, 3, 4, 8)  # listed; any positive integer scale works (multi-scale family)

register_model(
    ModelSpec(
        name="bicubic",
        arch="resample",
        kwargs={"kernel": "cubic"},
        scales=_SCALES,
        aliases=("cubic",),
        description="MATLAB imresize bicubic (Keys a=-0.5), the SR baseline; no weights",
    )
)
register_model(
    ModelSpec(
        name="lanczos",
        arch="resample",
        kwargs={"kernel": "lanczos3"},
        scales=_SCALES,
        aliases=("lanczos3",),
        description="MATLAB imresize lanczos3; no weights",
    )
)
register_model(
    ModelSpec(
        name="nearest",
        arch="resample",
        kwargs={"kernel": "nearest"},
        scales=_SCALES,
        description="nearest neighbour (pixel replication); no weights",
    )
)
