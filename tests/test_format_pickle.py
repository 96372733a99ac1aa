"""The restricted reader of whole-model torch pickles (upscale_cli/formats/legacy_pickle.py).

Real legacy files from ../shared, whole-model files written here in both torch layouts and
compared with ``module.state_dict()``, and pickles that try to run code: nothing they name runs.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import CHECKPOINTS, need_shared
from upscale_cli.errors import WeightsError
from upscale_cli.formats import legacy_pickle, read, sniff
from upscale_cli.weights import read_checkpoint

# --- the real legacy files (torch 0.3, old non-zip format, classes of modules gone from torch) ----


def test_vdsr_twtygqyy_fixture() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "vdsr_twtygqyy_epoch50.pth"))
    sd = ckpt.tensors
    assert ckpt.format == "torch-pickle"
    assert ckpt.facts["classes"] == [
        "torch.nn.backends.thnn._get_thnn_function_backend",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.conv.Conv2d",
        "vdsr.Conv_ReLU_Block",
        "vdsr.Net",
    ]
    assert list(sd) == [f"residual_layer.{i}.conv.weight" for i in range(18)] + ["input.weight", "output.weight"]
    assert sd["input.weight"].shape == (64, 1, 3, 3) and sd["output.weight"].shape == (1, 64, 3, 3)
    assert all(sd[f"residual_layer.{i}.conv.weight"].shape == (64, 64, 3, 3) for i in range(18))
    assert sum(t.numel() for t in sd.values()) == 664_704 and all(t.dtype == torch.float32 for t in sd.values())
    # values checked against torch.load(weights_only=False) with stand-in modules, outside the suite
    assert sd["input.weight"][0, 0, 0, 0].item() == -0.0021476573310792446
    assert sd["output.weight"][0, -1, -1, -1].item() == -0.05840815603733063
    assert sum(t.double().abs().sum().item() for t in sd.values()) == pytest.approx(11247.345108, rel=1e-9)


def test_lapsrn_twtygqyy_fixture() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "lapsrn_x4_twtygqyy_epoch100.pth"))
    sd = ckpt.tensors
    assert {"lapsrn.Net", "lapsrn._Conv_Block", "torch.nn.modules.conv.ConvTranspose2d"} <= set(ckpt.facts["classes"])
    block = [f"cov_block.{i}.weight" for i in range(0, 21, 2)]
    assert list(sd) == [
        "conv_input.weight",
        "convt_I1.weight",
        "convt_R1.weight",
        *(f"convt_F1.0.{k}" for k in block),
        "convt_I2.weight",
        "convt_R2.weight",
        *(f"convt_F2.0.{k}" for k in block),
    ]
    assert sd["convt_I1.weight"].shape == (1, 1, 4, 4) and sd["convt_F1.0.cov_block.20.weight"].shape == (64, 64, 4, 4)
    assert sd["convt_R2.weight"].shape == (1, 64, 3, 3) and sd["convt_F2.0.cov_block.0.weight"].shape == (64, 64, 3, 3)
    assert sum(t.numel() for t in sd.values()) == 870_112
    assert sd["conv_input.weight"][0, 0, 0, 0].item() == -0.019383294507861137
    assert sd["convt_F2.0.cov_block.20.weight"][-1, -1, -1, -1].item() == 0.05620169639587402
    assert sum(t.double().abs().sum().item() for t in sd.values()) == pytest.approx(72295.317648, rel=1e-9)


# --- whole-model files written here ------------------------------------------------------------


class _Block(nn.Module):
    """A module class of this test file: the reader sees only its name."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.PReLU(4))
        self.register_buffer("scratch", torch.ones(2), persistent=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),  # float and int64 buffers
        _Block(),
        nn.ConvTranspose2d(4, 4, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.PixelShuffle(2),
        nn.Upsample(scale_factor=2),
    )
    base = torch.arange(10.0)
    net.register_buffer("whole", base)
    net.register_buffer("strided", base.view(2, 5).t())  # a non-contiguous view of the same storage
    tagged = torch.ones(3)
    tagged.tag = "x"  # a tensor with attributes: _rebuild_from_type_v2
    net.register_buffer("tagged", tagged)
    net[0].weight.note = 5  # a parameter with attributes: _rebuild_parameter_with_state
    return net


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and got[k].stride() == t.stride() and torch.equal(got[k], t), k


SAVES = {
    "zip": {},
    "old": {"_use_new_zipfile_serialization": False},
    "protocol1": {"pickle_protocol": 1},  # objects through copyreg._reconstructor
}


