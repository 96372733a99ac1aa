"""AlexNet-feature image similarity (``alexsim``) and LPIPS-Alex v0.1 (``lpips``).

AlexNet is Krizhevsky et al., "ImageNet Classification with Deep Convolutional Neural Networks",
NIPS 2012, in torchvision's single-tower layout (``features.0`` ... ``features.12``, then a 6x6
adaptive average pool), so torchvision's ``alexnet-owt-7be5be79.pth`` loads unchanged.

* ``alexsim``: cosine similarity of the flattened 256x6x6 = 9216-value feature vectors of SR and HR.
  Images are fed whole (no resizing) after ImageNet mean/std normalisation of RGB in 0..1.
* ``lpips``: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
  CVPR 2018, Eq. 1: the five ReLU outputs are unit-normalised along channels, their difference is
  squared, weighted by the learned 1x1 heads (``lin{k}.model.1.weight``), spatially averaged and
  summed over layers.  Input is RGB in 0..1 mapped to -1..1 and shifted/scaled as LPIPS does.

Weights are found as the VGG ones are (:func:`upscale_cli.train.vgg.find_file`): an explicit path,
``$UPSCALE_ALEXNET_WEIGHTS`` / ``$UPSCALE_LPIPS_WEIGHTS``, the torch hub cache; then the manifest's
``assets`` (``alexnet``, ``lpips-alex``: URL, sha256, size) are fetched into the weights cache.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WeightsError
from .metrics import quantize
from .train.vgg import IMAGENET_MEAN, IMAGENET_STD, find_file
from .weights import read_checkpoint, sha256_file

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_FILE = "alex.pth"
ALEXNET_ENV = "UPSCALE_ALEXNET_WEIGHTS"
LPIPS_ENV = "UPSCALE_LPIPS_WEIGHTS"

TAPS = (1, 4, 7, 9, 11)
"""Indices in ``features`` of the five ReLUs whose outputs LPIPS compares."""
TAP_CHANNELS = (64, 192, 384, 256, 256)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
"""LPIPS's input scaling layer (applied to images in -1..1)."""
MIN_SIDE = 63
"""Smallest image side AlexNet's three max-pools accept (conv5 must be at least 3x3 for pool5)."""


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional part, torchvision indices (conv1..conv5, ReLUs, three 3x3/2 max-pools)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


def _checked(path: Path) -> dict[str, Tensor]:
    """State dict of ``path``; a torchvision ``NAME-HASH.pth`` name is checked against its sha256 prefix."""
    stem = path.stem
    if path.name == ALEXNET_FILE and not sha256_file(path).startswith(stem.rsplit("-", 1)[1]):
        raise WeightsError(f"{path}: sha256 does not start with {stem.rsplit('-', 1)[1]} (damaged download?)")
    sd, _ = read_checkpoint(path)
    return sd


def _resolve(hub_file: str, explicit: str | os.PathLike[str] | None, env: str, what: str, option: str,
             asset: str) -> dict[str, Tensor]:
    """The state dict of ``hub_file``: :func:`find_file`'s places, then the manifest's ``asset``
    (downloaded into the weights cache and verified, as model weights are)."""
    path = find_file(hub_file, explicit, env, what, option)
    if path is None:
        from .download import resolve_entry
        from .weights import manifest_asset

        entry = manifest_asset(asset)
        if entry is None:
            raise WeightsError(f"{what} weights not found: pass {option} PATH or set ${env}")
        try:
            path = resolve_entry(entry, f"{what} weights")
        except WeightsError as err:
            raise WeightsError(f"{err} (or pass {option} PATH)") from None
    return _checked(path)


