"""SRGAN: Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative
Adversarial Network", CVPR 2017.

Generator (SRResNet, Sec. 2.1 and Fig. 4, top): a 9x9 conv with PReLU; ``B`` = 16 residual
blocks ``x + BN(conv(PReLU(BN(conv(x)))))`` (3x3, 64 filters); a 3x3 conv + BN and a skip over
the blocks; per factor of two a 3x3 conv to 256 channels, PixelShuffle(2) and PReLU; a 9x9
conv to RGB.  Unlike the zoo's ``srresnet`` (BasicSR's MSRResNet: no batch norm, LeakyReLU,
3x3 first conv, bilinear skip) this is the paper's network, batch norm included.  The paper
scales LR inputs to [0, 1] and HR targets to [-1, 1]; here output and input are both RGB 0..1
(the zoo's convention), which only shifts the last layer's bias.

Discriminator (Fig. 4, bottom), :class:`SRGANDiscriminator`: eight 3x3 convs with 64, 64, 128,
128, 256, 256, 512, 512 filters and strides 1, 2, 1, 2, ... (LeakyReLU 0.2, batch norm after
all but the first), a dense layer of 1024, LeakyReLU 0.2 and a dense layer to one logit
(the paper's sigmoid is left to the loss, e.g. ``BCEWithLogits`` or a relativistic GAN loss).

Training (Sec. 2.2): perceptual loss = VGG54 content loss + 1e-3 x adversarial loss
``-log D(G(x))``; the trainer's ``perceptual`` and ``adversarial`` terms, with this
discriminator or its own.

leftthomas/SRGAN (``model.py``, commit b0323c6c) differs in two places, both kwargs here:
its trunk ends in conv + PReLU instead of conv + BN (``body_tail="prelu"``), and its output is
``(tanh(x) + 1) / 2`` (``tanh_output=True``: the paper's [-1, 1] HR range moved to 0..1).
Model ``srgan-5b`` is that generator (5 blocks) at x2, x4 and x8, one file per scale.

Keys (generator): ``head.0``, ``head.1`` (PReLU), ``body.{i}.{conv1,bn1,act,conv2,bn2}``,
``body_tail.{0,1}``, ``upsample.{j}.{0,2}``, ``tail``; :func:`convert_keys` reads leftthomas's
``block1`` .. ``block8`` (old-format state dicts: ``num_batches_tracked`` is added).
Model ``srgan`` (the paper's 16 blocks) has no public weights (trainable only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .layers import (
    RFLayer,
    conv,
    doublings,
    indices,
    layout_matcher,
    receptive_radius,
    shape,
)
from .registry import Arch, ModelSpec, StateDict, register_arch, register_model


class ResidualBlockBN(nn.Module):
    """``x + bn2(conv2(act(bn1(conv1(x)))))`` (Fig. 4, k3n64s1)."""

    def __init__(self, feats: int) -> None:
        super().__init__()
        self.conv1 = conv(feats, feats)
        self.bn1 = nn.BatchNorm2d(feats)
        self.act = nn.PReLU()
        self.conv2 = conv(feats, feats)
        self.bn2 = nn.BatchNorm2d(feats)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class SRGANGenerator(nn.Module):
    """SRResNet with batch norm (Ledig et al. 2017, Fig. 4 top); RGB 0..1 in and out.

    Args:
        scale: 2, 4 (the paper) or 8.
        blocks: residual blocks ``B`` (16).
        feats: filters (64).
        body_tail: what follows the conv after the blocks: ``"bn"`` (Fig. 4) or ``"prelu"``
            (leftthomas/SRGAN ``block7``).
        tanh_output: return ``(tanh(y) + 1) / 2`` (leftthomas) instead of ``y``.
    """

    def __init__(
        self, scale: int = 4, blocks: int = 16, feats: int = 64, body_tail: str = "bn", tanh_output: bool = False
    ) -> None:
        super().__init__()
        if body_tail not in ("bn", "prelu"):
            raise ValueError(f"SRGAN body_tail is 'bn' or 'prelu', not {body_tail!r}")
        self.head = nn.Sequential(conv(3, feats, 9), nn.PReLU())
        self.body = nn.Sequential(*(ResidualBlockBN(feats) for _ in range(blocks)))
        self.body_tail = nn.Sequential(conv(feats, feats), nn.BatchNorm2d(feats) if body_tail == "bn" else nn.PReLU())
        steps = doublings(scale, "SRGAN")
        self.upsample = nn.Sequential(
            *(nn.Sequential(conv(feats, 4 * feats), nn.PixelShuffle(2), nn.PReLU()) for _ in range(steps))
        )
        self.tail = conv(feats, 3, 9)
        self.tanh_output = tanh_output

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(x)
        y = self.tail(self.upsample(self.body_tail(self.body(h)) + h))
        return (torch.tanh(y) + 1) / 2 if self.tanh_output else y


class SRGANDiscriminator(nn.Module):
    """The SRGAN discriminator (Ledig et al. 2017, Fig. 4 bottom); returns one logit per image.

    Args:
        in_channels: image channels (3).
        feats: filters of the first block (64), doubled every two convs.
        patch_size: HR training patch size (96 in the paper); the dense layer is sized for it.
    """

    def __init__(self, in_channels: int = 3, feats: int = 64, patch_size: int = 96) -> None:
        super().__init__()
        if patch_size % 16:
            raise ValueError(f"the SRGAN discriminator needs a patch size divisible by 16, not {patch_size}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, feats, 3, padding=1), nn.LeakyReLU(0.2)]
        width = feats
        for i in range(1, 8):
            out = feats * 2 ** (i // 2)
            layers += [
                nn.Conv2d(width, out, 3, stride=1 + i % 2, padding=1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        self.features = nn.Sequential(*layers)
        side = patch_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(width * side * side, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1)
        )
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.patch_size, self.patch_size):
            raise ValueError(f"the discriminator takes {self.patch_size}x{self.patch_size} patches, got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x))


def _radius(kwargs: Mapping[str, Any], scale: int) -> int:
    lr = 4 + 2 * kwargs.get("blocks", 16) + 1  # 9x9 head, two 3x3 per block, body_tail
    chain: list[RFLayer] = [("conv", lr)]
    for _ in range(doublings(scale, "SRGAN")):
        chain += [("conv", 1), ("up", 2)]
    return receptive_radius([*chain, ("conv", 4)], scale)  # 9x9 tail at HR


def _leftthomas_key(key: str, blocks: int) -> str:
    """leftthomas/SRGAN ``Generator`` key -> ours (``blocks`` residual blocks ``block2`` ..)."""
    m = re.fullmatch(r"block(\d+)\.(.+)", key)
    if m is None:
        return key
    i, rest = int(m[1]), m[2]
    if i == 1:
        return f"head.{rest}"
    if i <= blocks + 1:
        return f"body.{i - 2}.{rest.replace('prelu.', 'act.')}"
    if i == blocks + 2:
        return f"body_tail.{rest}"
    up = re.fullmatch(r"(\d+)\.(conv|prelu)\.(.+)", rest)  # UpsampleBLock(conv, pixel_shuffle, prelu)
    if up:
        return f"upsample.{up[1]}.{0 if up[2] == 'conv' else 2}.{up[3]}"
    return f"tail.{rest.split('.', 1)[1]}"  # the last conv of block8


def convert_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """leftthomas/SRGAN names to ours, with the ``num_batches_tracked`` that old state dicts
    lack (eval-mode batch norm does not read it); other layouts unchanged."""
    if "block1.0.weight" not in sd or "block2.conv1.weight" not in sd:
        return sd
    blocks = len([k for k in sd if re.fullmatch(r"block\d+\.conv1\.weight", k)])
    out = {_leftthomas_key(k, blocks): v for k, v in sd.items()}
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(0))
    return out


def _infer(sd: StateDict) -> tuple[dict[str, Any], int | None]:
    steps = len(indices(sd, "upsample.", "0.weight"))
    prelu_tail = shape(sd, "body_tail.1.weight") == (1,) and "body_tail.1.running_mean" not in sd
    kwargs: dict[str, Any] = {"blocks": len(indices(sd, "body.", "conv1.weight")), "feats": shape(sd, "head.0.weight")[0]}
    if prelu_tail:  # leftthomas's network; its tanh output cannot be read off the weights
        kwargs.update(body_tail="prelu", tanh_output=True)
    return kwargs, 2**steps


register_arch(
    Arch(
        name="srgan",
        build=SRGANGenerator,
        convention="rgb",
        radius=_radius,
        paper="Ledig et al., SRGAN, CVPR 2017",
        fp16=True,
        matches=layout_matcher(("head.0.weight", "body.0.bn1.weight", "body_tail.1.weight", "tail.weight"), SRGANGenerator, _infer),
        infer_kwargs=_infer,
        convert_keys=convert_keys,
        default_kwargs={"blocks": 16, "feats": 64},
        test_configs=tuple(({"blocks": 1, "feats": 8, **k}, s) for k, s in (({}, 4), ({"body_tail": "prelu", "tanh_output": True}, 2))),
    )
)

register_model(
    ModelSpec(
        name="srgan",
        arch="srgan",
        kwargs={"blocks": 16, "feats": 64},
        scales=(2, 4, 8),
        description="SRGAN generator (SRResNet with batch norm) + discriminator, adversarial and VGG losses (Ledig et al. 2017); trainable, no public weights",
        trainable_only=True,
    )
)

register_model(
    ModelSpec(
        name="srgan-5b",
        arch="srgan",
        kwargs={"blocks": 5, "feats": 64, "body_tail": "prelu", "tanh_output": True},
        scales=(2, 4, 8),
        description="SRGAN generator with 5 residual blocks, leftthomas/SRGAN's weights (Ledig et al. 2017 variant)",
    )
)
