"""VDSR with third-party weights: the authors' official model (MATLAB, huangzehao/caffe-vdsr
``Test/VDSR_Official.mat``) and the layout of twtygqyy/pytorch-vdsr (no biases).

The reference forwards here are written from the authors' code, on the raw tensors the readers
give: ``Test/utils/VDSR_Matconvnet.m`` runs ``vl_nnconv(x, w, b, 'Pad', 1)`` (MatConvNet: a
correlation, no kernel flip, zero padding, filters ``H x W x IN x OUT``) on the bicubic ILR of
the Y channel, ReLU between the convs, and adds the ILR back; twtygqyy's ``vdsr.Net`` is
``input`` + ReLU, 18 ``Conv_ReLU_Block``\\s, ``output``, plus the input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, assert_tiled_equals_whole, need_shared
from torch import Tensor

from upscale_cli.formats import read
from upscale_cli.loader import load_model
from upscale_cli.models import create_model, detect_arch, get_arch
from upscale_cli.resize import imresize
from upscale_cli.weights import convert_for

OFFICIAL = CHECKPOINTS / "vdsr_official.mat"
LEGACY = CHECKPOINTS / "vdsr_twtygqyy_epoch50.pth"


def vl_nnconv(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """MatConvNet ``vl_nnconv(x, w, b, 'Pad', 1)`` for a 3x3 filter bank ``w`` (H, W, IN[, OUT])
    as the .mat stores it: ``y(:, :, o) = b(o) + sum_{i,j,c} w(i, j, c, o) x(r+i-1, s+j-1, c)``."""
    w = w.reshape(3, 3, w.shape[2], -1)
    xp = F.pad(x, (1, 1, 1, 1))
    h, wd = x.shape[-2:]
    out = sum(
        torch.einsum("nchw,co->nohw", xp[:, :, i : i + h, j : j + wd], w[i, j]) for i in range(3) for j in range(3)
    )
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def official_forward(raw: dict[str, Tensor], lr_y: Tensor, scale: int) -> Tensor:
    """``VDSR_Matconvnet.m`` with ``use_cascade = 0``, on the raw ``model.weight.i`` / ``model.bias.i``."""
    im_y = imresize(lr_y, scale=scale)
    h = vl_nnconv(im_y, raw["model.weight.1"], raw["model.bias.1"])
    for i in range(2, 21):
        h = vl_nnconv(torch.relu(h), raw[f"model.weight.{i}"], raw[f"model.bias.{i}"])
    return h + im_y


@pytest.fixture(scope="module")
def official() -> dict[str, Tensor]:
    return read(need_shared(OFFICIAL)).tensors


def small_y(h: int, w: int, seed: int = 0) -> Tensor:
    """A smooth random Y image in the studio-swing range (16..235 / 255)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 1, h // 3 + 2, w // 3 + 2, generator=g), size=(h, w), mode="bilinear")
    return 16 / 255 + 219 / 255 * x


def test_official_model_is_recognised_and_loads_strictly(official: dict[str, Tensor]) -> None:
    arch, kwargs, scale = detect_arch(official)
    assert arch.name == "vdsr" and scale is None  # one model for every scale
    assert kwargs == {"depth": 20, "feats": 64, "channels": 1}
    net = create_model("vdsr", 3)
    net.load_state_dict(convert_for(arch, official), strict=True)
    assert sum(p.numel() for p in net.parameters()) == 665_921


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_model_equals_the_authors_forward(official: dict[str, Tensor], scale: int) -> None:
    net = create_model("vdsr", scale).eval()
    net.load_state_dict(convert_for(get_arch("vdsr"), official), strict=True)
    x = small_y(9, 11, seed=scale)
    with torch.no_grad():
        torch.testing.assert_close(net(x), official_forward(official, x, scale), atol=2e-5, rtol=0)


@pytest.mark.parametrize("path", [OFFICIAL, LEGACY], ids=["official", "twtygqyy"])
def test_tiled_equals_whole_image(path: Path) -> None:
    model = load_model(weights=str(need_shared(path)), scale=2)
    assert model.arch.name == "vdsr"
    rgb = torch.cat([small_y(30, 26, seed=s)[0] for s in (7, 8, 9)])
    assert_tiled_equals_whole(model, rgb)


# --- twtygqyy/pytorch-vdsr layout (no biases) ------------------------------------------------


def twtygqyy_state_dict(blocks: int = 18, feats: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """Random weights named as ``vdsr.Net.state_dict()`` names them."""
    g = torch.Generator().manual_seed(seed)
    sd = {"input.weight": torch.randn(feats, 1, 3, 3, generator=g) * 0.3}
    for i in range(blocks):
        sd[f"residual_layer.{i}.conv.weight"] = torch.randn(feats, feats, 3, 3, generator=g) * 0.15
    sd["output.weight"] = torch.randn(1, feats, 3, 3, generator=g) * 0.15
    return sd


def twtygqyy_forward(sd: dict[str, Tensor], x: Tensor) -> Tensor:
    """``vdsr.Net.forward`` on the bicubic-upscaled input (twtygqyy's eval feeds it ``im_b_y``)."""
    h = torch.relu(F.conv2d(x, sd["input.weight"], padding=1))
    for i in range(len([k for k in sd if k.startswith("residual_layer.")])):
        h = torch.relu(F.conv2d(h, sd[f"residual_layer.{i}.conv.weight"], padding=1))
    return F.conv2d(h, sd["output.weight"], padding=1) + x


def test_twtygqyy_layout_is_recognised_without_biases_and_equals_its_forward() -> None:
    sd = twtygqyy_state_dict()
    arch, kwargs, scale = detect_arch(sd)
    assert arch.name == "vdsr" and scale is None
    assert kwargs == {"depth": 20, "feats": 8, "channels": 1, "bias": False}
    net = arch.build(scale=2, **kwargs).eval()
    net.load_state_dict(convert_for(arch, sd), strict=True)
    x = small_y(10, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), twtygqyy_forward(sd, imresize(x, scale=2)), atol=1e-5, rtol=0)


def test_twtygqyy_file_equals_its_forward() -> None:
    ckpt = read(need_shared(LEGACY))
    assert ckpt.format == "torch-pickle" and "vdsr.Net" in ckpt.facts["classes"]
    arch, kwargs, scale = detect_arch(ckpt.tensors)
    assert arch.name == "vdsr" and scale is None
    assert kwargs == {"depth": 20, "feats": 64, "channels": 1, "bias": False}
    net = arch.build(scale=3, **kwargs).eval()
    net.load_state_dict(convert_for(arch, ckpt.tensors), strict=True)
    assert sum(p.numel() for p in net.parameters()) == 664_704
    x = small_y(9, 11, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(net(x), twtygqyy_forward(ckpt.tensors, imresize(x, scale=3)), atol=2e-5, rtol=0)


def test_convert_keys_leaves_other_layouts_alone() -> None:
    convert = get_arch("vdsr").convert_keys
    drrn_like = {"input.weight": torch.zeros(1), "output.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)}
    for sd in (create_model("vdsr", 2, depth=3, feats=4).state_dict(), drrn_like):
        out = convert(dict(sd))
        assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_bias_free_vdsr_trains() -> None:
    net = create_model("vdsr", 2, depth=3, feats=4, bias=False)
    assert all(not name.endswith("bias") for name in net.state_dict())
    loss = net(torch.rand(1, 1, 6, 6)).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
