"""LapSRN: Lai, Huang, Ahuja, Yang, "Deep Laplacian Pyramid Networks for Fast and Accurate
Super-Resolution", CVPR 2017, and its multi-scale, weight-shared extension MS-LapSRN,
"Fast and Accurate Image Super-Resolution with Deep Laplacian Pyramid Networks", TPAMI 2018.

A Laplacian pyramid: the LR image is upscaled x2 per level,
``log2(scale)`` levels (x2 -> x4 -> x8).  At level ``s``:

* feature extraction branch: ``d`` conv layers, then a transposed conv that upsamples the
  features x2, then a conv that predicts the residual (high-frequency) image ``r_s``;
* image reconstruction branch: a transposed conv (4x4, bilinear initialisation) upsamples the
  previous level's image, ``I_s = up(I_{s-1}) + r_s``.

Every level is supervised with the Charbonnier penalty ``rho(x) = sqrt(x^2 + eps^2)`` against
the HR image resized to that level: :meth:`forward_pyramid` returns every
``I_s`` and :func:`pyramid_loss` sums ``criterion(I_s, bicubic-downscaled HR)`` over levels (pass
the trainer's ``charbonnier`` as criterion).  ``upscale train`` does so through the
deep-supervision hook (:meth:`training_outputs`, :meth:`supervision_loss`; see
:mod:`upscale_cli.train.supervision`).

* ``shared=False`` - LapSRN (CVPR; the authors' MatConvNet ``init_LapSRN_model.m``): 64 filters,
  ``depth`` convs per level (the releases: 10 at x2 and x4, 5 at x8, :func:`default_depth`),
  LeakyReLU 0.2 after every conv, the 3x3 transposed feature upsampler (MatConvNet crop
  ``[0, 1, 0, 1]``) followed by LeakyReLU, parameters per level (812K at x4: the paper's count,
  weights only).  ``bias=False, up_kernel=4`` is twtygqyy/pytorch-LapSRN's variant (model
  ``lapsrn-pt``): no biases, a 4x4 feature upsampler with padding 1.
* ``shared=True`` - MS-LapSRN (TPAMI; ``init_MSLapSRN_model.m``): the feature-embedding
  sub-network (a recursive block of ``depth`` = 5 pre-activated convs applied ``recursions``
  = 8 times with the shared-source skip ``H_r = block(H_{r-1}) + H_0``, ``LRL = 'SS'``), the
  feature upsampler (no activation after it), the residual conv and the image upsampler are
  shared across levels, so one set of weights serves x2, x4 and x8 (D5R8: 222K parameters).

Y channel (BT.601, 16..235 / 255), 0..1, output not clipped (``SR_LapSRN.m``).  Keys:
``input_conv``; LapSRN ``levels.{l}.convs.{i}``, ``levels.{l}.up``, ``levels.{l}.residual``,
``levels.{l}.img_up``, level 0 the coarsest; MS-LapSRN ``block.{i}``, ``up``, ``residual``,
``img_up``.  :func:`convert_keys` reads the authors' MatConvNet models (``LapSRN_x{2,4,8}.mat``,
``MSLapSRN_D5R8.mat``: params ``level{s}_conv{d}_f`` ... with ``level{L}`` the coarsest, and
``conv{d}_f``, ``upconv_f`` ...) and twtygqyy's ``lapsrn.Net`` (``conv_input``,
``convt_F{l}.0.cov_block.{i}``, ``convt_R{l}``, ``convt_I{l}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..resize import imresize
from .layers import (
    RFLayer,
    conv,
    doublings,
    has,
    he_init_,
    indices,
    layout_matcher,
    matlab_filter,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

SLOPE = 0.2
"""LeakyReLU negative slope of both networks (``dagnn.ReLU('leak', 0.2)``)."""


def default_depth(scale: int) -> int:
    """Convs per level of the authors' LapSRN: 10 at x2 and x4, 5 at x8 (``LapSRN_x8.mat``)."""
    return 10 if scale < 8 else 5


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


def _up_padding(kernel: int) -> int:
    """Rows cropped at the top/left of the x2 transposed conv; one more at the bottom/right
    when ``kernel`` is odd, so that the output is exactly ``2H x 2W``."""
    return (kernel - 2) // 2


