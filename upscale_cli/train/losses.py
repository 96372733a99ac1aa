"""The losses of ``--loss name[:variant]=weight,...`` and the objective that sums them.

All take the network's output ``sr`` and the ground truth ``hr``, RGB in 0..1, ``(N, 3, H, W)``.
For Y-only families (convention ``y``) the pixel losses (l1, mse, charbonnier, highpass) compare
the BT.601 Y channel, the only thing such a network controls and the channel the protocol
scores: the chroma of their RGB output is the bicubic's, and its error, which no weight can
reduce, would otherwise leak into the pixel losses' gradients and bias the luma (through the
sign of the L1 residual, or the cross terms of the squared one).

* ``l1``: mean absolute error (Lim et al., EDSR, Sec. 4.1).
* ``mse``: mean squared error (Dong et al., SRCNN, Eq. 1).
* ``charbonnier``: ``mean(sqrt((sr - hr)^2 + eps^2))``, ``eps = 1e-3`` (Lai et al., LapSRN,
  CVPR 2017, Eq. 2).
* ``perceptual[:variant]``: distance between VGG features of ``sr`` and ``hr``.  Variants:

  - ``vgg16_relu2_2`` (alias ``johnson``, ``vgg16``): Johnson, Alahi, Fei-Fei, "Perceptual
    Losses for Real-Time Style Transfer and Super-Resolution", ECCV 2016, Eq. 2 (squared
    Euclidean distance normalised by ``C*H*W``, i.e. the mean) at relu2_2 of VGG-16;
  - ``vgg19_relu5_4`` (alias ``srgan``, ``vgg19``): Ledig et al., SRGAN, CVPR 2017, Eq. 5 (the
    same mean squared distance) at phi_{5,4}, after the activation.  SRGAN rescales features
    by 1/12.75, which is a weight of 1/12.75^2 ~ 0.006 on this loss;
  - ``vgg19_conv5_4`` (alias ``esrgan``; the default): Wang et al., ESRGAN, ECCVW 2018,
    Sec. 3.3: conv5_4 of VGG-19 *before* the activation, L1 distance (their released code).

* ``texture``: Sajjadi, Schoelkopf, Hirsch, "EnhanceNet", ICCV 2017, Sec. 4.3, Eq. 4: squared
  distance between Gram matrices ``G(F) = F F^T`` of VGG-19 relu1_1, relu2_1 and relu3_1
  features, computed per 16x16-pixel image patch (8x8 and 4x4 at the deeper layers) as the
  paper does; each Gram matrix is normalised by ``C * h * w`` (Johnson et al.'s convention) so
  that the three layers weigh alike and the weight is of order 1.
* ``highpass``: the residual loss of the residual-learning papers (Kim et al., VDSR, CVPR 2016,
  Eq. 5): the target is the high-frequency image ``r = HR - up(LR)`` (``up`` the bicubic
  interpolation) and the loss is ``mean((SR - up(LR) - r)^2)``.  With a per-pixel distance the
  ``up(LR)`` terms cancel, so this equals ``mse`` up to rounding; it is listed so that recipes
  can name the papers' objective.
* ``adversarial[:variant]``: the generator's GAN loss against the discriminator of
  ``--discriminator`` (:class:`~upscale_cli.train.discriminator.VGGDiscriminator`, or SRGAN's
  :class:`~upscale_cli.models.srgan.SRGANDiscriminator`).  Variants:

  - ``ragan`` (the default): the relativistic average GAN of ESRGAN (Eq. 1-2, see
    :func:`ragan_generator_loss`, :func:`ragan_discriminator_loss`);
  - ``gan`` (alias ``srgan``): the standard GAN of SRGAN (Ledig et al. 2017, Eq. 6 for the
    generator, ``-log D(G(x))``; Eq. 2 for the discriminator), see :func:`gan_generator_loss`,
    :func:`gan_discriminator_loss`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..color import rgb_to_y
from ..errors import UsageError
from ..resize import imresize
from .config import LossTerm
from .vgg import load_vgg

CHARBONNIER_EPS = 1e-3
"""LapSRN's epsilon (Lai et al. 2017, Sec. 3.3)."""

PERCEPTUAL = {
    "vgg16_relu2_2": ("vgg16", "relu2_2", "mse"),
    "vgg19_relu5_4": ("vgg19", "relu5_4", "mse"),
    "vgg19_conv5_4": ("vgg19", "conv5_4", "l1"),
}
"""Perceptual variant -> (VGG, layer, distance)."""
PERCEPTUAL_ALIASES = {
    "johnson": "vgg16_relu2_2",
    "vgg16": "vgg16_relu2_2",
    "srgan": "vgg19_relu5_4",
    "vgg19": "vgg19_relu5_4",
    "esrgan": "vgg19_conv5_4",
}
DEFAULT_PERCEPTUAL = "vgg19_conv5_4"

