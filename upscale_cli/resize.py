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

Sparse tensors do not trace, so while a graph is being traced, exported or compiled
(:func:`exporting`) an integer upscale takes a dense polyphase form of the same matrix: each
output phase ``p`` of factor ``s`` has the same taps around every source pixel, so a dimension is
a symmetric pad (built from slices, as the mirrored indices above) followed by one ``s``-channel
1-D convolution whose channels are interleaved.  Nothing in it depends on the input size, so
one exported graph serves every tile size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
import torch.nn.functional as F
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


def exporting() -> bool:
    """True while ``torch.jit.trace``, ``torch.export``/``torch.compile`` or the ONNX exporter runs."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _phase_weights(factor: int, kernel: str) -> Tensor:
    """``(factor, 2R + 1)`` float64 taps of an integer upscale, one row per output phase.

    Output ``x = factor * (j - 1) + p`` (1-based) sits at ``u = j + d_p`` with
    ``d_p = (p - 0.5) / factor - 0.5``, so its taps are the source pixels ``j + o``,
    ``|o| <= R = ceil(width / 2)``, weighted ``kernel(d_p - o)`` and normalised as in :func:`_contributions`.
    """
    func, width = KERNELS[kernel]
    reach = math.ceil(width / 2)
    phase = (torch.arange(1, factor + 1, dtype=torch.float64) - 0.5) / factor - 0.5
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    weights = func(phase[:, None] - offsets[None, :])
    return weights / weights.sum(dim=1, keepdim=True)


@lru_cache(maxsize=64)
def _phase_values(factor: int, kernel: str) -> tuple[tuple[float, ...], ...]:
    """:func:`_phase_weights` as plain floats, so that every traced call makes the same constant of them."""
    return tuple(map(tuple, _phase_weights(factor, kernel).tolist()))


def _phase_taps(factor: int, kernel: str) -> Tensor:
    """:func:`_phase_weights`, by how the graph is being made.

    ``torch.compile``/``torch.export`` trace the few ops (a constant once folded).
    ``torch.jit.trace`` gets a constant made from floats computed in a worker thread (the tracer's
    state is per thread), so that no op of theirs lands in the graph, which would then differ from
    the next, cached, trace that OpenVINO's sanity check compares it with.
    """
    if torch.compiler.is_compiling():
        return _phase_weights(factor, kernel)
    if not torch.jit.is_tracing():
        return torch.tensor(_phase_values(factor, kernel), dtype=torch.float64)
    with ThreadPoolExecutor(max_workers=1) as pool:
        values = pool.submit(_phase_values, factor, kernel).result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.tensor(values, dtype=torch.float64)


def _symmetric_pad(x: Tensor, dim: int, reach: int) -> Tensor:
    """Pad ``reach`` samples on both sides of ``dim`` with MATLAB's symmetric rule, from slices only.

    Step ``k`` prepends element ``2k - 2`` and appends element ``-(2k - 1)`` of the array padded so
    far: the mirror images of ``-k`` and ``n - 1 + k``, for any length ``n >= 1``.
    """
    def part(start: int, stop: int | None) -> Tensor:
        index = [slice(None)] * x.dim()
        index[dim] = slice(start, stop)
        return x[tuple(index)]

    for k in range(1, reach + 1):
        x = torch.cat([part(2 * k - 2, 2 * k - 1), x, part(-(2 * k - 1), -(2 * k - 2) or None)], dim=dim)
    return x


def _upscale_dim(x: Tensor, dim: int, factor: int, kernel: str) -> Tensor:
    """Integer upscale of ``(B, 1, H, W)`` along ``dim`` (-1 width, -2 height) by one ``factor``-phase conv."""
    taps = _phase_taps(factor, kernel).to(device=x.device, dtype=x.dtype)
    reach = taps.shape[1] // 2
    padded = _symmetric_pad(x, dim, reach)
    if dim == -1:
        y = F.conv2d(padded, taps[:, None, None, :])  # (B, factor, H, W)
        return y.permute(0, 2, 3, 1).flatten(2).unsqueeze(1)
    y = F.conv2d(padded, taps[:, None, :, None])
    return y.permute(0, 2, 1, 3).flatten(1, 2).unsqueeze(1)


def _integer_factor(out: object, length: object, what: str) -> int:
    """``out / length`` as an int when it is one (sizes may be traced tensors or symbolic ints)."""
    if isinstance(out, Tensor) or isinstance(length, Tensor):  # torch.jit.trace: 0-dim size tensors
        with warnings.catch_warnings():  # the ratio is what the trace keeps, not the sizes
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            out, length = int(out), int(length)
    factor = out // length
    if factor * length != out or factor < 1:
        raise ValueError(f"imresize: only integer upscales can be exported, got {what}")
    return int(factor)


def _traceable_upscale(x: Tensor, factors: tuple[int, int], kernel: str) -> Tensor:
    """The dense form of :func:`imresize` for integer upscale factors (height, width)."""
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, x.shape[-2], x.shape[-1])
    for d in sorted((0, 1), key=lambda k: factors[k]):  # the sparse path's order
        if factors[d] > 1:
            y = _upscale_dim(y, d - 2, factors[d], kernel)
    return y.reshape(*lead, y.shape[-2], y.shape[-1])


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
    if exporting():
        if scale is not None:
            factors = (_integer_factor(scale, 1, f"scale {scale}"),) * 2
        else:
            assert size is not None
            factors = (
                _integer_factor(size[0], in_size[0], "an output height that is no multiple of the input's"),
                _integer_factor(size[1], in_size[1], "an output width that is no multiple of the input's"),
            )
        y = x if x.dtype in (torch.float32, torch.float64) else x.float()
        with torch.autocast(x.device.type, enabled=False):
            return _traceable_upscale(y, factors, kernel).to(x.dtype)
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
