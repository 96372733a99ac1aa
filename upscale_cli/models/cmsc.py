"""CMSC: Hu, Gao, Li, Huang, Wang, "Single Image Super-Resolution via Cascaded Multi-Scale Cross
Network", arXiv:1802.08808, 2018.

On the bicubic-interpolated image ``x``: a feature extraction net, a cascade of ``S``
subnetworks and a shared reconstruction net (Sec. III):

* multi-scale cross (MSC) module: two branches with different kernel sizes (3x3 and 5x5)
  whose streams are crossed by merge-and-run mappings (Zhao et al. 2017): at every layer each
  branch adds the *average* of both branches' inputs to its own residual,
  ``a' = (a + b)/2 + F3(a)``, ``b' = (a + b)/2 + F5(b)``; the module outputs ``(a' + b')/2``;
* subnetwork ``s``: ``B`` stacked MSC modules with residual-features learning,
  ``F_s = F_{s-1} + MSC_B(...MSC_1(F_{s-1}))`` - each stage refines the previous stage's features;
* cascaded supervision and assembling: every stage is reconstructed, ``y_s = x + f_rec(F_s)``,
  and the output is the learned weighted average ``y = sum_s w_s y_s``;
  :meth:`CMSC.forward_all` + :func:`~upscale_cli.models.drcn.multi_supervision_loss` train it
  (``upscale train``: through :class:`~upscale_cli.models.drcn.RecursiveSupervision`, every
  stage's prediction and the assembled output weighted equally, as MemNet's loss - the paper's
  weighting was not available to check).

This is our reading of the paper's description: ReLU-conv (pre-activated, no batch norm)
layers of 64 filters, one conv per branch and layer, two layers per MSC module, 3 stages of 3
modules.  The paper's exact widths and depths were not available to check, so no parameter
count is claimed for it.  Y channel, 0..1.  Keys: ``fenet.{0,2}``,
``stages.{s}.{m}.{branch3,branch5}.{0,1}``, ``recon``, ``ensemble.weight``.  No public weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .drcn import PredictionEnsemble, RecursiveSupervision
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

LAYERS = 2
"""Merge-and-run layers per MSC module."""


class MSCModule(nn.Module):
    """Two branches (3x3, 5x5) crossed by merge-and-run at each of :data:`LAYERS` layers."""

    def __init__(self, feats: int) -> None:
        super().__init__()
        self.branch3 = nn.ModuleList(conv(feats, feats, 3) for _ in range(LAYERS))
        self.branch5 = nn.ModuleList(conv(feats, feats, 5) for _ in range(LAYERS))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x, x
        for f3, f5 in zip(self.branch3, self.branch5):
            mean = (a + b) * 0.5
            a, b = mean + f3(torch.relu(a)), mean + f5(torch.relu(b))
        return (a + b) * 0.5


class CMSC(RecursiveSupervision, nn.Module):
    """CMSC (Hu et al. 2018).

    Args:
        scale: upscaling factor (the weights serve every scale).
        stages: cascaded subnetworks ``S`` (3).
        modules: MSC modules per subnetwork ``B`` (3).
        feats: filters (64).
    """

    def __init__(self, scale: int = 2, stages: int = 3, modules: int = 3, feats: int = 64) -> None:
        super().__init__()
        self.scale = scale
        self.fenet = nn.Sequential(conv(1, feats), nn.ReLU(), conv(feats, feats))
        self.stages = nn.ModuleList(
            nn.Sequential(*(MSCModule(feats) for _ in range(modules))) for _ in range(stages)
        )
        self.recon = conv(feats, 1)
        self.ensemble = PredictionEnsemble(stages)
        he_init_(self)

    def forward_all(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The assembled output and every stage's prediction ``y_s``."""
        ilr = imresize(x, scale=self.scale)
        h = self.fenet(ilr)
        preds = []
        for stage in self.stages:
            h = h + stage(h)
            preds.append(ilr + self.recon(torch.relu(h)))
        return self.ensemble(preds), preds

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[0]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    msc = LAYERS * 2  # the 5x5 branch, per layer
    depth = 2 + kwargs.get("stages", 3) * kwargs.get("modules", 3) * msc + 1
    return ilr_radius(depth, scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {
        "stages": len(indices(sd, "stages.", "0.branch3.0.weight")),
        "modules": len(indices(sd, "stages.0.", "branch3.0.weight")),
        "feats": shape(sd, "fenet.0.weight")[0],
    }, None


register_arch(
    Arch(
        name="cmsc",
        build=CMSC,
        convention="y",
        radius=_radius,
        paper="Hu et al., CMSC, arXiv 2018",
        fp16=True,
        matches=layout_matcher(("fenet.0.weight", "stages.0.0.branch5.0.weight", "ensemble.weight"), CMSC, _infer),
        infer_kwargs=_infer,
        default_kwargs={"stages": 3, "modules": 3, "feats": 64},
        test_configs=(({"stages": 2, "modules": 1, "feats": 8}, 2),),
    )
)

register_model(
    ModelSpec(
        name="cmsc",
        arch="cmsc",
        kwargs={"stages": 3, "modules": 3, "feats": 64},
        scales=(2, 3, 4),
        description="CMSC: cascaded subnetworks of multi-scale cross modules, assembled predictions (Hu et al. 2018); trainable, no public weights",
        trainable_only=True,
    )
)
