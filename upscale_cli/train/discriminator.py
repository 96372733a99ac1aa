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
"""

from __future__ import annotations

from torch import Tensor, nn


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