def load_alexnet_state(explicit: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """``features`` weights (keys ``"0.weight"``...) from the torchvision AlexNet file."""
    sd = _resolve(ALEXNET_FILE, explicit, ALEXNET_ENV, "AlexNet", "--alexnet-weights", "alexnet")
    feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    if len(feats) != 10:
        raise WeightsError(f"AlexNet weights hold {len(feats)} features tensors, expected 10 (wrong file?)")
    return feats


def load_lpips_heads(explicit: str | os.PathLike[str] | None = None) -> list[Tensor]:
    """The five LPIPS v0.1 linear heads (``lin{k}.model.1.weight``, shape ``[1, C, 1, 1]``)."""
    sd = _resolve(LPIPS_FILE, explicit, LPIPS_ENV, "LPIPS v0.1 alex", "--lpips-weights", "lpips-alex")
    try:
        heads = [sd[f"lin{k}.model.1.weight"] for k in range(5)]
    except KeyError as err:
        raise WeightsError(f"LPIPS weights lack {err.args[0]} (not PerceptualSimilarity's v0.1 alex.pth?)") from None
    for head, c in zip(heads, TAP_CHANNELS):
        if tuple(head.shape) != (1, c, 1, 1):
            raise WeightsError(f"LPIPS head of shape {tuple(head.shape)}, expected (1, {c}, 1, 1)")
    return heads


class AlexMetrics(nn.Module):
    """Frozen AlexNet scoring ``alexsim`` and, when heads are given, ``lpips``.

    Args:
        features: ``features`` state dict, or ``None`` for random init (tests).
        heads: the five LPIPS linear heads, or ``None`` (no ``lpips``).
    """

    def __init__(self, features: Mapping[str, Tensor] | None = None, heads: list[Tensor] | None = None) -> None:
        super().__init__()
        self.features = alexnet_features()
        if features is not None:
            self.features.load_state_dict(features, strict=True)
        self.heads = None if heads is None else nn.ParameterList(nn.Parameter(h.clone()) for h in heads)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def vector(self, x: Tensor) -> Tensor:
        """The 9216-value feature vector per image of ``x`` (N, 3, H, W, RGB in 0..1)."""
        h = self.features((x - self.mean) / self.std)
        return F.adaptive_avg_pool2d(h, 6).flatten(1)

    def alexsim(self, sr: Tensor, hr: Tensor) -> Tensor:
        """Cosine similarity of the AlexNet feature vectors of ``sr`` and ``hr``, per image."""
        return F.cosine_similarity(self.vector(sr), self.vector(hr), dim=1)

    def _taps(self, x: Tensor) -> list[Tensor]:
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, module in enumerate(self.features[: TAPS[-1] + 1]):
            h = module(h)
            if i in TAPS:
                out.append(h)
        return out

    def lpips(self, sr: Tensor, hr: Tensor) -> Tensor:
        """LPIPS distance (Zhang et al. 2018, Eq. 1) per image; needs the heads."""
        if self.heads is None:
            raise ValueError("lpips needs the LPIPS linear heads")
        total = sr.new_zeros(sr.shape[0])
        for a, b, w in zip(self._taps(sr), self._taps(hr), self.heads):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((a - b).pow(2), w).mean((1, 2, 3))
        return total


def load_alex_metrics(alexnet: str | os.PathLike[str] | None = None, lpips: str | os.PathLike[str] | None = None,
                      with_lpips: bool = True) -> AlexMetrics:
    """An :class:`AlexMetrics` with the real weights, found as the module docstring says.

    Raises:
        WeightsError: a file is missing, wrong or damaged (one line naming what to download, and where).
    """
    heads = load_lpips_heads(lpips) if with_lpips else None
    return AlexMetrics(load_alexnet_state(alexnet), heads)


def scorer(net: AlexMetrics, metrics: tuple[str, ...]) -> Callable[[Tensor, Tensor], dict[str, float]]:
    """A bench scorer: ``metrics`` (``alexsim``/``lpips``) of an 8-bit-rounded RGB output against its HR.

    Images with a side under :data:`MIN_SIDE` score NaN (reported as undefined, like SSIM on tiny images).
    """

    def score(sr: Tensor, hr: Tensor) -> dict[str, float]:
        a = quantize(sr).float().div(255).reshape(1, *sr.shape[-3:]).expand(1, 3, -1, -1)
        b = hr.float().reshape(1, *hr.shape[-3:]).expand(1, 3, -1, -1)
        if min(a.shape[-2:]) < MIN_SIDE:
            return {m: math.nan for m in metrics}
        with torch.no_grad():
            return {m: float(getattr(net, m)(a.to(net.mean.device), b.to(net.mean.device))[0]) for m in metrics}

    return score
