"""MATLAB-compatible ``imresize`` on torch tensors.

Every SR paper makes its low-resolution inputs with MATLAB's ``imresize(hr, 1/s, 'bicubic')``
and compares against MATLAB's bicubic upscale, so this one function is the bicubic model, the
benchmark's LR generation, training's degradation and every chroma/alpha/``--outscale`` resize.

It follows MATLAB's ``imresize.m`` (``contributions``) exactly:

* kernels: Keys' cubic convolution with ``a = -0.5`` (Keys, "Cubic convolution interpolation for
  digital image processing", IEEE TASSP 1981, eq. 15), ``lanczos3`` and ``nearest`` (MATLAB's box
  of width 1);
* antialiasing when shrinking: the kernel is stretched by ``1/scale``, ``h(x) = scale * k(scale*x)``,
  and its support widened to ``width/scale``;
* for output pixel ``x = 1..out`` (1-based) the source position is
  ``u = x/scale + 0.5*(1 - 1/scale)``, the taps are ``left + 0..P-1`` with
  ``left = floor(u - width/2)`` and ``P = ceil(width) + 2``, the weights ``h(u - index)`` are
  normalised to sum to one, and out-of-range indices are mirrored (symmetric padding,
  ``[1..n, n..1]`` repeated);
* the output size is ``ceil(scale * in)``; the dimensions are resized in order of increasing
  scale factor (a stable sort, so height first when the two are equal).

Weights are computed once per geometry in float64 and cached as a sparse ``(out, in)`` matrix per
device and dtype; resizing one dimension is one sparse-dense matmul over every leading dimension
(batches, channels) at once, linear in the image size, on any device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

_EPS = 2.220446049250313e-16  # MATLAB's eps, used inside its lanczos3 formula


def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _lanczos3(x: Tensor) -> Tensor:
    """MATLAB's ``lanczos3``: sinc(x) sinc(x/3) on |x| < 3, with MATLAB's eps guard at 0."""
    num = torch.sin(math.pi * x) * torch.sin(math.pi * x / 3.0) + _EPS
    den = math.pi**2 * x * x / 3.0 + _EPS
    return num / den * (x.abs() < 3)


def _box(x: Tensor) -> Tensor:
    """MATLAB's ``box`` (nearest neighbour): 1 on [-0.5, 0.5)."""
    return ((x >= -0.5) & (x < 0.5)).to(x.dtype)


KERNELS: dict[str, tuple[Callable[[Tensor], Tensor], float]] = {
    "cubic": (_cubic, 4.0),
    "lanczos3": (_lanczos3, 6.0),
    "nearest": (_box, 1.0),
}
"""Kernel name -> (kernel function, support width in source pixels)."""


def _contributions(in_len: int, out_len: int, scale: float, kernel: str, antialias: bool) -> tuple[Tensor, Tensor]:
    """MATLAB ``contributions``: (weights, 0-based indices), both ``(out_len, taps)``, float64/int64.

    Taps whose weight is zero for every output pixel are dropped, as MATLAB does.
    """
    func, width = KERNELS[kernel]
    if scale < 1 and antialias:
        kern = lambda t: scale * func(scale * t)  # noqa: E731 - MATLAB's h = @(x) scale*kernel(scale*x)
        width = width / scale
    else:
        kern = func
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = torch.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based
    weights = kern(u[:, None] - idx)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # symmetric border: aux = [1..n, n..1]; index -> aux(mod(index - 1, 2n) + 1), here 0-based
    i0 = torch.remainder(idx.long() - 1, 2 * in_len)
    i0 = torch.where(i0 < in_len, i0, 2 * in_len - 1 - i0)
    keep = weights.ne(0).any(dim=0)
    return weights[:, keep].contiguous(), i0[:, keep].contiguous()


_SPARSE_DEVICES = ("cpu", "cuda")
"""Devices with sparse CSR matmul; elsewhere (MPS) the resize runs on the CPU."""


@lru_cache(maxsize=256)
def _matrix(
    in_len: int, out_len: int, scale: float, kernel: str, antialias: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The ``(out_len, in_len)`` resampling matrix as a sparse CSR tensor on ``device``.

    Mirrored taps that land on the same pixel are summed.
    """
    weights, idx = _contributions(in_len, out_len, scale, kernel, antialias)
    rows = torch.arange(out_len).repeat_interleave(weights.shape[1])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul by CSR is all we use
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(
            torch.stack([rows, idx.reshape(-1)]), weights.reshape(-1), (out_len, in_len), check_invariants=False
        )
        return coo.coalesce().to_sparse_csr().to(device=device, dtype=dtype)


def _resize_dim(x: Tensor, dim: int, out_len: int, scale: float, kernel: str, antialias: bool) -> Tensor:
    """Resize ``x`` along ``dim`` (-1 width, -2 height) to ``out_len`` samples: one sparse matmul."""
    m = _matrix(x.shape[dim], out_len, scale, kernel, antialias, x.device, x.dtype)
    moved = x.movedim(dim, 0)
    y = m @ moved.reshape(moved.shape[0], -1)
    return y.reshape(out_len, *moved.shape[1:]).movedim(0, dim)


def output_size(in_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for a scale factor: ``ceil(scale * in)`` per dimension."""
    return (math.ceil(scale * in_size[0]), math.ceil(scale * in_size[1]))


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    kernel: str = "cubic",
    antialias: bool = True,
) -> Tensor:
    """Resize the last two dimensions of ``x`` (``(..., C, H, W)`` or ``(..., H, W)``) as MATLAB does.

    Args:
        x: floating-point tensor on any device; computed in float32, or in the input dtype when
            that is wider; returned in the input dtype.
        scale: scale factor for both dimensions; the output size is ``ceil(scale * in)``.
        size: output ``(height, width)``; the per-dimension scale is then ``out / in`` (MATLAB's
            ``imresize(A, [rows cols])``).  Give exactly one of ``scale`` and ``size``.
        kernel: ``"cubic"`` (Keys, a = -0.5), ``"lanczos3"`` or ``"nearest"``.
        antialias: stretch the kernel when shrinking (MATLAB's default).  ``"nearest"`` never
            antialiases (MATLAB's default for that method).

    Returns:
        The resized tensor, same leading dimensions, same dtype and device.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale and size")
    if kernel not in KERNELS:
        raise ValueError(f"imresize: unknown kernel {kernel!r}; choose from {sorted(KERNELS)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize: expected a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"imresize: expected (..., H, W), got shape {tuple(x.shape)}")
    in_size = (x.shape[-2], x.shape[-1])
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        out = output_size(in_size, scale)
        scales = (float(scale), float(scale))
    else:
        assert size is not None
        out = (int(size[0]), int(size[1]))
        if min(out) < 1:
            raise ValueError(f"imresize: output size must be positive, got {out}")
        scales = (out[0] / in_size[0], out[1] / in_size[1])
    antialias = antialias and kernel != "nearest"
    dtype, device = x.dtype, x.device
    y = x if dtype in (torch.float32, torch.float64) else x.float()
    if device.type not in _SPARSE_DEVICES:
        y = y.cpu()
    with torch.autocast(y.device.type, enabled=False):  # always full precision, even inside autocast
        for d in sorted((0, 1), key=lambda k: scales[k]):  # stable: height first on a tie
            y = _resize_dim(y, d - 2, out[d], scales[d], kernel, antialias)
    return y.contiguous().to(device=device, dtype=dtype)
