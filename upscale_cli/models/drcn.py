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
the output and every ``y_d``; :func:`multi_supervision_loss` is the paper's loss (without its
weight-decay term, which is the optimiser's) ``alpha * mean_d l(y_d, t) + (1 - alpha) * l(y, t)``.
``upscale train`` applies it through :class:`RecursiveSupervision` (the trainer's
deep-supervision hook, :mod:`upscale_cli.train.supervision`), ``alpha`` decaying from 1 to 0
over the first half of training: ``alpha`` weighs the intermediate outputs, which ease the
early optimisation, and the final output takes over as it decays.  That schedule is our
choice (public re-implementations also decay ``alpha`` linearly from 1 to 0).
MemNet and CMSC reuse :class:`PredictionEnsemble`, :class:`RecursiveSupervision` and
:func:`multi_supervision_loss`.

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
    supervision (MSE, as in the paper) and MemNet's multi-supervision loss.

    ``criterion`` may return a scalar or a vector (several loss terms at once, as the trainer's
    objective does): the combination is taken element-wise.  With no intermediate output it is
    ``criterion(y, t)``.
    """
    if not intermediates:
        return criterion(final, target)
    inter = torch.stack([criterion(y, target) for y in intermediates]).mean(0)
    return alpha * inter + (1.0 - alpha) * criterion(final, target)


class RecursiveSupervision:
    """The trainer's deep-supervision hook for networks with ``forward_all(x) -> (y, [y_1..y_n])``
    (see :mod:`upscale_cli.train.supervision`): the outputs are ``[y_1, ..., y_n, y]`` and the
    loss is :func:`multi_supervision_loss` with ``alpha = supervision_alpha(n, progress)``.

    The default ``alpha = n / (n + 1)`` weighs the ``n`` intermediate predictions and the final
    output equally, ``1 / (n + 1)`` each: MemNet's multi-supervision loss (Tai et al. 2017,
    Sec. 3.3, whose weight ``1 / (M + 1)`` is on the final output in their notation).
    """

    def forward_all(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def supervision_alpha(self, n: int, progress: float) -> float:
        """The weight of the intermediate outputs with ``n`` of them, ``progress`` (0..1) into training."""
        return n / (n + 1)

    def training_outputs(self, x: Tensor) -> list[Tensor]:
        """Every supervised output, the final one (``forward(x)``) last."""
        final, preds = self.forward_all(x)
        return [*preds, final]

    def supervision_loss(
        self, outputs: Sequence[Tensor], hr: Tensor, criterion: Callable[[Tensor, Tensor], Tensor], progress: float
    ) -> Tensor:
        """:func:`multi_supervision_loss` over :meth:`training_outputs`, every one against ``hr``."""
        alpha = self.supervision_alpha(len(outputs) - 1, progress)
        return multi_supervision_loss(outputs[-1], outputs[:-1], hr, alpha, criterion)


ALPHA_ZERO_AT = 0.5
"""Fraction of training after which DRCN's ``alpha`` reaches 0 (our choice, see the module docstring)."""


class DRCN(RecursiveSupervision, nn.Module):
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

    def supervision_alpha(self, n: int, progress: float) -> float:
        """``alpha`` decays linearly from 1 at the start to 0 at :data:`ALPHA_ZERO_AT` of training."""
        return max(0.0, 1.0 - progress / ALPHA_ZERO_AT)


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
        matches=layout_matcher(("recursive.weight", "ensemble.weight", "embed.0.weight"), DRCN, _infer),
        infer_kwargs=_infer,
        default_kwargs={"recursions": 16, "feats": 256},
        test_configs=(({"recursions": 3, "feats": 8}, 2),),
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
