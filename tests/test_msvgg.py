"""MSVGG, the project's own compact multi-scale family (issue 6): bicubic skip, keys, detection,
receptive field, the luma variant and its warm start, and loading of an exported file through
the same path as inference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from upscale_cli.color import rgb_to_y
from upscale_cli.loader import load_model
from upscale_cli.models import get_arch, list_archs
from upscale_cli.models.msvgg import grow, to_luma
from upscale_cli.resize import imresize
from upscale_cli.weights import save_weights

SMALL = {"feats": 8, "n_conv": 2}


def _net(seed: int = 0, arch: str = "msvgg", **kwargs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_arch(arch).build(scale=2, **{**SMALL, **kwargs}).double().eval()


def _trained(seed: int, arch: str = "msvgg") -> torch.nn.Module:
    """A stand-in for a trained net: every weight non-zero, the output branches too."""
    net = _net(seed, arch)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_zero_residual_is_exactly_matlab_bicubic(scale: int) -> None:
    net = _net()
    for branch in (net.up2, net.up3, net.up4):
        torch.nn.init.zeros_(branch.weight)
        torch.nn.init.zeros_(branch.bias)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(net(x, scale), imresize(x, scale=scale))


def test_each_scale_uses_its_own_branch_and_refuses_others() -> None:
    net = _net()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        before = net(x, 3).clone()
        net.up2.bias.add_(1.0)
        assert torch.equal(net(x, 3), before)
        assert net(x, 2).shape == (1, 3, 12, 12)
        with pytest.raises(ValueError, match="x5"):
            net(x, 5)


@pytest.mark.parametrize("arch", ["msvgg", "msvgg-y"])
def test_keys_are_detected_by_this_family_only_and_kwargs_read_back(arch: str) -> None:
    sd = get_arch(arch).build(scale=4, feats=16, n_conv=3).state_dict()
    assert [a.name for a in list_archs() if a.matches is not None and a.matches(sd)] == [arch]
    kwargs, scale = get_arch(arch).infer_kwargs(sd)
    assert (kwargs, scale) == ({"feats": 16, "n_conv": 3}, None)
    get_arch(arch).build(scale=2, **kwargs).load_state_dict(sd, strict=True)
    del sd["up3.bias"]
    assert not get_arch(arch).matches(sd)


def test_the_luma_variant_reads_and_writes_one_channel() -> None:
    net = _net(arch="msvgg-y")
    assert get_arch("msvgg-y").convention == "y"
    x = torch.rand(1, 1, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert net(x, 3).shape == (1, 1, 15, 21)
        torch.testing.assert_close(net(x, 4), imresize(x, scale=4), rtol=0, atol=0)  # zero residual at init


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_declared_radius_is_the_true_receptive_field(scale: int) -> None:
    net = _net(seed=1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    radius = get_arch("msvgg").radius(SMALL, scale)
    n = 2 * radius + 8
    x = torch.rand(1, 3, n, n, dtype=torch.float64)
    x2 = x.clone()
    x2[..., n // 2, n // 2] += 1.0
    with torch.no_grad():
        d = (net(x2, scale) - net(x, scale)).abs().sum(1)[0]
    ys, xs = torch.nonzero(d > 0, as_tuple=True)
    reach = int(max((ys // scale - n // 2).abs().max(), (xs // scale - n // 2).abs().max()))
    assert reach == radius == SMALL["n_conv"] + 2


@pytest.mark.parametrize(("arch", "channels"), [("msvgg", 3), ("msvgg-y", 1)])
def test_grow_keeps_the_output_and_the_new_channels_learn(arch: str, channels: int) -> None:
    net = _trained(2, arch)
    grown = get_arch(arch).build(scale=2, feats=12, n_conv=4).double()
    grown.load_state_dict(grow(net.state_dict(), 12, 4, torch.Generator().manual_seed(0)))
    x = torch.rand(2, channels, 10, 9, dtype=torch.float64)
    with torch.no_grad():
        for scale in (2, 3, 4):
            torch.testing.assert_close(grown(x, scale), net(x, scale), rtol=0, atol=1e-12)
    # the new channels carry signal and their output weights get gradient (not dead units)
    grown(x, 4).square().sum().backward()
    assert grown.up4.weight.grad[:, SMALL["feats"] :].abs().sum() > 0
    assert grown.body[-2].weight.grad.abs().sum() > 0


def test_grow_refuses_to_shrink_and_other_families() -> None:
    sd = _net().state_dict()
    with pytest.raises(ValueError, match="shrink"):
        grow(sd, SMALL["feats"] - 1, SMALL["n_conv"])
    with pytest.raises(ValueError, match="not an MSVGG"):
        grow({"conv.weight": torch.zeros(1)}, 16, 4)


def test_grow_recipe_script_writes_a_loadable_file_with_the_same_output(tmp_path: Path) -> None:
    net = _net(seed=3).float()
    small = tmp_path / "small.safetensors"
    save_weights(small, net.state_dict(), name="msvgg", arch="msvgg", kwargs=SMALL, scales=[2, 3, 4], scale=2,
                 convention="rgb")  # fmt: skip
    big = tmp_path / "big.safetensors"
    script = REPO / "recipes" / "grow_msvgg.py"
    args = [sys.executable, str(script), str(small), str(big), "--feats", "12", "--n-conv", "3"]
    subprocess.run(args, check=True, capture_output=True, cwd=REPO)
    grown = load_model(weights=str(big), scale=3)
    assert grown.kwargs == {"feats": 12, "n_conv": 3}
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(grown.module(x, 3), net(x, 3), rtol=0, atol=1e-6)


def test_to_luma_computes_the_luma_of_the_rgb_net_on_grey_images() -> None:
    net = _trained(4)
    luma = get_arch("msvgg-y").build(scale=2, **SMALL).double().eval()
    luma.load_state_dict(to_luma(net.state_dict()))
    n, r = 24, get_arch("msvgg").radius(SMALL, 2)
    grey = torch.rand(2, 1, n, n, dtype=torch.float64).expand(-1, 3, -1, -1)
    with torch.no_grad():
        for scale in (2, 3, 4):
            want, got = rgb_to_y(net(grey, scale)), luma(rgb_to_y(grey), scale)
            inner = (..., slice(r * scale, -r * scale), slice(r * scale, -r * scale))
            torch.testing.assert_close(got[inner], want[inner], rtol=0, atol=1e-12)
            # at the borders the zero padding does not carry the luma offset (documented)
            assert (got - want).abs().max() > 1e-6
    with pytest.raises(ValueError, match="not an RGB MSVGG"):
        to_luma(luma.state_dict())


def test_luma_recipe_writes_an_msvgg_y_file_that_runs_on_rgb(tmp_path: Path) -> None:
    net = _trained(5).float()
    rgb = tmp_path / "rgb.safetensors"
    save_weights(rgb, net.state_dict(), name="msvgg", arch="msvgg", kwargs=SMALL, scales=[2, 3, 4], scale=2,
                 convention="rgb")  # fmt: skip
    out = tmp_path / "y.safetensors"
    args = [sys.executable, str(REPO / "recipes" / "grow_msvgg.py"), str(rgb), str(out), "--luma"]
    subprocess.run(args, check=True, capture_output=True, cwd=REPO)
    loaded = load_model(weights=str(out), scale=3)
    assert (loaded.arch.name, loaded.convention, loaded.kwargs) == ("msvgg-y", "y", SMALL)
    r = loaded.radius
    grey = torch.rand(1, 1, 20, 20).expand(-1, 3, -1, -1)
    with torch.no_grad():
        sr = loaded(grey)  # RGB in, RGB out: the chroma of a grey image stays neutral
        want = rgb_to_y(net(grey, 3))
    inner = (..., slice(3 * r, -3 * r), slice(3 * r, -3 * r))
    torch.testing.assert_close(rgb_to_y(sr)[inner], want[inner], rtol=0, atol=1e-5)
    torch.testing.assert_close(sr[:, 0], sr[:, 2], rtol=0, atol=1e-5)
    # growing the luma file keeps it a luma net with the same output
    big = tmp_path / "y-big.safetensors"
    grow_args = [*args[:2], str(out), str(big), "--feats", "12", "--n-conv", "3"]
    subprocess.run(grow_args, check=True, capture_output=True, cwd=REPO)
    grown = load_model(weights=str(big), scale=3)
    assert (grown.arch.name, grown.kwargs) == ("msvgg-y", {"feats": 12, "n_conv": 3})
    with torch.no_grad():
        torch.testing.assert_close(grown(grey), sr, rtol=0, atol=1e-5)
