"""PSNR and SSIM under the standard super-resolution evaluation protocol.

The protocol (Timofte et al., Dong et al., Lim et al.; the numbers every SR paper prints):

1. the output is clamped to 0..1 and rounded to 8 bits, halves up (:func:`quantize`);
2. RGB images are reduced to the BT.601 studio-swing luma Y (MATLAB ``rgb2ycbcr``, 16..235, not
   rounded); grey images are evaluated on their single channel;
3. ``scale`` pixels are shaved from every border (:func:`shave`);
4. PSNR = 10 log10(255^2 / MSE) and SSIM (Wang et al., "Image quality assessment: from error
   visibility to structural similarity", IEEE TIP 2004, eq. 13: an 11x11 Gaussian window with
   sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, the mean of the SSIM map over the *valid* window
   positions) are computed per image, in float64, and averaged over images by the caller.

Two edges the protocol leaves open are settled here, the same for every caller and output:

* PSNR is capped at :data:`PSNR_MAX` (100 dB): identical images (a flat test image upscaled
  exactly) would give ``inf``, which no JSON can hold;
* SSIM is undefined (NaN) where the shaved image is smaller than the 11x11 window, as in Wang's
  reference ``ssim_index.m``, which returns ``-Inf`` below 11x11: a smaller window would print
  a figure that is not comparable with the published ones.  PSNR is still defined there.

Every function is batched over leading dimensions and runs on any device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .color import rgb_to_y

DATA_RANGE = 255.0
PSNR_MAX = 100.0
"""Ceiling of :func:`psnr` in dB, reached by identical images (``inf`` uncapped)."""
SSIM_WINDOW = 11
"""Side of the protocol's Gaussian SSIM window; smaller (shaved) images have no SSIM."""


def quantize(x: Tensor) -> Tensor:
    """0..1 float image -> its 8-bit values as float64 in 0..255.

    ``floor(clamp(x, 0, 1) * 255 + 0.5)``: halves round up, as MATLAB's ``im2uint8`` does
    (``torch.round`` would round them to even).
    """
    return torch.floor(x.double().clamp(0.0, 1.0) * 255.0 + 0.5)


def to_eval_channel(x255: Tensor) -> Tensor:
    """The channel the protocol measures, ``(..., 1, H, W)`` in 0..255.

    RGB ``(..., 3, H, W)`` -> BT.601 Y (16..235, unrounded); grey ``(..., 1, H, W)`` -> itself.
    """
    if x255.shape[-3] == 3:
        return rgb_to_y(x255 / 255.0) * 255.0
    if x255.shape[-3] == 1:
        return x255
    raise ValueError(f"expected 1 or 3 channels, got shape {tuple(x255.shape)}")


def shave(x: Tensor, border: int) -> Tensor:
    """Drop ``border`` pixels from each side of the last two dimensions."""
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


def psnr(a: Tensor, b: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Peak signal-to-noise ratio in dB over the last three dimensions (one value per image).

    ``10 * log10(data_range^2 / mean((a - b)^2))``, capped at :data:`PSNR_MAX` (identical
    images give 100 dB, not ``inf``).
    """
    diff = a.double() - b.double()
    mse = diff.pow(2).mean(dim=(-3, -2, -1))
    return (10.0 * torch.log10(data_range**2 / mse)).clamp(max=PSNR_MAX)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> list[float]:
    """Normalised 1-D Gaussian taps; MATLAB ``fspecial('gaussian', size, sigma)`` is their outer product."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    return (g / g.sum()).tolist()


def _valid_filter(t: Tensor, taps: list[float], dim: int) -> Tensor:
    """Correlation of ``t`` with ``taps`` along ``dim``, valid positions only (a sum of shifts)."""
    n = t.shape[dim] - len(taps) + 1
    out = t.narrow(dim, 0, n) * taps[0]
    for k in range(1, len(taps)):
        out.add_(t.narrow(dim, k, n), alpha=taps[k])
    return out


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = DATA_RANGE,
    window: int = SSIM_WINDOW,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) over the last three dimensions.

    Per channel: local means, variances and covariance under a separable Gaussian window (valid
    positions only, population statistics), then
    ``SSIM = ((2 mu_a mu_b + C1)(2 sigma_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))``
    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, averaged over the map and the channels.
    Returns one value per image, float64.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: images must be at least {window}x{window}, got {tuple(a.shape[-2:])}")
    lead = a.shape[:-3]
    c, h, w = a.shape[-3:]
    x = a.double().reshape(-1, h, w)
    y = b.double().reshape(-1, h, w)
    g = gaussian_window(window, sigma)
    maps = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    stats = _valid_filter(_valid_filter(maps, g, -2), g, -1)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return smap.mean(dim=(-2, -1)).reshape(*lead, c).mean(dim=-1)


def scored_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """``(height, width)`` of a ground truth of that size once ``scale`` px are shaved per border."""
    return max(0, height - 2 * scale), max(0, width - 2 * scale)


def has_ssim(height: int, width: int, scale: int) -> bool:
    """Does the protocol define SSIM for a ground truth of this size at ``scale``?"""
    return min(scored_size(height, width, scale)) >= SSIM_WINDOW


def evaluate(sr: Tensor, hr: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """Score super-resolved images against their ground truth by the full protocol.

    Args:
        sr: network output, ``(..., C, H, W)`` float in 0..1 (unclamped is fine); C = 1 or 3.
        hr: ground truth, same shape, 0..1 (8-bit values divided by 255).
        scale: the SR scale; that many pixels are shaved from each border.

    Returns:
        ``(psnr, ssim)``, float64 tensors of shape ``(...)`` (0-d for one image); ``ssim`` is NaN
        when the shaved image is smaller than the window (:func:`has_ssim`).

    Raises:
        ValueError: shapes differ, or nothing is left once the borders are shaved.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"evaluate: output {tuple(sr.shape)} and ground truth {tuple(hr.shape)} differ")
    height, width = hr.shape[-2:]
    if min(scored_size(height, width, scale)) < 1:
        raise ValueError(f"evaluate: {width}x{height} leaves nothing to score once {scale} px are shaved per border")
    a = shave(to_eval_channel(quantize(sr)), scale)
    b = shave(to_eval_channel(quantize(hr)), scale)
    p = psnr(a, b)
    return p, ssim(a, b) if has_ssim(height, width, scale) else torch.full_like(p, math.nan)
