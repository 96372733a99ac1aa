"""IDN with the authors' Caffe models (Zheng222/IDN-Caffe ``test/caffemodel/IDN_x{2,3,4}.caffemodel``).

The reference forward here is written from the authors' ``test/IDN_x{s}_deploy.prototxt`` on the
raw ``<layer>.<blob>`` tensors of the Caffe reader: ``conv1``, ``conv2``, then per block ``k``
``conv{k}_1..3`` (the middle one grouped by 4), a slice at 16 channels, ``conv{k}_4..6`` on the
other 48, ``sum = concat(block input, slice) + conv{k}_6``, the 1x1 ``down``; LeakyReLU 0.05
after every convolution; the ``Deconvolution`` (17x17, stride ``s``, pad 8), and, as
``test/test_IDN.m`` does, ``+ mycrop(imresize(im_l, s, 'bicubic'), s)`` (the ILR less its first
``s - 1`` rows and columns).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, assert_tiled_equals_whole, need_shared
from torch import Tensor

from upscale_cli.formats import read
from upscale_cli.loader import load_model
from upscale_cli.models import create_model, detect_arch, get_arch, get_spec
from upscale_cli.resize import imresize
from upscale_cli.weights import convert_for

SLOPE = 0.05


def caffe_conv(raw: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """A Caffe ``Convolution`` (stride 1, "same" zero padding), its group read off the blob, then
    the ReLU with ``negative_slope: 0.05`` that follows every one of them."""
    w, b = raw[f"{name}.0"], raw[f"{name}.1"].reshape(-1)
    return F.leaky_relu(F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1] // w.shape[1]), SLOPE)


def authors_forward(raw: dict[str, Tensor], lr: Tensor, scale: int, blocks: int = 4) -> Tensor:
    """``IDN_x{s}_deploy.prototxt`` plus the ILR of ``test_IDN.m``: ``s (h - 1) + 1`` pixels per
    axis, HR pixels ``s - 1`` onwards."""
    h = caffe_conv(raw, "conv2", caffe_conv(raw, "conv1", lr))
    for k in range(3, 3 + blocks):
        upper = h
        for j in (1, 2, 3):
            upper = caffe_conv(raw, f"conv{k}_{j}", upper)
        lower = upper[:, 16:]
        for j in (4, 5, 6):
            lower = caffe_conv(raw, f"conv{k}_{j}", lower)
        h = caffe_conv(raw, f"down{k - 2}", torch.cat([h, upper[:, :16]], dim=1) + lower)
    up = F.conv_transpose2d(h, raw["upsample.0"], raw["upsample.1"].reshape(-1), stride=scale, padding=8)
    return up + imresize(lr, scale=scale)[..., scale - 1 :, scale - 1 :]


def small_y(h: int, w: int, seed: int = 0) -> Tensor:
    """A smooth random Y image in the studio-swing range (16..235 / 255)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 1, h // 3 + 2, w // 3 + 2, generator=g), size=(h, w), mode="bilinear")
    return 16 / 255 + 219 / 255 * x


@pytest.fixture(scope="module", params=[2, 3, 4])
def caffe_model(request: pytest.FixtureRequest) -> tuple[int, dict[str, Tensor]]:
    scale = request.param
    return scale, read(need_shared(CHECKPOINTS / f"idn_x{scale}.caffemodel")).tensors


def test_caffe_model_is_recognised_and_loads_strictly(caffe_model: tuple[int, dict[str, Tensor]]) -> None:
    scale, raw = caffe_model
    arch, kwargs, inferred = detect_arch(raw)
    assert arch.name == "idn" and inferred is None  # the blobs do not tell the scale
    assert kwargs == dict(get_spec("idn").kwargs) == {"blocks": 4, "feats": 64, "d": 16, "groups": 4}
    net = create_model("idn", scale)
    net.load_state_dict(convert_for(arch, raw), strict=True)
    assert sum(p.numel() for p in net.parameters()) == 552_769
    assert not get_spec("idn").trainable_only


def test_caffe_model_equals_the_authors_forward(caffe_model: tuple[int, dict[str, Tensor]]) -> None:
    scale, raw = caffe_model
    net = create_model("idn", scale).eval()
    net.load_state_dict(convert_for(get_arch("idn"), raw), strict=True)
    x = small_y(10, 9, seed=scale)
    with torch.no_grad():
        ours = net(x)
        assert ours.shape == (1, 1, 10 * scale, 9 * scale)
        torch.testing.assert_close(
            ours[..., scale - 1 :, scale - 1 :], authors_forward(raw, x, scale), atol=2e-5, rtol=0
        )


def test_tiled_equals_whole_image() -> None:
    model = load_model(weights=str(need_shared(CHECKPOINTS / "idn_x4.caffemodel")), scale=4)
    assert model.arch.name == "idn" and model.convention == "y"
    rgb = torch.cat([small_y(66, 62, seed=s)[0] for s in (7, 8, 9)])
    assert_tiled_equals_whole(model, rgb)


# --- without ../shared: a small IDN under the Caffe names -------------------------------------


def caffe_names(sd: dict[str, Tensor], blocks: int, legacy: bool = False) -> dict[str, Tensor]:
    """Our state dict renamed as the authors' Caffe layers (``legacy``: biases as 4-D blobs)."""
    names = {"fblock.0": "conv1", "fblock.1": "conv2", "upsample": "upsample"}
    for i in range(blocks):
        names |= {f"dblocks.{i}.upper.{j}": f"conv{3 + i}_{1 + j}" for j in range(3)}
        names |= {f"dblocks.{i}.lower.{j}": f"conv{3 + i}_{4 + j}" for j in range(3)}
        names[f"dblocks.{i}.compress"] = f"down{1 + i}"
    out = {}
    for key, value in sd.items():
        module, param = key.rsplit(".", 1)
        bias = param == "bias"
        out[f"{names[module]}.{int(bias)}"] = value.reshape(1, 1, 1, -1) if bias and legacy else value
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["blob-shape", "legacy-4d"])
def test_caffe_names_convert_to_our_layout(legacy: bool) -> None:
    kwargs = {"blocks": 2, "feats": 16, "d": 4, "groups": 4}
    ours = create_model("idn", 3, **kwargs).eval()
    for p in ours.parameters():  # the transposed conv starts at zero: give it weights to check
        torch.nn.init.normal_(p, std=0.1)
    raw = caffe_names(ours.state_dict(), blocks=2, legacy=legacy)
    arch, inferred, scale = detect_arch(raw)
    assert arch.name == "idn" and inferred == kwargs and scale is None
    net = create_model("idn", 3, **kwargs).eval()
    net.load_state_dict(convert_for(arch, raw), strict=True)
    x = small_y(8, 7)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours(x), atol=0, rtol=0)


def test_convert_keys_leaves_other_layouts_alone() -> None:
    convert = get_arch("idn").convert_keys
    carn_like = {"conv1.0": torch.zeros(1), "entry.weight": torch.zeros(1)}
    for sd in (create_model("idn", 2, blocks=1, feats=8, d=2, groups=2).state_dict(), carn_like):
        out = convert(dict(sd))
        assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)
