"""benchmarks/vs_realesrgan_loop.py: the Real-ESRGAN-style loop pastes its tiles where they
belong, and the FLOP count agrees with PyTorch's own counter."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from upscale_cli.models import LoadedModel, get_arch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("vs_realesrgan_loop")
    finally:
        sys.path.remove(str(BENCHMARKS))


def tiny_x2() -> nn.Module:
    """Two 3x3 convs and a pixel shuffle: receptive-field radius 2 input pixels, x2."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))


@pytest.mark.parametrize("tile", [8, 13, 0])
def test_tiles_with_enough_context_equal_the_whole_image(bench, tile):
    net, img = tiny_x2().eval(), torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        whole, tiled = net(img), bench.tiled_forward(net, img, 2, tile, pad=2)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_too_little_context_shows_at_the_seams(bench):
    net, img = tiny_x2().eval(), torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        whole, tiled = net(img), bench.tiled_forward(net, img, 2, 8, pad=1)
    assert (tiled - whole).abs().max() > 1e-3


def test_conv_flops_match_pytorch_flop_counter(bench):
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2),
        nn.Conv2d(6, 3, 1),
    )
    model = LoadedModel("tiny", get_arch("srvgg"), module.eval(), scale=2)  # an RGB family: no conversion
    assert model.convention == "rgb"
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.rand(1, 3, 40, 24))
    assert bench.conv_flops(model, 40, 24) == counter.get_total_flops()