class _FeatureUp(nn.ConvTranspose2d):
    """x2 transposed conv with the ``2H x 2W`` output crop: 3x3 with MatConvNet crop
    ``[0, 1, 0, 1]`` (the authors' ``init_LapSRN_model.m``), 4x4 with crop 1 (PyTorch padding 1)."""

    def __init__(self, feats: int, kernel: int = 3, bias: bool = True) -> None:
        super().__init__(feats, feats, kernel, stride=2, padding=_up_padding(kernel), bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        return super().forward(x)[..., : 2 * h, : 2 * w]


class _ImageUp(nn.ConvTranspose2d):
    """4x4 transposed conv, stride 2, crop 1, no bias, initialised to bilinear x2."""

    def __init__(self) -> None:
        super().__init__(1, 1, 4, stride=2, padding=1, bias=False)
        self.reset_bilinear()

    def reset_bilinear(self) -> None:
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
        with torch.no_grad():
            self.weight.copy_((taps[:, None] * taps[None, :]).view(1, 1, 4, 4))


class _Pyramid(nn.Module):
    """The shared forward: ``I_s = img_up_s(I_{s-1}) + r_s`` over the levels."""

    scale: int

    def _init_weights(self) -> None:
        """He initialisation of the feature branch (the releases' ``sqrt(2 / (f*f*n))``
        Gaussian), bilinear image upsamplers."""
        he_init_(self, SLOPE)
        for layer in self.modules():
            if isinstance(layer, _ImageUp):
                layer.reset_bilinear()

    def _features(self, x: Tensor) -> list[Tensor]:
        """The residual image ``r_s`` of every level."""
        raise NotImplementedError

    def _img_up(self, level: int) -> nn.Module:
        raise NotImplementedError

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """The x2, x4, ... reconstructions, coarse to fine; the last is the output."""
        outs = []
        img = x
        for level, res in enumerate(self._features(x)):
            img = self._img_up(level)(img) + res
            outs.append(img)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pyramid(x)[-1]

    def training_outputs(self, x: Tensor) -> list[Tensor]:
        """The trainer's deep-supervision hook: every level's reconstruction."""
        return self.forward_pyramid(x)

    def supervision_loss(
        self, outputs: Sequence[Tensor], hr: Tensor, criterion: Callable[[Tensor, Tensor], Tensor], progress: float
    ) -> Tensor:
        """:func:`pyramid_loss` (``progress`` is not used: the levels weigh alike throughout)."""
        return pyramid_loss(outputs, hr, criterion)


class LapSRN(_Pyramid):
    """LapSRN (CVPR 2017): per-level weights.

    Args:
        scale: 2, 4 or 8 (one level per factor of two).
        depth: conv layers per level; ``None``: the authors' :func:`default_depth` (10, 5 at x8).
        feats: filters (64).
        bias: biases in every conv and feature upsampler (the authors'); twtygqyy's PyTorch
            re-implementation has none.
        up_kernel: kernel of the feature upsampler: 3 (the authors'), 4 (twtygqyy's).
    """

    def __init__(
        self, scale: int = 4, depth: int | None = None, feats: int = 64, bias: bool = True, up_kernel: int = 3
    ) -> None:
        super().__init__()
        self.scale = scale
        depth = default_depth(scale) if depth is None else depth
        self.input_conv = conv(1, feats, bias=bias)
        self.levels = nn.ModuleList(
            nn.ModuleDict(
                {
                    "convs": nn.ModuleList(conv(feats, feats, bias=bias) for _ in range(depth)),
                    "up": _FeatureUp(feats, up_kernel, bias),
                    "residual": conv(feats, 1, bias=bias),
                    "img_up": _ImageUp(),
                }
            )
            for _ in range(doublings(scale, "LapSRN"))
        )
        self._init_weights()

    def _img_up(self, level: int) -> nn.Module:
        return self.levels[level]["img_up"]

    def _features(self, x: Tensor) -> list[Tensor]:
        h = _lrelu(self.input_conv(x))
        residuals = []
        for level in self.levels:
            for layer in level["convs"]:  # type: ignore[union-attr]
                h = _lrelu(layer(h))
            h = _lrelu(level["up"](h))
            residuals.append(level["residual"](h))
        return residuals


class MSLapSRN(_Pyramid):
    """MS-LapSRN (TPAMI 2018): weights shared across levels and recursions.

    Args:
        scale: 2, 4 or 8; the same weights run every one.
        depth: ``D``, pre-activated convs in the recursive block (5).
        recursions: ``R``, applications of the block per level (8).
        feats: filters (64).
    """

    def __init__(self, scale: int = 4, depth: int = 5, recursions: int = 8, feats: int = 64) -> None:
        super().__init__()
        self.scale = scale
        self.recursions = recursions
        self.input_conv = conv(1, feats)
        self.block = nn.ModuleList(conv(feats, feats) for _ in range(depth))
        self.up = _FeatureUp(feats)
        self.residual = conv(feats, 1)
        self.img_up = _ImageUp()
        self._init_weights()

    def _img_up(self, level: int) -> nn.Module:
        return self.img_up

    def _features(self, x: Tensor) -> list[Tensor]:
        h = self.input_conv(x)
        residuals = []
        for _ in range(doublings(self.scale, "LapSRN")):
            source = h
            for _ in range(self.recursions):
                for layer in self.block:
                    h = layer(_lrelu(h))
                h = h + source
            h = self.up(_lrelu(h))
            residuals.append(self.residual(h))
        return residuals


def pyramid_loss(outputs: Sequence[Tensor], hr: Tensor, criterion: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Sum over levels of ``criterion(I_s, HR_s)``, ``HR_s`` the HR image bicubic-downscaled to
    level ``s``'s size (with ``criterion`` the Charbonnier penalty, as in the papers).
    ``criterion`` may return a vector of loss terms: they are summed element-wise."""
    total = torch.zeros((), dtype=hr.dtype, device=hr.device)
    for out in outputs:
        target = hr if out.shape[-2:] == hr.shape[-2:] else imresize(hr, size=tuple(out.shape[-2:]))
        total = total + criterion(out, target)
    return total


def build(scale: int = 4, shared: bool = False, **kwargs: Any) -> _Pyramid:
    """LapSRN (``shared=False``) or MS-LapSRN (``shared=True``)."""
    return MSLapSRN(scale, **kwargs) if shared else LapSRN(scale, **kwargs)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    if kwargs.get("shared", False):
        per_level, kernel = kwargs.get("depth", 5) * kwargs.get("recursions", 8), 3
    else:
        depth = kwargs.get("depth")
        per_level, kernel = default_depth(scale) if depth is None else depth, kwargs.get("up_kernel", 3)
    # feature branch: input conv, per level its convs, the transposed conv; then the residual
    # conv of the last level (earlier residuals reach less far through the bilinear upsamplers)
    chain: list[RFLayer] = [("conv", 1)]
    for _ in range(doublings(scale, "LapSRN")):
        chain += [("conv", per_level), ("tconv", kernel, 2, _up_padding(kernel))]
    return receptive_radius([*chain, ("conv", 1)], scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    feats = shape(sd, "input_conv.weight")[0]
    if has(sd, "block.0.weight"):
        return {"shared": True, "depth": len(indices(sd, "block.", "weight")), "feats": feats}, None
    levels = len(indices(sd, "levels.", "residual.weight"))
    depth = len(indices(sd, "levels.0.convs.", "weight"))
    kwargs = {"shared": False, "depth": depth, "feats": feats, "bias": has(sd, "input_conv.bias")}
    return {**kwargs, "up_kernel": shape(sd, "levels.0.up.weight")[-1]}, 2**levels


def _matches(sd: StateDict) -> bool:
    second = "block.0.weight" if has(sd, "block.0.weight") else "levels.0.img_up.weight"
    return layout_matcher(("input_conv.weight", second), build, _infer)(sd)


_DAGNN = re.compile(r"(?:level(\d+)_)?(input_conv|conv(\d+)|upconv|residual_conv|img_up)_([fb])")
"""A MatConvNet param of ``init_LapSRN_model.m`` (``level{s}_conv{d}_f``, ``level{s}_upconv_b``
...) or of ``init_MSLapSRN_model.m`` (``conv{d}_f``, ``upconv_f`` ...: no level)."""
_DAGNN_MODULES = {"input_conv": "input_conv", "upconv": "up", "residual_conv": "residual", "img_up": "img_up"}
_TWTYGQYY = re.compile(r"convt_(?:F(\d+)\.(?:\d+\.)?cov_block\.(\d+)|([RI])(\d+))\.weight")
"""twtygqyy/pytorch-LapSRN ``lapsrn.Net``: ``convt_F{l}.0.cov_block.{i}`` (convs at even ``i``,
the feature upsampler last), ``convt_R{l}`` (residual), ``convt_I{l}`` (image upsampler)."""


def _from_dagnn(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' MatConvNet params in our layout.  Their levels count down from the coarsest
    (``level{L}``, the first x2) to ``level1`` (the output): ``levels.{L - s}``."""
    matched = {key: _DAGNN.fullmatch(key) for key in sd}
    top = max((int(m[1]) for m in matched.values() if m and m[1]), default=0)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = matched[key]
        if m is None:
            out[key] = value
            continue
        level, name, index, kind = m.groups()
        if index is None:
            module = _DAGNN_MODULES[name]
        else:
            module = f"convs.{int(index) - 1}" if level else f"block.{int(index) - 1}"
        prefix = f"levels.{top - int(level)}." if level else ""
        tensor = matlab_filter(value) if kind == "f" else value.reshape(-1)
        out[f"{prefix}{module}.{'weight' if kind == 'f' else 'bias'}"] = tensor
    return out


def _from_twtygqyy(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """twtygqyy's ``lapsrn.Net`` state dict in our layout (``convt_F1`` is level 0)."""
    matched = {key: _TWTYGQYY.fullmatch(key) for key in sd}
    last: dict[str, int] = {}  # the feature upsampler: the last layer of each level's block
    for m in matched.values():
        if m and m[1]:
            last[m[1]] = max(last.get(m[1], 0), int(m[2]))
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = matched[key]
        if key == "conv_input.weight":
            key = "input_conv.weight"
        elif m and m[1]:
            module = "up" if int(m[2]) == last[m[1]] else f"convs.{int(m[2]) // 2}"
            key = f"levels.{int(m[1]) - 1}.{module}.weight"
        elif m:
            key = f"levels.{int(m[4]) - 1}.{'residual' if m[3] == 'R' else 'img_up'}.weight"
        out[key] = value
    return out


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' MatConvNet models (LapSRN_x{2,4,8}.mat, MSLapSRN_D5R8.mat as read by
    :mod:`upscale_cli.formats.matlab`) and twtygqyy's PyTorch LapSRN as our layout; others unchanged."""
    if "input_conv_f" in sd:
        return _from_dagnn(sd)
    if "conv_input.weight" in sd and any(key.startswith("convt_F") for key in sd):
        return _from_twtygqyy(sd)
    return sd


register_arch(
    Arch(
        name="lapsrn",
        build=build,
        convention="y",
        radius=_radius,
        paper="Lai et al., LapSRN, CVPR 2017 / MS-LapSRN, TPAMI 2018",
        fp16=True,
        matches=_matches,
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"shared": False, "feats": 64},
        test_configs=(({"depth": 2, "feats": 8}, 4), ({"shared": True, "depth": 2, "feats": 8}, 2)),
    )
)

register_model(
    ModelSpec(
        name="lapsrn",
        arch="lapsrn",
        kwargs={"shared": False, "feats": 64},
        scales=(2, 4, 8),
        description="LapSRN: Laplacian pyramid x2 -> x4 -> x8, Charbonnier loss per level (Lai et al. 2017), "
        "the authors' MatConvNet models",
    )
)
register_model(
    ModelSpec(
        name="ms-lapsrn",
        arch="lapsrn",
        kwargs={"shared": True, "depth": 5, "recursions": 8, "feats": 64},
        scales=(2, 4, 8),
        aliases=("ms-lapsrn-d5r8",),
        description="MS-LapSRN D5R8: LapSRN with weights shared across levels and recursions, one net for x2/x4/x8 "
        "(Lai et al. 2018), the authors' model",
    )
)
register_model(
    ModelSpec(
        name="lapsrn-pt",
        arch="lapsrn",
        kwargs={"shared": False, "depth": 10, "feats": 64, "bias": False, "up_kernel": 4},
        scales=(4,),
        aliases=("lapsrn-twtygqyy",),
        description="LapSRN x4 as re-implemented in PyTorch by twtygqyy (no biases, 4x4 feature upsampler)",
    )
)
