"""How a low-resolution training input is made from a high-resolution crop.

Clean (the default, the standard protocol): ``LR = round(255 * imresize(HR, 1/s)) / 255`` with
the MATLAB-compatible bicubic of :mod:`upscale_cli.resize` - the very function ``upscale bench``
makes its inputs with, so a network trained here is tested on the distribution it saw.

Real-world (``[degradation]`` in the config): the first-order model of Real-ESRGAN (Wang et al.,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021,
Sec. 3.1, Eq. 1: ``x = JPEG_q(D_r(y * k) + n)``), each step drawn per sample: an isotropic
Gaussian blur ``k``, a downscale ``D_r`` whose resampling method is drawn at random (bicubic,
Lanczos, bilinear or area: Real-ESRGAN's "random resize operations", so that the network does
not learn the inverse of one kernel), additive Gaussian noise ``n``, and JPEG compression.
Every random choice comes from the ``numpy.random.Generator`` the caller passes in, so a
sample is a pure function of that generator's seed.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..resize import imresize
from .config import Degradation


def to_uint8(x: Tensor) -> Tensor:
    """0..1 float -> uint8 levels ``round(255 x)``, clamped (the protocol's quantisation)."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def bicubic_lr(hr: Tensor, scale: int) -> Tensor:
    """The standard-protocol LR of ``hr`` (``(..., 3, sH, sW)`` float 0..1) as uint8."""
    return to_uint8(imresize(hr, scale=1.0 / scale))


def _downscale(x: Tensor, scale: int, method: str) -> Tensor:
    if method in ("cubic", "lanczos3", "nearest"):
        return imresize(x, scale=1.0 / scale, kernel=method)
    if method == "area":
        return F.avg_pool2d(x, scale)
    return F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", antialias=True, align_corners=False)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype)
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _jpeg(lr: Tensor, quality: int) -> Tensor:
    buf = io.BytesIO()
    Image.fromarray(lr.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def degraded_lr(hr: Tensor, scale: int, deg: Degradation, rng: np.random.Generator) -> Tensor:
    """Real-ESRGAN's first-order degradation of one HR crop ``(3, sH, sW)`` -> uint8 ``(3, H, W)``."""
    x = hr[None]
    if rng.random() < deg.blur:
        x = _gaussian_blur(x, float(rng.uniform(*deg.blur_sigma)))
    x = _downscale(x, scale, deg.resize[int(rng.integers(len(deg.resize)))])
    if rng.random() < deg.noise:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sigma = float(rng.uniform(*deg.noise_sigma)) / 255.0
        x = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    lr = to_uint8(x[0])
    if rng.random() < deg.jpeg:
        lr = _jpeg(lr, int(rng.integers(deg.jpeg_quality[0], deg.jpeg_quality[1] + 1)))
    return lr
