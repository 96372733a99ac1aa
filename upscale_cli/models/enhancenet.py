"""EnhanceNet: Sajjadi, Schölkopf, Hirsch, "EnhanceNet: Single Image Super-Resolution Through
Automated Texture Synthesis", ICCV 2017.

Generator (Sec. 4 and Table 1), all 3x3 convs with 64 filters at low resolution: a conv +
ReLU; ``B`` = 10 residual blocks ``x + conv(ReLU(conv(x)))`` (no long skip over them); per
factor of two a nearest-neighbour x2 upsampling followed by conv + ReLU (instead of a
transposed conv, against checkerboard artefacts); conv + ReLU; a conv to RGB; the result is
added to the bicubic upscaling of the input, so the network learns the residual.

The released ENet-PAT x4 (msmsajjadi/EnhanceNet-Code, ``enhancenet.py`` / ``nnlib.py``,
commit a7309caf) fixes what the paper leaves open; this family follows it:

* input RGB 0..1 minus the per-channel means :data:`ENHANCENET_MEAN`, added back at the end
  (the bicubic of the mean-free input plus the mean is the bicubic of the input);
* "SAME" zero padding; TensorFlow 0.12's ``resize_images`` for both resamplings: nearest
  (``q // 2``, as ``F.interpolate``) and bicubic, which is *not* MATLAB's:
  :func:`tf_legacy_bicubic` (Keys ``a = -0.75``, source ``p / s`` with no half-pixel offset,
  clamped borders).

Model ``enhancenet-pat`` is ENet-PAT (perceptual + adversarial + texture losses, Sec. 4.2-4.4):
a GAN model, sharp rather than PSNR-optimal.  Its weights (a TensorFlow V1 checkpoint,
``upscale_cli/formats/tensorflow.py``) are licensed CC BY-NC-ND 4.0: non-commercial use only.

Keys: ``head``, ``body.{i}.body.{0,2}`` (:class:`~.layers.ResBlock`), ``upsample.{j}.1``,
``tail.{0,2}``; :func:`convert_keys` reads the TF checkpoint's ``generator/Conv{,_1..}/
{weights,biases}`` (convs numbered in creation order, kernels HWIO -> OIHW).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .layers import ResBlock, conv, doublings, indices, layout_matcher, receptive_radius, shape
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model

ENHANCENET_MEAN: tuple[float, float, float] = (0.47614917, 0.45001204, 0.40904046)
"""``PER_CHANNEL_MEANS`` of the released code (RGB, 0..1)."""


def _keys_cubic(d: Tensor, a: float = -0.75) -> Tensor:
    """Keys' cubic convolution kernel (Keys 1981, Eq. 15) at distances ``d`` >= 0 (below 2)."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, far)


def _legacy_bicubic_axis(x: Tensor, dim: int, scale: int) -> Tensor:
    """x``scale`` along ``dim``: output ``p`` at source ``p / scale``, taps ``floor - 1 .. + 2``."""
    n = x.shape[dim]
    p = torch.arange(n * scale, device=x.device)
    base, delta = p // scale, (p % scale).double() / scale
    view = [1] * x.ndim
    view[dim] = -1
    terms = [
        x.index_select(dim, (base + tap).clamp(0, n - 1)) * _keys_cubic(dist).to(x.dtype).view(view)
        for tap, dist in zip(range(-1, 3), (1 + delta, delta, 1 - delta, 2 - delta))
    ]
    return sum(terms[1:], terms[0])


def tf_legacy_bicubic(x: Tensor, scale: int) -> Tensor:
    """TensorFlow's bicubic ``resize_images`` before half-pixel centres (TF < 1.14,
    ``resize_bicubic_op.cc``), ``(N, C, H, W)`` by an integer ``scale``: Keys' kernel with
    ``a = -0.75``, output pixel ``p`` at source ``p / scale`` (a shift of ``(scale - 1) / 2``
    output pixels against MATLAB's centres), borders clamped; width first, then height."""
    return _legacy_bicubic_axis(_legacy_bicubic_axis(x, 3, scale), 2, scale)