@pytest.mark.parametrize("how", SAVES)
def test_whole_model_matches_state_dict(tmp_path: Path, how: str) -> None:
    net = _net()
    path = tmp_path / "net.pth"
    torch.save(net, path, **SAVES[how])
    ckpt = legacy_pickle.FORMAT.read(path, None)
    _assert_same(ckpt.tensors, net.state_dict())
    assert "scratch" not in " ".join(ckpt.tensors)  # non-persistent buffer skipped, as torch does
    assert {"torch.nn.modules.container.Sequential", f"{_Block.__module__}._Block"} <= set(ckpt.facts["classes"])
    assert sniff(path) is not None and legacy_pickle.FORMAT.sniff(path, path.read_bytes()[:512])


@pytest.mark.parametrize("how", ["zip", "old"])
def test_wrapped_model_through_read_checkpoint(tmp_path: Path, how: str) -> None:
    net = _net()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 50, "args": {"lr": 0.1}, "model": net}, path, **SAVES[how])
    sd, _ = read_checkpoint(path)
    _assert_same(sd, net.state_dict())
    _assert_same(read(path, "model").tensors, net.state_dict())
    with pytest.raises(WeightsError, match="no state dict under key 'absent'"):
        read(path, "absent")


def test_big_endian_zip(tmp_path: Path) -> None:
    net = nn.Conv2d(2, 3, 3)
    little = tmp_path / "little.pth"
    torch.save(net, little)
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:  # float32 storages: reverse each element's bytes
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, 4).flip(1).numpy().tobytes()
            dst.writestr(info, data)
    _assert_same(read(big).tensors, net.state_dict())


def test_container_that_holds_itself(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 1))
    net.add_module("again", net)
    path = tmp_path / "loop.pth"
    torch.save(net, path)
    with pytest.raises(WeightsError, match="contains itself"):
        read_checkpoint(path)


# --- pickles that try to run code --------------------------------------------------------------


class _Calls:
    """Unpickling this object would call ``func(*args)``: each creates the marker file."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _attacks(marker: Path) -> dict[str, tuple[_Calls, str]]:
    return {
        "os.system": (_Calls(os.system, f"touch {marker}"), "os.system"),  # pickled as posix.system
        "exec": (_Calls(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        "popen": (_Calls(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
    }


@pytest.mark.parametrize("attack", ["os.system", "exec", "popen"])
@pytest.mark.parametrize("where", ["top", "module-state", "old-format"])
def test_code_in_a_pickle_never_runs(tmp_path: Path, attack: str, where: str) -> None:
    marker = tmp_path / "code-ran"
    evil, name = _attacks(marker)[attack]
    path = tmp_path / "evil.pth"
    if where == "module-state":
        net = nn.Conv2d(1, 1, 1)
        net.hook = evil  # inside the module's pickled __dict__
        torch.save({"model": net}, path)
    else:
        torch.save(
            {"state_dict": nn.Conv2d(1, 1, 1).state_dict(), "x": evil},
            path,
            **SAVES["old" if where == "old-format" else "zip"],
        )
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    assert msg == f"{path}: refused: the pickle calls {name}; pickled code is never executed"


class _Hostile:
    """A class of this file whose unpickling hooks would create the marker, were they ever run."""

    marker: Path

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __getstate__(self) -> dict[str, Any]:
        return {"marker": str(self.marker)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).touch()

    def __new__(cls, *args: Any) -> _Hostile:
        if not args:  # unpickling calls __new__ without arguments
            cls.marker.touch()
        return super().__new__(cls)


def test_named_class_is_only_a_placeholder(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    _Hostile.marker = marker
    net = nn.Conv2d(1, 2, 1)
    path = tmp_path / "hostile.pth"
    torch.save({"model": net, "extra": _Hostile(marker)}, path)
    sd, _ = read_checkpoint(path)
    assert not marker.exists()
    _assert_same(sd, net.state_dict())
    assert f"{_Hostile.__module__}._Hostile" in read(path).facts["classes"]


class _Config(dict):
    """A dict subclass of this file (EasyDict-like): a placeholder that keeps its items."""


def test_dict_subclass_placeholder_keeps_its_items(tmp_path: Path) -> None:
    net = nn.Conv2d(1, 2, 1)
    path = tmp_path / "config.pth"
    torch.save(_Config(epoch=3, model=net), path)
    _assert_same(read(path).tensors, net.state_dict())
