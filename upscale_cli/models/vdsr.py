"""VDSR: Kim, Lee, Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional
Networks", CVPR 2016.

The network (Sec. 3.1, Fig. 2) works on the bicubic-interpolated low-resolution image (ILR):
``d`` = 20 layers of 3x3 convolutions with 64 filters, ReLU after all but the last, and the
output is the residual added to the ILR (residual learning, Sec. 3.2, ``y = x + r``).  The
interpolation happens inside :meth:`VDSR.forward` with the project's MATLAB-compatible
``imresize``, so the net takes the LR image like every other family.  Y channel only, 0..1.

Adjustable gradient clipping (Sec. 3.2): every gradient component is clipped to
``[-theta / lr, theta / lr]``, ``lr`` the current learning rate, which lets the paper train at
learning rate 0.1; :func:`adjustable_gradient_clip_` applies the rule for a trainer.

Keys: ``convs.{0..d-1}.{weight,bias}``.  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, shape
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
    """

    def __init__(self, scale: int = 2, depth: int = 20, feats: int = 64, channels: int = 1) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("VDSR needs at least 2 layers")
        self.scale = scale
        widths = [channels] + [feats] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
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
    return {"depth": depth, "feats": feats, "channels": channels}, None  # any scale


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
        default_kwargs={"depth": 20, "feats": 64},
    )
)

register_model(
    ModelSpec(
        name="vdsr",
        arch="vdsr",
        kwargs={"depth": 20, "feats": 64},
        scales=(2, 3, 4),
        description="VDSR: 20 conv layers on the bicubic-upscaled Y channel (Kim et al. 2016); trainable, no public weights",
        trainable_only=True,
    )
)
