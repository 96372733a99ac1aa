"""Colour conversions shared by Y-channel models, metrics and training.

All functions take float tensors shaped ``(..., 3, H, W)`` (or ``(..., 1, H, W)`` for Y)
with values in 0..1 and return the same layout.  The YCbCr transform is ITU-R BT.601 in
"studio swing" (Y in 16..235, Cb/Cr in 16..240 on the 0..255 scale), exactly MATLAB's
``rgb2ycbcr``, which is what every SR paper evaluates PSNR/SSIM on.
"""

from __future__ import annotations

import torch
from torch import Tensor

# BT.601 studio-swing coefficients, MATLAB rgb2ycbcr (inputs in 0..1, outputs in 0..255 / 255).
_RGB_TO_YCBCR = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_OFFSET = (16.0, 128.0, 128.0)
LUMA_COEFFS, LUMA_OFFSET = _RGB_TO_YCBCR[0], _OFFSET[0]
"""``Y = (LUMA_OFFSET + sum(LUMA_COEFFS * (R, G, B))) / 255``, R, G, B in 0..1."""
_FORWARD = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64) / 255.0
_INVERSE = torch.linalg.inv(_FORWARD)


def _matrix(m: Tensor, like: Tensor) -> Tensor:
    return m.to(dtype=like.dtype, device=like.device)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """RGB (0..1) -> YCbCr (0..1 scale of the 0..255 studio-swing values), BT.601."""
    m = _matrix(_FORWARD, rgb)
    off = torch.tensor(_OFFSET, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1) / 255.0
    return torch.einsum("ij,...jhw->...ihw", m, rgb) + off


def ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (no clamping)."""
    m = _matrix(_INVERSE, ycc)
    off = torch.tensor(_OFFSET, dtype=ycc.dtype, device=ycc.device).view(3, 1, 1) / 255.0
    return torch.einsum("ij,...jhw->...ihw", m, ycc - off)


def rgb_to_y(rgb: Tensor) -> Tensor:
    """The BT.601 luma channel (16..235 on the 0..255 scale, divided by 255), keepdim."""
    return rgb_to_ycbcr(rgb)[..., :1, :, :]