TEXTURE_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
TEXTURE_PATCH = 16
"""EnhanceNet's patch side in image pixels."""


def charbonnier(sr: Tensor, hr: Tensor, eps: float = CHARBONNIER_EPS) -> Tensor:
    """LapSRN Eq. 2: ``mean(sqrt((sr - hr)^2 + eps^2))``."""
    return torch.sqrt((sr - hr).pow(2) + eps * eps).mean()


def highpass(sr: Tensor, hr: Tensor, upsampled_lr: Tensor) -> Tensor:
    """VDSR Eq. 5: mean squared error between the predicted and the true residual over ``up(LR)``."""
    return F.mse_loss(sr - upsampled_lr, hr - upsampled_lr)


def gram_patches(features: Tensor, patch: int) -> Tensor:
    """Gram matrices of the non-overlapping ``patch x patch`` tiles of ``features``.

    ``(N, C, H, W)`` -> ``(N * H//patch * W//patch, C, C)``, each ``F F^T / (C * patch^2)``
    (border rows/columns that do not fill a tile are left out).
    """
    n, c, h, w = features.shape
    gh, gw = h // patch, w // patch
    if gh == 0 or gw == 0:
        raise ValueError(f"texture loss: features {h}x{w} are smaller than its {patch}x{patch} patch")
    f = features[..., : gh * patch, : gw * patch].reshape(n, c, gh, patch, gw, patch)
    f = f.permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, c, patch * patch)
    return torch.bmm(f, f.transpose(1, 2)) / (c * patch * patch)


def texture(sr_feats: Mapping[str, Tensor], hr_feats: Mapping[str, Tensor]) -> Tensor:
    """EnhanceNet Eq. 4 over :data:`TEXTURE_LAYERS`, patch-wise (see the module docstring)."""
    total = sr_feats[TEXTURE_LAYERS[0]].new_zeros(())
    for depth, layer in enumerate(TEXTURE_LAYERS):
        patch = TEXTURE_PATCH >> depth
        total = total + F.mse_loss(gram_patches(sr_feats[layer], patch), gram_patches(hr_feats[layer], patch))
    return total


def ragan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """ESRGAN Eq. 1: ``-E[log D_Ra(x_r, x_f)] - E[log(1 - D_Ra(x_f, x_r))]`` with
    ``D_Ra(a, b) = sigmoid(C(a) - E[C(b)])``, halved as in the authors' code."""
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.zeros_like(fake_logits))
    return (real + fake) / 2


def ragan_generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """ESRGAN Eq. 2: ``-E[log(1 - D_Ra(x_r, x_f))] - E[log D_Ra(x_f, x_r)]``, halved as in the
    authors' code; ``real_logits`` are detached (the generator step does not train D)."""
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.zeros_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.ones_like(fake_logits))
    return (real + fake) / 2


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """SRGAN Eq. 2 (Goodfellow et al. 2014): ``-E[log D(x_r)] - E[log(1 - D(x_f))]``,
    ``D = sigmoid(C)``."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """SRGAN Eq. 6: ``-E[log D(G(x))]`` (the non-saturating generator loss)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


ADVERSARIAL = {"ragan": ragan_discriminator_loss, "gan": gan_discriminator_loss}
"""Adversarial variant -> the discriminator's loss ``(real_logits, fake_logits) -> Tensor``."""
ADVERSARIAL_ALIASES = {"esrgan": "ragan", "srgan": "gan"}
DEFAULT_ADVERSARIAL = "ragan"


def _variant(kind: str, variant: str | None, default: str, table: Mapping[str, Any], aliases: Mapping[str, str]) -> str:
    """Canonical ``kind`` variant name: ``variant`` (or ``default``) lower-cased, aliases resolved.

    Raises:
        UsageError: a name neither in ``table`` nor in ``aliases``.
    """
    name = (variant or default).lower()
    name = aliases.get(name, name)
    if name not in table:
        known = ", ".join([*table, *aliases])
        raise UsageError(f"--loss: unknown {kind} variant {variant!r}; choose from {known}")
    return name


def adversarial_variant(variant: str | None) -> str:
    """Canonical adversarial variant name (raises :class:`UsageError` for unknown ones)."""
    return _variant("adversarial", variant, DEFAULT_ADVERSARIAL, ADVERSARIAL, ADVERSARIAL_ALIASES)


