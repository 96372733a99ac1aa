"""DRCN: Kim, Lee, Lee, "Deeply-Recursive Convolutional Network for Image Super-Resolution",
CVPR 2016.

Three sub-networks on the bicubic-interpolated image ``x`` (Sec. 3.1, basic model), 256
filters of 3x3 each:

* embedding net ``f1``: two conv+ReLU layers, ``H_0 = f1(x)``;
* inference net ``f2``: ONE conv+ReLU layer ``g`` applied ``D`` = 16 times with the same
  weights, ``H_d = g(H_{d-1}) = max(0, W * H_{d-1} + b)``;
* reconstruction net ``f3`` (shared by every recursion): conv+ReLU then conv to one channel.

Advanced model (Sec. 3.2): every ``H_d`` is reconstructed, with the skip connection adding the
input, ``y_d = x + f3(H_d)``, and the output is the learned weighted average
``y = sum_d w_d * y_d``.  Recursive supervision (Sec. 3.2-3.3): :meth:`DRCN.forward_all` returns
the output and every ``y_d``; :func:`multi_supervision_loss` is the paper's loss
``alpha * mean_d l(y_d, t) + (1 - alpha) * l(y, t)`` (its weight decay is the optimiser's).
MemNet and CMSC reuse :class:`PredictionEnsemble` and :func:`multi_supervision_loss`.

Y channel, 0..1.  Keys: ``embed.{0,2}``, ``recursive``, ``reconstruct.{0,2}``,
``ensemble.weight``.  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..resize import imresize
from .layers import conv, ilr_radius, layout_matcher, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


class PredictionEnsemble(nn.Module):
    """Learned weighted sum of ``n`` intermediate predictions, ``sum_i w_i * y_i`` (DRCN,
    multi-supervised MemNet, CMSC); the weights start at ``1/n``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((n,), 1.0 / n))

    def forward(self, preds: Sequence[Tensor]) -> Tensor:
        out = preds[0] * self.weight[0]
        for w, p in zip(self.weight[1:], preds[1:]):
            out = out + w * p
        return out


def multi_supervision_loss(
    final: Tensor,
    intermediates: Sequence[Tensor],
    target: Tensor,
    alpha: float,
    criterion: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
) -> Tensor:
    """``alpha * mean_d criterion(y_d, t) + (1 - alpha) * criterion(y, t)``: DRCN's recursive
    supervision (MSE, as in the paper) and MemNet's multi-supervision loss."""
    inter = torch.stack([criterion(y, target) for y in intermediates]).mean()
    return alpha * inter + (1.0 - alpha) * criterion(final, target)


class DRCN(nn.Module):
    """DRCN (Kim et al. 2016) on the Y channel.

    Args:
        scale: upscaling factor (the weights serve every scale: the net sees the bicubic image).
        recursions: ``D``, applications of the recursive layer (16).
        feats: filters per layer (256).
    """

    def __init__(self, scale: int = 2, recursions: int = 16, feats: int = 256) -> None:
        super().__init__()
        self.scale = scale
        self.recursions = recursions
        self.embed = nn.Sequential(conv(1, feats), nn.ReLU(), conv(feats, feats), nn.ReLU())
        self.recursive = conv(feats, feats)
        self.reconstruct = nn.Sequential(conv(feats, feats), nn.ReLU(), conv(feats, 1))
        self.ensemble = PredictionEnsemble(recursions)

    def forward_all(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output ``y`` and the ``D`` intermediate predictions ``y_d``."""
        ilr = imresize(x, scale=self.scale)
        h = self.embed(ilr)
        preds = []
        for _ in range(self.recursions):
            h = torch.relu(self.recursive(h))
            preds.append(ilr + self.reconstruct(h))
        return self.ensemble(preds), preds

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[0]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    return ilr_radius(2 + kwargs.get("recursions", 16) + 2, scale)  # embed, recursions, reconstruct


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {"recursions": shape(sd, "ensemble.weight")[0], "feats": shape(sd, "recursive.weight")[0]}, None


register_arch(
    Arch(
        name="drcn",
        build=DRCN,
        convention="y",
        radius=_radius,
        paper="Kim et al., DRCN, CVPR 2016",
        fp16=True,
        bf16=True,
        matches=layout_matcher(("recursive.weight", "ensemble.weight", "embed.0.weight"), DRCN, _infer),
        infer_kwargs=_infer,
        default_kwargs={"recursions": 16, "feats": 256},
    )
)

register_model(
    ModelSpec(
        name="drcn",
        arch="drcn",
        kwargs={"recursions": 16, "feats": 256},
        scales=(2, 3, 4),
        description="DRCN: one conv applied 16 times, recursive supervision, ensemble of 16 predictions (Kim et al. 2016); trainable, no public weights",
        trainable_only=True,
    )
)
