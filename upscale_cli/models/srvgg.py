"""SRVGGNetCompact: the compact VGG-style network of Real-ESRGAN's anime-video models.

Wang, Xie, Dong, Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCVW 2021 (the compact model is from the project's later releases,
``realesr-animevideov3``, documented in its ``docs/anime_video_model.md``).  A plain stack of
``num_conv + 2`` 3x3 convs with per-channel PReLU at low resolution, the last one to
``3 * scale^2`` channels, a pixel shuffle (Shi et al. 2016, Eq. 4), and a global residual:
``y = PS(body(x)) + nearest_upsample(x)``.

RGB in 0..1.  Key layout = BasicSR/Real-ESRGAN ``SRVGGNetCompact``: ``body.{2i}`` convs and
``body.{2i+1}`` PReLUs, the last conv ``body.{2 num_conv + 2}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, indices, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model


class SRVGGNetCompact(nn.Module):
    """``PS(conv(PReLU(conv(...)))) + nearest(x)``; RGB 0..1 in and out."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_conv: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(3, num_feat), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [conv(num_feat, num_feat), nn.PReLU(num_feat)]
        layers.append(conv(num_feat, 3 * scale * scale))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.upsampler(self.body(x)) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    return receptive_radius([("conv", kwargs.get("num_conv", 16) + 2), ("up", scale)], scale)


def _matches(sd: Mapping[str, Tensor]) -> bool:
    convs = indices(sd, "body.", "bias")
    return (
        len(convs) >= 2
        and set(sd) == {f"body.{i}.{p}" for i in convs for p in ("weight", "bias")}
        | {f"body.{i + 1}.weight" for i in convs[:-1]}
        and convs == list(range(0, 2 * len(convs), 2))
        and shape(sd, "body.0.weight")[1] == 3
    )


def _infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    convs = indices(sd, "body.", "bias")
    kwargs = {"num_feat": shape(sd, "body.0.weight")[0], "num_conv": len(convs) - 2}
    return kwargs, shuffle_scale(shape(sd, f"body.{convs[-1]}.weight")[0], 3)


ARCH = register_arch(
    Arch(
        name="srvgg",
        build=SRVGGNetCompact,
        convention="rgb",
        radius=_radius,
        paper="Wang et al., Real-ESRGAN (SRVGGNetCompact), ICCVW 2021",
        fp16=True,
        bf16=True,  # perceptual (GAN-trained) model: bf16 rounding is invisible (layers.py)
        matches=_matches,
        infer_kwargs=_infer,
        default_kwargs={"num_feat": 64, "num_conv": 16},
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
