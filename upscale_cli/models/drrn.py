"""DRRN: Tai, Yang, Liu, "Image Super-Resolution via Deep Recursive Residual Network",
CVPR 2017.

On the bicubic-interpolated image ``x`` (Fig. 2d): ``B`` recursive blocks, each a conv
``H_0 = f_in(.)`` followed by ``U`` residual units that share ONE pair of conv weights across
the recursions and all add the block's own input (the multi-path structure, Eq. 7):
``H_u = F(H_{u-1}, W) + H_0``; then a conv to one channel and the global residual
``y = x + f_rec(H_U)``.  Depth ``d = (1 + 2U)B + 1``: B1U9 is 20 layers (the
default here), B1U25 the 52-layer model of the paper's tables; 128 filters of 3x3.

Two variants (``batch_norm``):

* ``True`` (default, the paper's): every conv is pre-activated BN-ReLU-conv (after He et al.'s
  identity mappings), as the authors' Caffe definitions (``DRRN_B1U9_20C128_train.prototxt``):
  the convolution weights are shared across recursions, each recursion keeps its own batch
  norm.  The paper's parameter count (297K for every B1 model) counts the convolutions only.
* ``False``: jt827859032/DRRN-pytorch (``drrn.py``), whose B1U25 weights are the only public
  DRRN weights (model ``drrn-b1u25``): ReLU-conv without batch norm and without biases, and
  the skips carry rectified tensors, because that code's ReLUs are in place
  (``nn.ReLU(inplace=True)``): ``self.input(self.relu(x))`` rectifies ``x`` itself, which is
  also the global residual, and the first unit's ``self.relu(out)`` rectifies ``H_0``, which
  every unit adds.  So ``x' = max(x, 0)``, ``H_0 = max(f_in(x'), 0)``,
  ``H_u = conv_b(relu(conv_a(relu(H_{u-1})))) + H_0``, ``y = x' + f_rec(relu(H_U))`` (the MXNet
  conversion's graph has exactly these edges).  No key records ``U`` here (the unit weights are
  shared and there are no per-unit norms): a state dict of it reads as U = 25.

Y channel, 0..1.  Keys: ``blocks.{b}.entry.{0: bn, 2: conv}``, ``blocks.{b}.conv_a``,
``blocks.{b}.conv_b``, ``blocks.{b}.norms.{u}.{0,1}``, ``exit.{0,2}`` (no ``.0`` and ``norms``
without batch norm).  :func:`convert_keys` reads jt827859032's PyTorch names (``input``,
``conv1``, ``conv2``, ``output``) and the MXNet conversion (``formats.mxnet`` graph names:
``convolution0`` = ``input``, then per block its entry and unit pair, the last = ``output``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..formats.mxnet import op_nodes
from ..resize import imresize
from .layers import conv, he_init_, ilr_radius, indices, layout_matcher, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


def pre_activated(in_ch: int, out_ch: int, kernel_size: int = 3, batch_norm: bool = True) -> nn.Sequential:
    """BN-ReLU-conv (keys ``0`` bn, ``2`` conv): the pre-activation unit of DRRN and MemNet;
    without ``batch_norm``, ReLU-conv with a bias-free conv (still key ``2``)."""
    norm = nn.BatchNorm2d(in_ch) if batch_norm else nn.Identity()
    return nn.Sequential(norm, nn.ReLU(), conv(in_ch, out_ch, kernel_size, bias=batch_norm))


class RecursiveBlock(nn.Module):
    """``H_0 = entry(x)``, then ``U`` times ``H_u = conv_b(act(conv_a(act(H_{u-1})))) + H_0``
    with shared ``conv_a``/``conv_b`` and a BN pair per recursion (Eq. 7); without batch norm
    ``H_0`` is rectified (see the module docstring)."""

    def __init__(self, in_ch: int, feats: int, units: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.entry = pre_activated(in_ch, feats, batch_norm=batch_norm)
        self.conv_a = conv(feats, feats, bias=batch_norm)
        self.conv_b = conv(feats, feats, bias=batch_norm)
        norm = nn.BatchNorm2d if batch_norm else (lambda _: nn.Identity())
        self.norms = nn.ModuleList(nn.ModuleList([norm(feats), norm(feats)]) for _ in range(units))
        self.rectified_skip = not batch_norm

    def forward(self, x: Tensor) -> Tensor:
        h0 = self.entry(x)
        if self.rectified_skip:
            h0 = torch.relu(h0)
        h = h0
        for bn_a, bn_b in self.norms:  # type: ignore[misc]
            h = self.conv_b(torch.relu(bn_b(self.conv_a(torch.relu(bn_a(h)))))) + h0
        return h


class DRRN(nn.Module):
    """DRRN (Tai et al. 2017, Fig. 2d): ``y = x_ilr + exit(blocks(x_ilr))``.

    Args:
        scale: upscaling factor (the weights serve every scale).
        blocks: ``B``, recursive blocks (1).
        units: ``U``, residual units per block (9 for the 20-layer model, 25 for 52 layers).
        feats: filters per layer (128).
        batch_norm: the paper's BN-ReLU-conv (True) or jt827859032's bias-free ReLU-conv with
            rectified skips (False); see the module docstring.
    """

    def __init__(
        self, scale: int = 2, blocks: int = 1, units: int = 9, feats: int = 128, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.scale = scale
        self.blocks = nn.Sequential(
            *(RecursiveBlock(1 if b == 0 else feats, feats, units, batch_norm) for b in range(blocks))
        )
        self.exit = pre_activated(feats, 1, batch_norm=batch_norm)
        self.rectified_skip = not batch_norm
        he_init_(self)  # the "msra" filler of the authors' prototxt
        # ... except the last conv, zero so that training starts from the bicubic image: on
        # batch-normalised features a He-initialised conv adds a residual of standard deviation ~1.4
        nn.init.zeros_(self.exit[2].weight)

    def forward(self, x: Tensor) -> Tensor:
        ilr = imresize(x, scale=self.scale)
        if self.rectified_skip:
            ilr = torch.relu(ilr)
        return ilr + self.exit(self.blocks(ilr))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    depth = (1 + 2 * kwargs.get("units", 9)) * kwargs.get("blocks", 1) + 1
    return ilr_radius(depth, scale)


PYTORCH_UNITS = 25
"""``U`` of jt827859032/DRRN-pytorch (``for _ in range(25)``), which no bias-free key records."""


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    batch_norm = "blocks.0.entry.0.weight" in sd
    return {
        "blocks": len(indices(sd, "blocks.", "conv_a.weight")),
        "units": len(indices(sd, "blocks.0.norms.", "0.weight")) if batch_norm else PYTORCH_UNITS,
        "feats": shape(sd, "blocks.0.conv_a.weight")[0],
        "batch_norm": batch_norm,
    }, None


_PYTORCH = {"input": "blocks.0.entry.2", "conv1": "blocks.0.conv_a", "conv2": "blocks.0.conv_b", "output": "exit.2"}


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """jt827859032's PyTorch names or the MXNet graph names (``convolution{N}.weight``, N in
    graph order: per block its entry conv and its shared unit pair, then the output conv) to
    ours; any other dict is returned as it is."""
    if sd.keys() == {f"{name}.weight" for name in _PYTORCH}:
        return {f"{_PYTORCH[k.removesuffix('.weight')]}.weight": v for k, v in sd.items()}
    nodes = op_nodes(sd)
    if nodes is None or len(nodes) % 3 != 1 or sd.keys() != {f"{n}.weight" for n in nodes}:
        return sd
    ours = [f"blocks.{b}.{part}" for b in range(len(nodes) // 3) for part in ("entry.2", "conv_a", "conv_b")]
    return {f"{key}.weight": sd[f"{node}.weight"] for key, node in zip([*ours, "exit.2"], nodes)}


register_arch(
    Arch(
        name="drrn",
        build=DRRN,
        convention="y",
        radius=_radius,
        paper="Tai et al., DRRN, CVPR 2017",
        fp16=True,
        matches=layout_matcher(("blocks.0.entry.2.weight", "blocks.0.conv_a.weight", "exit.2.weight"), DRRN, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"blocks": 1, "units": 9, "feats": 128, "batch_norm": True},
        test_configs=(({"blocks": 2, "units": 2, "feats": 8}, 2), ({"units": 25, "feats": 4, "batch_norm": False}, 3)),
    )
)

register_model(
    ModelSpec(
        name="drrn",
        arch="drrn",
        kwargs={"blocks": 1, "units": 9, "feats": 128},
        scales=(2, 3, 4),
        aliases=("drrn-b1u9",),
        description="DRRN B1U9 (20 layers): recursive residual units with shared weights (Tai et al. 2017); trainable, no public weights",
        trainable_only=True,
    )
)
register_model(
    ModelSpec(
        name="drrn-b1u25",
        arch="drrn",
        kwargs={"blocks": 1, "units": 25, "feats": 128, "batch_norm": False},
        scales=(2, 3, 4),
        description="DRRN B1U25 (52 layers, Tai et al. 2017), one model for x2/x3/x4, as trained by "
        "jt827859032/DRRN-pytorch (no batch norm, no biases)",
    )
)
