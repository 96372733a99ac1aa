"""MemNet: Tai, Yang, Liu, Xu, "MemNet: A Persistent Memory Network for Image Restoration",
ICCV 2017.

On the bicubic-interpolated image ``x`` (Fig. 1): a feature extraction net
``B_0 = FENet(x)``, ``M`` memory blocks and a reconstruction net, ``y = x + ReconNet(B_M)``.

Memory block ``m`` (Fig. 2):

* recursive unit: ONE residual building block (two BN-ReLU-conv 3x3) applied ``R`` times with
  shared weights, ``H_r = H_{r-1} + F(H_{r-1})``, ``H_0 = B_{m-1}``; its outputs
  ``H_1..H_R`` are the short-term memory;
* gate unit: a BN-ReLU-conv 1x1 over the concatenation of the long-term memory
  ``[B_0, ..., B_{m-1}]`` and the short-term memory, ``B_m = f_gate([B_0..B_{m-1}, H_1..H_R])``,
  i.e. ``(R + m) * 64`` channels in, 64 out.

Multi-supervised variant: every ``B_m`` goes through the (shared) reconstruction
conv, ``y_m = x + f_rec(B_m)``, and the output is ``y = sum_m w_m y_m`` with learned weights;
:meth:`MemNet.forward_all` with :func:`~upscale_cli.models.drcn.multi_supervision_loss` gives
the paper's loss (the ``M`` predictions and ``y`` weighted equally), which
``upscale train`` applies through :class:`~upscale_cli.models.drcn.RecursiveSupervision`; the
plain MemNet is trained on its output alone.  Batch norm as in the authors' Caffe files (``MemNet_M6R6_80C64``): conv
weights shared across recursions (and the reconstruction conv across outputs), one BN per use.

The paper's 677K parameters (M6R6, 80 layers, 64 channels) count convolution weights.
Y channel, 0..1.  Keys: ``fenet.{0,2}``, ``blocks.{m}.conv_a``, ``blocks.{m}.conv_b``,
``blocks.{m}.norms.{r}.{0,1}``, ``blocks.{m}.gate.{0,2}``, ``recon_norms.{m}``, ``recon``,
``ensemble.weight`` (multi-supervised).  No public weights (trainable only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..resize import imresize
from .drcn import PredictionEnsemble, RecursiveSupervision
from .drrn import pre_activated
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


class MemoryBlock(nn.Module):
    """Recursive unit (``recursions`` uses of one residual block) + gate unit (Fig. 2)."""

    def __init__(self, feats: int, recursions: int, long_term: int) -> None:
        super().__init__()
        self.conv_a = conv(feats, feats)
        self.conv_b = conv(feats, feats)
        self.norms = nn.ModuleList(
            nn.ModuleList([nn.BatchNorm2d(feats), nn.BatchNorm2d(feats)]) for _ in range(recursions)
        )
        self.gate = pre_activated((recursions + long_term) * feats, feats, 1)

    def forward(self, x: Tensor, long_term: list[Tensor]) -> Tensor:
        short_term = []
        h = x
        for bn_a, bn_b in self.norms:  # type: ignore[misc]
            h = h + self.conv_b(torch.relu(bn_b(self.conv_a(torch.relu(bn_a(h))))))
            short_term.append(h)
        return self.gate(torch.cat(long_term + short_term, dim=1))


class MemNet(RecursiveSupervision, nn.Module):
    """MemNet (Tai et al. 2017, Fig. 1).

    Args:
        scale: upscaling factor (the weights serve every scale).
        blocks: ``M`` memory blocks (6).
        recursions: ``R`` recursions per block (6).
        feats: channels (64).
        multi_supervised: reconstruct from every block and average with learned weights.
    """

    def __init__(
        self, scale: int = 2, blocks: int = 6, recursions: int = 6, feats: int = 64, multi_supervised: bool = False
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fenet = pre_activated(1, feats)
        self.blocks = nn.ModuleList(MemoryBlock(feats, recursions, m + 1) for m in range(blocks))
        self.recon_norms = nn.ModuleList(nn.BatchNorm2d(feats) for _ in range(blocks if multi_supervised else 1))
        self.recon = conv(feats, 1)
        self.ensemble = PredictionEnsemble(blocks) if multi_supervised else None
        he_init_(self)  # the "msra" filler of the authors' prototxt
        # ... except the reconstruction conv, zero so that training starts from the bicubic image:
        # on batch-normalised features a He-initialised conv adds a residual of std ~1.4
        nn.init.zeros_(self.recon.weight)

    def _reconstruct(self, ilr: Tensor, b: Tensor, norm: nn.Module) -> Tensor:
        return ilr + self.recon(torch.relu(norm(b)))

    def forward_all(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output and the per-block predictions ``y_m`` (only the last when not multi-supervised)."""
        ilr = imresize(x, scale=self.scale)
        memory = [self.fenet(ilr)]
        for block in self.blocks:
            memory.append(block(memory[-1], memory))
        if self.ensemble is None:
            y = self._reconstruct(ilr, memory[-1], self.recon_norms[0])
            return y, [y]
        preds = [self._reconstruct(ilr, b, norm) for b, norm in zip(memory[1:], self.recon_norms)]
        return self.ensemble(preds), preds

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[0]

    def training_outputs(self, x: Tensor) -> list[Tensor]:
        """The per-block predictions and the output; the output alone for the plain MemNet."""
        return super().training_outputs(x) if self.ensemble is not None else [self(x)]


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    # FENet, two 3x3 per recursion in every block (the 1x1 gates add nothing), reconstruction
    return ilr_radius(1 + 2 * kwargs.get("blocks", 6) * kwargs.get("recursions", 6) + 1, scale)


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    return {
        "blocks": len(indices(sd, "blocks.", "conv_a.weight")),
        "recursions": len(indices(sd, "blocks.0.norms.", "0.weight")),
        "feats": shape(sd, "fenet.2.weight")[0],
        "multi_supervised": "ensemble.weight" in sd,
    }, None


register_arch(
    Arch(
        name="memnet",
        build=MemNet,
        convention="y",
        radius=_radius,
        paper="Tai et al., MemNet, ICCV 2017",
        fp16=True,
        matches=layout_matcher(("fenet.2.weight", "blocks.0.gate.2.weight", "recon.weight"), MemNet, _infer),
        infer_kwargs=_infer,
        default_kwargs={"blocks": 6, "recursions": 6, "feats": 64, "multi_supervised": False},
        test_configs=(({"blocks": 2, "recursions": 2, "feats": 8, "multi_supervised": True}, 2),),
    )
)

register_model(
    ModelSpec(
        name="memnet",
        arch="memnet",
        kwargs={"blocks": 6, "recursions": 6, "feats": 64, "multi_supervised": False},
        scales=(2, 3, 4),
        aliases=("memnet-m6r6",),
        description="MemNet M6R6 (80 layers): memory blocks of recursive units and 1x1 gates (Tai et al. 2017); "
        "in-house x2 weights (recipes/inhouse/targets.toml)",
    )
)