class EnhanceNet(nn.Module):
    """The EnhanceNet generator (Sajjadi et al. 2017, Table 1) as released; RGB 0..1 in and out.

    Args:
        scale: 4 (the paper), or another power of two.
        blocks: residual blocks ``B`` (10).
        feats: filters (64).
    """

    def __init__(self, scale: int = 4, blocks: int = 10, feats: int = 64) -> None:
        super().__init__()
        self.head = conv(3, feats)
        self.body = nn.Sequential(*(ResBlock(feats) for _ in range(blocks)))
        self.upsample = nn.Sequential(
            *(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(feats, feats), nn.ReLU(inplace=True))
                for _ in range(doublings(scale, "EnhanceNet"))
            )
        )
        self.tail = nn.Sequential(conv(feats, feats), nn.ReLU(inplace=True), conv(feats, 3))
        self.register_buffer("mean", torch.tensor(ENHANCENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.head(x - self.mean))
        return self.tail(self.upsample(self.body(h))) + tf_legacy_bicubic(x, self.scale)


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    chain: list[tuple] = [("conv", 1 + 2 * kwargs.get("blocks", 10))]
    for _ in range(doublings(scale, "EnhanceNet")):
        chain += [("up", 2), ("conv", 1)]
    # the bicubic branch reads source pixels floor(p / s) - 1 .. + 2: radius 2
    return max(receptive_radius([*chain, ("conv", 2)], scale), 2)


_TF_KEY = re.compile(r"(?:(.+)/)?Conv(?:_(\d+))?/(weights|biases)")


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The released TF checkpoint's names and layouts to ours; other layouts unchanged.

    Conv ``n`` (creation order): 0 the head, ``1 .. 2B`` the residual blocks, then two
    upsampling convs (the released x4) and the two tail convs.  Kernels go from TF's
    ``(H, W, IN, OUT)`` to ``(OUT, IN, H, W)``."""
    found = {k: _TF_KEY.fullmatch(k) for k in sd}
    if not sd or not all(found.values()) or len({m[1] for m in found.values()}) != 1:
        return sd
    convs = sorted({int(m[2] or 0) for m in found.values()})
    blocks, steps = (len(convs) - 5) // 2, 2
    if convs != list(range(len(convs))) or blocks < 1 or len(convs) != 1 + 2 * blocks + steps + 2:
        return sd
    names = ["head", *(f"body.{i // 2}.body.{2 * (i % 2)}" for i in range(2 * blocks))]
    names += [*(f"upsample.{j}.1" for j in range(steps)), "tail.0", "tail.2"]
    out = {}
    for key, m in found.items():
        t = sd[key]
        out[f"{names[int(m[2] or 0)]}.{'weight' if m[3] == 'weights' else 'bias'}"] = (
            t.permute(3, 2, 0, 1).contiguous() if t.ndim == 4 else t
        )
    return out


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    kwargs = {"blocks": len(indices(sd, "body.", "body.0.weight")), "feats": shape(sd, "head.weight")[0]}
    return kwargs, 2 ** len(indices(sd, "upsample.", "1.weight"))


register_arch(
    Arch(
        name="enhancenet",
        build=EnhanceNet,
        convention="rgb",
        radius=_radius,
        paper="Sajjadi et al., EnhanceNet, ICCV 2017",
        matches=layout_matcher(
            ("head.weight", "body.0.body.0.weight", "upsample.0.1.weight", "tail.2.weight"), EnhanceNet, _infer
        ),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"blocks": 10, "feats": 64},
        test_configs=(({"blocks": 1, "feats": 4}, 4),),
    )
)

register_model(
    ModelSpec(
        name="enhancenet-pat",
        arch="enhancenet",
        kwargs={"blocks": 10, "feats": 64},
        scales=(4,),
        aliases=("enet-pat",),
        description="EnhanceNet-PAT x4, the authors' GAN/texture-loss weights (Sajjadi et al. 2017); "
        "weights CC BY-NC-ND 4.0, non-commercial use only",
    )
)
