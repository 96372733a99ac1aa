"""SRVGGNetCompact ("Compact"): the compact VGG-style network of Real-ESRGAN's video models.

Wang, Xie, Dong, Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCVW 2021 (the compact model is from the project's later releases,
``realesr-animevideov3``, documented in its ``docs/anime_video_model.md``).  A plain stack of
``num_conv + 2`` 3x3 convs with an activation after all but the last at low resolution, the
last one to ``3 * scale^2`` channels, a pixel shuffle (Shi et al. 2016, Eq. 4), and a global
residual: ``y = PS(body(x)) + nearest_upsample(x)``.  The activation (``act``) is a
per-channel PReLU (the released models), ReLU or LeakyReLU with slope 0.1, as in the
published ``srvgg_arch.py``.

RGB in 0..1.  Key layout = Real-ESRGAN ``SRVGGNetCompact``: ``body.{2i}`` convs and
``body.{2i+1}`` activations, the last conv ``body.{2 num_conv + 2}``.  Only PReLU has weights
(``body.{2i+1}.weight``), so the keys tell PReLU apart but not ReLU from LeakyReLU: those
files need ``--arch compact-relu`` or ``--arch compact-lrelu`` (the :attr:`Arch.variants`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, indices, layout_matcher, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model

ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "prelu": lambda feats: nn.PReLU(feats),
    "relu": lambda _feats: nn.ReLU(inplace=True),
    "lrelu": lambda _feats: nn.LeakyReLU(0.1, inplace=True),
}
"""``act`` values: the activations of the published ``SRVGGNetCompact`` (``act_type``
``prelu``, ``relu``, ``leakyrelu`` with slope 0.1)."""


class SRVGGNetCompact(nn.Module):
    """``PS(conv(act(conv(...)))) + nearest(x)``; RGB 0..1 in and out."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_conv: int = 16, act: str = "prelu") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, not {act!r}")
        layers: list[nn.Module] = [conv(3, num_feat), ACTIVATIONS[act](num_feat)]
        for _ in range(num_conv):
            layers += [conv(num_feat, num_feat), ACTIVATIONS[act](num_feat)]
        layers.append(conv(num_feat, 3 * scale * scale))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.upsampler(self.body(x)) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    return receptive_radius([("conv", kwargs.get("num_conv", 16) + 2), ("up", scale)], scale)


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    """``act`` is ``prelu`` when the activations have weights, else ``relu`` (or ``lrelu``:
    the keys cannot tell, detection tries both variants)."""
    convs = indices(sd, "body.", "bias")
    kwargs = {
        "num_feat": shape(sd, "body.0.weight")[0],
        "num_conv": len(convs) - 2,
        "act": "prelu" if "body.1.weight" in sd else "relu",
    }
    return kwargs, shuffle_scale(shape(sd, f"body.{convs[-1]}.weight")[0], 3)


_SMALL = {"num_feat": 8, "num_conv": 2}

ARCH = register_arch(
    Arch(
        name="srvgg",
        build=SRVGGNetCompact,
        convention="rgb",
        radius=_radius,
        paper="Wang et al., Real-ESRGAN (SRVGGNetCompact), ICCVW 2021",
        fp16=True,
        bf16=True,  # perceptual (GAN-trained) model: bf16 rounding is invisible (layers.py)
        matches=layout_matcher(("body.0.weight", "body.0.bias", "body.2.weight"), SRVGGNetCompact, _infer),
        infer_kwargs=_infer,
        default_kwargs={"num_feat": 64, "num_conv": 16, "act": "prelu"},
        aliases=("compact", "srvggnetcompact"),
        variants={f"compact-{act}": {"act": act} for act in ACTIVATIONS},
        test_configs=tuple(({**_SMALL, "act": act}, s) for act, s in (("prelu", 4), ("relu", 2), ("lrelu", 3))),
    )
)

register_model(
    ModelSpec(
        name="realesr-animevideov3",
        arch="srvgg",
        kwargs={"num_feat": 64, "num_conv": 16},
        scales=(4,),
        aliases=("animevideov3",),
        description="Real-ESRGAN compact anime-video model, SRVGGNetCompact x4 (Wang et al.)",
    )
)
