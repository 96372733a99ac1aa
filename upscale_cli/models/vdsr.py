"""VDSR: Kim, Lee, Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional
Networks", CVPR 2016.

The network (Sec. 3.1, Fig. 2) works on the bicubic-interpolated low-resolution image (ILR):
``d`` = 20 layers of 3x3 convolutions with 64 filters, ReLU after all but the last, and the
output is the residual added to the ILR (residual learning, Sec. 3.2, ``y = x + r``).  The
interpolation happens inside :meth:`VDSR.forward` with the project's MATLAB-compatible
``imresize``, so the net takes the LR image like every other family.  Y channel only, 0..1
(BT.601 studio swing, MATLAB ``rgb2ycbcr``).  One set of weights serves every scale (the
paper trains one multi-scale model, Sec. 4.2).

Adjustable gradient clipping (Sec. 3.2): every gradient component is clipped to
``[-theta / lr, theta / lr]``, ``lr`` the current learning rate, which lets the paper train at
learning rate 0.1; :func:`adjustable_gradient_clip_` applies the rule for a trainer.

Keys: ``convs.{0..d-1}.{weight,bias}``.  :func:`convert_keys` also reads

* the authors' official model as converted to MATLAB (huangzehao/caffe-vdsr
  ``Test/VDSR_Official.mat``): ``model.weight.{1..d}`` (MATLAB ``H x W x IN x OUT``, the last
  one stored ``3x3x64`` as MATLAB drops the trailing 1) and ``model.bias.{1..d}`` (``OUT x
  1``).  The authors apply them with MatConvNet ``vl_nnconv(x, w, b, 'Pad', 1)``
  (``Test/utils/VDSR_Matconvnet.m``): a correlation with zero padding, as ``nn.Conv2d``, on
  the ``single`` bicubic ILR of the Y channel in 0..1, ReLU between the convs, output = ILR +
  residual, no clipping inside the net - our network exactly, so the kernels only change
  axis order (no 180-degree flip);
* twtygqyy/pytorch-vdsr's ``vdsr.Net`` (no biases): ``input``, ``residual_layer.{i}.conv``,
  ``output`` (``bias=False``, read off the keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, matlab_filter, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

THETA = 0.01
"""Default ``theta`` of the adjustable clipping rule.  The paper states the rule, not a value;
0.01 keeps the bound at 0.1 for its initial learning rate of 0.1 and grows it as the rate
decays (x10 every 20 epochs)."""


def adjustable_gradient_clip_(parameters: Iterable[Tensor], lr: float, theta: float = THETA) -> float:
    """Clip each gradient component to ``[-theta/lr, theta/lr]`` in place (Kim et al. 2016,
    Sec. 3.2) and return the bound.  Call between ``backward()`` and ``optimizer.step()``."""
    if lr <= 0 or theta <= 0:
        raise ValueError("adjustable gradient clipping needs lr > 0 and theta > 0")
    bound = theta / lr
    for p in parameters:
        if p.grad is not None:
            p.grad.clamp_(-bound, bound)
    return bound


class VDSR(nn.Module):
    """VDSR (Kim et al. 2016, Fig. 2): ``y = ILR + convs(ILR)``, ``ILR = bicubic(x, scale)``.

    Args:
        scale: upscaling factor (any integer >= 2: the same weights serve every scale).
        depth: number of conv layers ``d`` (20 in the paper).
        feats: filters per hidden layer (64).
        channels: image channels (1: the Y channel).
        bias: convolutions with biases (the paper's and the official model's); twtygqyy's
            PyTorch re-implementation has none.
    """

    def __init__(self, scale: int = 2, depth: int = 20, feats: int = 64, channels: int = 1, bias: bool = True) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("VDSR needs at least 2 layers")
        self.scale = scale
        widths = [channels] + [feats] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(conv(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:]))
        he_init_(self)  # the paper initialises as He et al. (2015)

    def forward(self, x: Tensor) -> Tensor:
        ilr = imresize(x, scale=self.scale)
        h = ilr
        for i, layer in enumerate(self.convs):
            h = layer(h)
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return ilr + h


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    return ilr_radius(kwargs.get("depth", 20), scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    depth = len(indices(sd, "convs.", "weight"))
    feats, channels = shape(sd, "convs.0.weight")[:2]
    kwargs: dict[str, Any] = {"depth": depth, "feats": feats, "channels": channels}
    if "convs.0.bias" not in sd:
        kwargs["bias"] = False
    return kwargs, None  # any scale


_MATLAB = re.compile(r"model\.(weight|bias)\.(\d+)")
_TWTYGQYY = re.compile(r"(input|output|residual_layer\.(\d+)\.conv)\.(weight|bias)")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official MATLAB model's and twtygqyy's layouts as ``convs.{i}``; others unchanged."""
    out: dict[str, Tensor] = {}
    if "model.weight.1" in sd:
        for key, value in sd.items():
            if m := _MATLAB.fullmatch(key):
                key = f"convs.{int(m[2]) - 1}.{m[1]}"
                value = matlab_filter(value) if m[1] == "weight" else value.reshape(-1)
            out[key] = value
        return out
    if "input.weight" in sd and "residual_layer.0.conv.weight" in sd:
        last = len(indices(sd, "residual_layer.", "conv.weight")) + 1
        for key, value in sd.items():
            if m := _TWTYGQYY.fullmatch(key):
                index = 0 if m[1] == "input" else last if m[1] == "output" else int(m[2]) + 1
                key = f"convs.{index}.{m[3]}"
            out[key] = value
        return out
    return sd


register_arch(
    Arch(
        name="vdsr",
        build=VDSR,
        convention="y",
        radius=_radius,
        paper="Kim et al., VDSR, CVPR 2016",
        fp16=True,
        matches=layout_matcher(("convs.0.weight", "convs.1.weight"), VDSR, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"depth": 20, "feats": 64},
        test_configs=(({"depth": 5, "feats": 8}, 3), ({"depth": 5, "feats": 8, "bias": False}, 2)),
    )
)

register_model(
    ModelSpec(
        name="vdsr",
        arch="vdsr",
        kwargs={"depth": 20, "feats": 64},
        scales=(2, 3, 4),
        description="VDSR: 20 conv layers on the bicubic-upscaled Y channel (Kim et al. 2016), the authors' model",
    )
)

register_model(
    ModelSpec(
        name="vdsr-pt",
        arch="vdsr",
        kwargs={"depth": 20, "feats": 64, "bias": False},
        scales=(2, 3, 4),
        description="VDSR without biases, twtygqyy/pytorch-vdsr's re-implementation and weights (Kim et al. 2016)",
    )
)