def perceptual_variant(variant: str | None) -> str:
    """Canonical perceptual variant name (raises :class:`UsageError` for unknown ones)."""
    return _variant("perceptual", variant, DEFAULT_PERCEPTUAL, PERCEPTUAL, PERCEPTUAL_ALIASES)


class Objective(nn.Module):
    """The generator's objective: the weighted terms of ``--loss``.

    VGG trunks are loaded once per network and shared by every term that needs it (one forward
    pass of ``sr`` and one of ``hr`` per step, whatever the number of feature terms).

    Args:
        terms: the parsed ``--loss``.
        vgg_weights: ``--vgg-weights`` (file or folder), see :mod:`upscale_cli.train.vgg`.
        luma: compare the Y channel in the pixel losses (Y-only families).
    """

    def __init__(
        self, terms: Sequence[LossTerm], vgg_weights: str | os.PathLike[str] | None = None, luma: bool = False
    ) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.luma = luma
        layers: dict[str, set[str]] = {}
        self.adversarial: str | None = None
        for term in self.terms:
            if term.name == "perceptual":
                kind, layer, _ = PERCEPTUAL[perceptual_variant(term.variant)]
                layers.setdefault(kind, set()).add(layer)
            elif term.name == "adversarial":
                if self.adversarial is not None:
                    raise UsageError("--loss: give one adversarial term")
                self.adversarial = adversarial_variant(term.variant)
            elif term.variant is not None:
                raise UsageError(f"--loss: {term.name!r} takes no variant (got {term.key!r})")
            if term.name == "texture":
                layers.setdefault("vgg19", set()).update(TEXTURE_LAYERS)
        self.vggs = nn.ModuleDict({kind: load_vgg(kind, sorted(names), vgg_weights) for kind, names in layers.items()})

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """The discriminator's loss matching the ``adversarial`` term's variant."""
        if self.adversarial is None:
            raise ValueError("the objective has no adversarial term")
        return ADVERSARIAL[self.adversarial](real_logits, fake_logits)

    def _features(self, x: Tensor, grad: bool) -> dict[str, dict[str, Tensor]]:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return {kind: {k: v.float() for k, v in vgg(x).items()} for kind, vgg in self.vggs.items()}

    def forward(
        self, sr: Tensor, hr: Tensor, lr: Tensor | None = None, discriminator: nn.Module | None = None
    ) -> dict[str, Tensor]:
        """The weighted terms, keyed by :attr:`LossTerm.key` (their sum is the loss).

        Args:
            sr, hr: output and ground truth, RGB 0..1.
            lr: the network's input (needed by ``highpass``).
            discriminator: needed by ``adversarial``; called on ``hr`` (no grad) and ``sr``.
        """
        sr, hr = sr.float(), hr.float()
        px_sr, px_hr = (rgb_to_y(sr), rgb_to_y(hr)) if self.luma else (sr, hr)
        feats_sr = self._features(sr, grad=True) if self.vggs else {}
        feats_hr = self._features(hr, grad=False) if self.vggs else {}
        out: dict[str, Tensor] = {}
        for term in self.terms:
            if term.name == "l1":
                value = F.l1_loss(px_sr, px_hr)
            elif term.name == "mse":
                value = F.mse_loss(px_sr, px_hr)
            elif term.name == "charbonnier":
                value = charbonnier(px_sr, px_hr)
            elif term.name == "highpass":
                if lr is None:
                    raise ValueError("the highpass loss needs the LR input")
                up = imresize(lr.float(), size=tuple(hr.shape[-2:]))
                value = highpass(px_sr, px_hr, rgb_to_y(up) if self.luma else up)
            elif term.name == "perceptual":
                kind, layer, dist = PERCEPTUAL[perceptual_variant(term.variant)]
                a, b = feats_sr[kind][layer], feats_hr[kind][layer]
                value = F.l1_loss(a, b) if dist == "l1" else F.mse_loss(a, b)
            elif term.name == "texture":
                value = texture(feats_sr["vgg19"], feats_hr["vgg19"])
            else:  # adversarial
                if discriminator is None:
                    raise ValueError("the adversarial loss needs the discriminator")
                if self.adversarial == "gan":
                    value = gan_generator_loss(discriminator(sr).float())
                else:
                    with torch.no_grad():
                        real = discriminator(hr).float()
                    value = ragan_generator_loss(real, discriminator(sr).float())
            out[term.key] = term.weight * value
        return out
