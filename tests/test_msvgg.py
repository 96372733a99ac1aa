"""MSVGG, the project's own compact multi-scale family (issue 6): bicubic skip, keys, detection,
receptive field, and loading of an exported file through the same path as inference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from upscale_cli.loader import load_model
from upscale_cli.models import get_arch, list_archs
from upscale_cli.models.msvgg import grow
from upscale_cli.resize import imresize
from upscale_cli.weights import save_weights

SMALL = {"feats": 8, "n_conv": 2}


def _net(seed: int = 0, **kwargs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_arch("msvgg").build(scale=2, **{**SMALL, **kwargs}).double().eval()


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


def test_keys_are_detected_by_this_family_only_and_kwargs_read_back() -> None:
    sd = get_arch("msvgg").build(scale=4, feats=16, n_conv=3).state_dict()
    assert [a.name for a in list_archs() if a.matches is not None and a.matches(sd)] == ["msvgg"]
    kwargs, scale = get_arch("msvgg").infer_kwargs(sd)
    assert (kwargs, scale) == ({"feats": 16, "n_conv": 3}, None)
    get_arch("msvgg").build(scale=2, **kwargs).load_state_dict(sd, strict=True)
    del sd["up3.bias"]
    assert not get_arch("msvgg").matches(sd)


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


def test_grow_keeps_the_output_and_the_new_channels_learn() -> None:
    net = _net(seed=2)
    with torch.no_grad():  # a "trained" net: every weight non-zero, output branches too
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    grown = get_arch("msvgg").build(scale=2, feats=12, n_conv=4).double()
    grown.load_state_dict(grow(net.state_dict(), 12, 4, torch.Generator().manual_seed(0)))
    x = torch.rand(2, 3, 10, 9, dtype=torch.float64)
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
