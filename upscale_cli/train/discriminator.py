"""The VGG-style discriminator of SRGAN/ESRGAN.

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network" (SRGAN), CVPR 2017, Fig. 4, as widened by Wang et al., "ESRGAN: Enhanced
Super-Resolution Generative Adversarial Networks", ECCVW 2018 (the ``VGG128`` discriminator of
their code): five stages, each a 3x3 conv then a 4x4 stride-2 conv, with batch norm (except
after the first conv) and LeakyReLU(0.2); channels ``nf, 2nf, 4nf, 8nf, 8nf``; then two dense
layers ``8nf*4*4 -> 100 -> 1``.  It outputs one raw logit per image, the ``C(x)`` of the
relativistic average discriminator (ESRGAN Eq. 1).

For 128x128 inputs this is exactly ESRGAN's network; other sizes (HR patches of 192 for
patch 48 at x4...) go through an adaptive average pool to the 4x4 grid the dense layers expect
(the identity at 128x128).  Inputs must be at least 32x32 (five halvings).

``--discriminator srgan`` picks SRGAN's own network instead
(:class:`~upscale_cli.models.srgan.SRGANDiscriminator`, Ledig et al. 2017, Fig. 4): its dense
layer of 1024 units sits on the 6x6 grid of a 96x96 HR patch, the paper's training size.  It
is used as the paper defines it, so the HR patch (``--patch-size`` x scale) must be 96: 24 at
x4, 48 at x2, 12 at x8 (:func:`make_discriminator` says so otherwise).  An adaptive pool would
accept other sizes, but then it would not be the paper's network; sizing the dense layer for a
larger patch would grow it with the square of the patch (75M weights at 192x192).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import UsageError
from ..models.srgan import SRGANDiscriminator

SRGAN_PATCH = 96
"""The HR patch side SRGAN's discriminator takes (Ledig et al. 2017, Sec. 3.2)."""


def _stage(cin: int, cout: int, first: bool) -> list[nn.Module]:
    act = nn.LeakyReLU(0.2, inplace=True)
    head: list[nn.Module] = (
        [nn.Conv2d(cin, cout, 3, 1, 1, bias=True), act]
        if first
        else [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), act]
    )
    return [*head, nn.Conv2d(cout, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]


class VGGDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator; RGB 0..1 ``(N, 3, H, W)`` -> logits ``(N, 1)``.

    Args:
        in_channels: image channels.
        nf: channels of the first stage (64 in SRGAN/ESRGAN).
    """

    def __init__(self, in_channels: int = 3, nf: int = 64) -> None:
        super().__init__()
        widths = (nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf)
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(widths):
            layers += _stage(cin, cout, first=i == 0)
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * nf * 4 * 4, 100), nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"the discriminator needs inputs of at least 32x32, got {tuple(x.shape[-2:])}")
        return self.classifier(self.pool(self.features(x)))


def make_discriminator(kind: str, hr_patches: Sequence[int]) -> nn.Module:
    """The discriminator of ``--discriminator`` (``vgg`` or ``srgan``) for HR patches of the
    given sides (one per trained scale).

    Raises:
        UsageError: patches the network cannot take.
    """
    sizes = ", ".join(map(str, sorted(set(hr_patches))))
    if kind == "srgan":
        if set(hr_patches) != {SRGAN_PATCH}:
            raise UsageError(
                f"--discriminator srgan takes {SRGAN_PATCH}x{SRGAN_PATCH} HR patches (patch-size x scale), "
                f"not {sizes}: use --patch-size 24 at x4 or 48 at x2, or --discriminator vgg"
            )
        return SRGANDiscriminator(patch_size=SRGAN_PATCH)
    if kind != "vgg":
        raise UsageError(f"--discriminator: {kind!r} is not one of vgg, srgan")
    if min(hr_patches) < 32:
        raise UsageError("--loss adversarial: the HR patch (patch-size x scale) must be at least 32 px")
    return VGGDiscriminator()
