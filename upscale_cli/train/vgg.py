"""VGG-16/19 feature extractor for the perceptual and texture losses.

The networks are those of Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015 (configurations D and E, Table 1), convolutional part
only, laid out as torchvision lays them out (``features.{i}`` with ReLU and max-pool modules
at their indices), so torchvision's ImageNet weights load unchanged.  Layers are named
``conv{block}_{n}``, ``relu{block}_{n}``, ``pool{block}`` (``relu2_2``, ``conv5_4``...).  Input
is RGB in 0..1, normalised with the ImageNet mean and standard deviation inside.

Weights come from, in order: ``--vgg-weights PATH`` (a torchvision-format state dict, or a
folder holding the torchvision file), ``$UPSCALE_VGG_WEIGHTS`` (same), the torch hub cache
(``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth``).  Nothing is
downloaded; when no file is found the error says where to put one.  Files named in
torchvision's ``NAME-HASH.pth`` convention are checked against that sha256 prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..weights import read_checkpoint, sha256_file

CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
"""Channels per 3x3 conv, ``"M"`` for a 2x2 max-pool (Simonyan & Zisserman, Table 1, D and E)."""

HUB_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}
"""torchvision's ImageNet weights, as torch.hub caches them."""

ENV_VAR = "UPSCALE_VGG_WEIGHTS"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ALLOW_RANDOM_WEIGHTS = False
"""Test hook: when True and no weights file is found, the VGG keeps its random init instead of
raising.  Only tests set it (the losses' plumbing can be tested without the 500 MB files)."""

_HASHED_NAME = re.compile(r"^vgg1[69](?:_bn)?-([0-9a-f]{8,64})\.pth$")


def layer_names(kind: str) -> list[str]:
    """Names of the modules of ``features``, index by index (``conv1_1``, ``relu1_1``, ...)."""
    names: list[str] = []
    block, n = 1, 1
    for item in CONFIGS[kind]:
        if item == "M":
            names.append(f"pool{block}")
            block, n = block + 1, 1
        else:
            names += [f"conv{block}_{n}", f"relu{block}_{n}"]
            n += 1
    return names


def _features(kind: str, depth: int) -> nn.Sequential:
    """``features`` truncated after module ``depth - 1``, torchvision indices kept."""
    layers: list[nn.Module] = []
    channels = 3
    for item in CONFIGS[kind]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers[:depth])


def find_file(
    hub_file: str, explicit: str | os.PathLike[str] | None, env_var: str, what: str, option: str
) -> Path | None:
    """``hub_file`` from ``explicit`` (a file, or a folder holding it), ``$env_var``, or the torch hub cache."""
    for raw in (explicit, os.environ.get(env_var)):
        if raw:
            p = Path(raw).expanduser()
            if p.is_dir():
                p = p / hub_file
            if not p.is_file():
                raise WeightsError(f"{p}: no such {what} weights file ({option} / ${env_var})")
            return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / hub_file
    return cached if cached.is_file() else None


def find_weights(kind: str, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The weights file for ``kind`` from ``explicit``, ``$UPSCALE_VGG_WEIGHTS``, or the hub cache."""
    return find_file(HUB_FILES[kind], explicit, ENV_VAR, "VGG", "--vgg-weights")


def load_state(kind: str, path: Path, depth: int) -> dict[str, Tensor]:
    """The ``features`` weights of a torchvision-format VGG file, keys relative to ``features``."""
    found = _HASHED_NAME.match(path.name)
    if found and not sha256_file(path).startswith(found.group(1)):
        raise WeightsError(f"{path}: sha256 does not start with {found.group(1)} (damaged download?)")
    sd, _ = read_checkpoint(path)
    feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    n_convs = sum(1 for item in CONFIGS[kind] if item != "M")
    convs_in_file = len({k.split(".")[0] for k in feats if k.endswith(".weight")})
    if convs_in_file != n_convs:
        raise WeightsError(f"{path}: holds {convs_in_file} conv layers, {kind} has {n_convs} (wrong VGG file?)")
    return {k: v for k, v in feats.items() if int(k.split(".")[0]) < depth}


class VGGFeatures(nn.Module):
    """Frozen VGG trunk returning the activations of the named layers.

    Args:
        kind: ``"vgg16"`` or ``"vgg19"``.
        layers: layer names to return (see :func:`layer_names`).
        weights: ``features`` state dict (keys ``"0.weight"``...), or ``None`` for random init.
    """

    def __init__(self, kind: str, layers: Iterable[str], weights: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        if kind not in CONFIGS:
            raise ValueError(f"unknown VGG {kind!r}; choose from {sorted(CONFIGS)}")
        names = layer_names(kind)
        wanted = set(layers)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"{kind} has no layer(s) {sorted(unknown)}")
        self.kind = kind
        self.taps = {names.index(n): n for n in wanted}
        self.features = _features(kind, max(self.taps) + 1)
        if weights is not None:
            self.features.load_state_dict(weights, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:  # always a frozen, eval-mode trunk
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self.taps:
                out[self.taps[i]] = h
        return out


def load_vgg(kind: str, layers: Iterable[str], weights: str | os.PathLike[str] | None = None) -> VGGFeatures:
    """A :class:`VGGFeatures` with ImageNet weights found as the module docstring says.

    Raises:
        WeightsError: no weights file, or a wrong or damaged one (one line, says where to put it).
    """
    layers = list(layers)
    net = VGGFeatures(kind, layers)
    path = find_weights(kind, weights)
    if path is None:
        if ALLOW_RANDOM_WEIGHTS:
            return net
        hub = Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILES[kind]
        raise WeightsError(
            f"{hub}: ImageNet {kind.upper()} weights not found (the perceptual/texture losses need them; "
            f"nothing is downloaded): put torchvision's {HUB_FILES[kind]} there or pass --vgg-weights PATH"
        )
    net.features.load_state_dict(load_state(kind, path, len(net.features)), strict=True)
    return net
