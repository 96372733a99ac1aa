"""load_model: named models (weights from the cache), weights files with or without --arch,
our own safetensors exports, parameter-free and random-weight models; and the ``models`` and
``download`` subcommands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from upscale_cli.commands import models as models_cmd
from upscale_cli.models import list_archs
from upscale_cli.download import cache_dir
from upscale_cli.errors import EXIT_USAGE, EXIT_WEIGHTS, UsageError, WeightsError
from upscale_cli.loader import load_model, scale_from_name
from upscale_cli.weights import (
    manifest_entry,
    read_checkpoint,
    save_weights,
    sha256_file,
)


def cache_fixture(checkpoints: Path, file: str) -> Path:
    """Put a ../shared checkpoint where the cache keeps it (as a finished download would)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(checkpoints / file, cache_dir() / file))


def same_weights(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return own.keys() == sd.keys() and all(torch.equal(own[k], sd[k].to(own[k].dtype)) for k in own)


# --- named models -------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "file"), [(3, "fsrcnn_x3.pth"), (4, "fsrcnn_x4.pth")])
def test_named_model_from_the_cache(checkpoints: Path, scale: int, file: str) -> None:
    cached = cache_fixture(checkpoints, file)
    m = load_model("fsrcnn", scale)  # offline (conftest): the verified cache is the only way
    assert (m.name, m.arch.name, m.scale, m.source) == ("fsrcnn", "fsrcnn", scale, str(cached))
    assert m.sha256 == manifest_entry("fsrcnn", scale)["sha256"]
    assert same_weights(m.module, read_checkpoint(cached)[0])
    assert not m.module.training
    assert m(torch.rand(1, 3, 8, 10)).shape == (1, 3, 8 * scale, 10 * scale)


def test_multiscale_named_model_one_file_every_scale(checkpoints: Path) -> None:
    cache_fixture(checkpoints, "carn_m.pth")
    x = torch.rand(1, 3, 6, 7)
    for scale in (2, 3, 4):
        m = load_model("carn-m", scale)
        assert m.scale == scale and m.params == 414_811
        assert m(x).shape == (1, 3, 6 * scale, 7 * scale)
    assert load_model("carn-m").scale == 2  # default: the first scale


def test_named_model_with_a_wrapper_key(checkpoints: Path) -> None:
    cache_fixture(checkpoints, "realesr-animevideov3.pth")
    m = load_model("animevideov3")  # an alias
    assert m.name == "realesr-animevideov3" and m.scale == 4
    assert m.extra["license"] == "BSD-3-Clause"
    assert same_weights(m.module, read_checkpoint(checkpoints / "realesr-animevideov3.pth", key="params")[0])


def test_named_model_offline_and_not_cached() -> None:
    with pytest.raises(WeightsError, match=r"fsrcnn_x2\.pth.*offline.*put it at"):
        load_model("fsrcnn", 2)


def test_an_unreachable_model_names_its_twin_in_the_package() -> None:
    """EDSR-baseline x2 from the authors' host, offline: the message offers the in-house weights
    of the same network; at x3, where no such twin ships, it offers none."""
    with pytest.raises(WeightsError, match=r"edsr_baseline_x2.*offline.*or use edsr-baseline-291, the same network"):
        load_model("edsr-baseline", 2)
    with pytest.raises(WeightsError, match=r"edsr_baseline_x3") as err:
        load_model("edsr-baseline", 3)
    assert "or use" not in str(err.value)
    twin = load_model("edsr-baseline-291", 2)
    assert twin.source.endswith("weights/edsr-baseline-x2.safetensors")
    assert twin.params == load_model("edsr-baseline", 2, pretrained=False).params


def test_classical_models_need_no_weights() -> None:
    m = load_model("bicubic", 3)
    assert (m.source, m.params, m.scale) == ("none", 0, 3)
    assert m(torch.rand(1, 3, 5, 6)).shape == (1, 3, 15, 18)


def test_random_weights_for_training() -> None:
    m = load_model("srcnn", 2, pretrained=False)
    assert m.source == "random" and m.params > 0 and m.sha256 is None
    with pytest.raises(
        WeightsError, match=r"srcnn x2: no verified public weights.*--weights FILE.*upscale train srcnn"
    ):
        load_model("srcnn", 2)


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown model"):
        load_model("no-such-model", 2)
    with pytest.raises(UsageError, match=r"exists for scales \[2, 3, 4\], not x5"):
        load_model("fsrcnn", 5, pretrained=False)
    for scale in (5, 8):  # x5 cannot be built, x8 can but has no weights: both are refused
        with pytest.raises(UsageError, match=rf"'edsr-baseline' exists for scales \[2, 3, 4\], not x{scale}"):
            load_model("edsr-baseline", scale)
    with pytest.raises(UsageError, match="name a model"):
        load_model()
    with pytest.raises(UsageError, match="is a fsrcnn network"):
        load_model("fsrcnn", 2, arch="edsr", pretrained=False)


# --- weights files -----------------------------------------------------------------------


def test_save_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = load_model("fsrcnn", 3, pretrained=False)
    path = tmp_path / "mine.safetensors"
    digest = save_weights(
        path, trained.module.state_dict(), name="my-fsrcnn", arch="fsrcnn", kwargs=trained.kwargs,
        scales=[3], scale=3, convention="y", extra={"epochs": 2},
    )
    m = load_model(weights=str(path))  # nothing else: the metadata says it all
    assert (m.name, m.arch.name, m.scale, dict(m.kwargs)) == ("my-fsrcnn", "fsrcnn", 3, dict(trained.kwargs))
    assert m.sha256 == digest and m.extra == {"epochs": 2}
    x = torch.rand(1, 3, 9, 8)
    with torch.no_grad():
        assert torch.equal(m(x), trained(x))
    with pytest.raises(UsageError, match="holds a x3 fsrcnn network"):
        load_model(weights=str(path), scale=2)


def test_multiscale_export_runs_at_each_of_its_scales(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = load_model("carn-m", 2, pretrained=False)
    path = tmp_path / "carn.safetensors"
    save_weights(path, net.module.state_dict(), name="c", arch="carn", kwargs=net.kwargs, scales=[2, 3, 4], scale=2,
                 convention="rgb")
    m = load_model(weights=str(path), scale=4)
    assert m.scale == 4
    x = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(m(x), net.module(x, 4))
    with pytest.raises(UsageError, match="not x5"):
        load_model(weights=str(path), scale=5)


@pytest.mark.parametrize(
    ("file", "arch", "scale"),
    [("carn_m.pth", "carn", 2), ("fsrcnn_x3.pth", "fsrcnn", 3), ("realesr-animevideov3.pth", "srvgg", 4)],
)
def test_third_party_files_by_detection(checkpoints: Path, file: str, arch: str, scale: int) -> None:
    m = load_model(weights=str(checkpoints / file))
    assert (m.name, m.arch.name, m.scale) == (file, arch, scale)
    assert m.sha256 == sha256_file(checkpoints / file)


def test_arch_as_family_or_model_name(checkpoints: Path) -> None:
    path = str(checkpoints / "carn_m.pth")
    assert load_model(weights=path, arch="carn", scale=3).kwargs["mobile"] is True  # family: read off shapes
    assert load_model(weights=path, arch="carn-m", scale=3).kwargs == {"mobile": True, "group": 4}
    misfit = r"carn_m\.pth \(edsr x2\): weights do not fit the network \(\d+ missing: sub_mean"
    with pytest.raises(WeightsError, match=misfit):
        load_model(weights=path, arch="edsr-baseline", scale=2)
    with pytest.raises(WeightsError, match=r"not a checkpoint of the fsrcnn family"):
        load_model(weights=path, arch="fsrcnn", scale=2)


def test_arch_kwargs_over_a_family_or_a_model_name(checkpoints: Path) -> None:
    """``--arch NAME:key=value``: kwargs over those read off the file (family) or the model's;
    a named model's published weights take none."""
    path = str(checkpoints / "carn_m.pth")
    assert load_model(weights=path, arch="carn:group=4", scale=3).kwargs == {"mobile": True, "group": 4, "feats": 64}
    assert load_model(weights=path, arch="carn-m:group=4", scale=3).kwargs == {"mobile": True, "group": 4}
    with pytest.raises(WeightsError, match=r"weights do not fit the network \(.*shape mismatch"):
        load_model(weights=path, arch="carn:group=2", scale=3)
    with pytest.raises(UsageError, match="kwargs apply to --weights files and to random weights"):
        load_model("carn-m", 2, arch="carn:group=4")
    assert load_model("carn-m", 2, arch="carn", pretrained=False).kwargs == {"mobile": True, "group": 4}


def test_scale_read_from_the_file_name() -> None:
    names = ("fsrcnn_x3.pth", "RealESRGAN_x4plus.pth", "4x_foo.pth", "carn_m.pth", "a_x2_x4.pth")
    assert [scale_from_name(n) for n in names] == [3, 4, 4, None, None]


def test_scale_required_when_nothing_tells_it(checkpoints: Path, tmp_path: Path) -> None:
    anonymous = Path(shutil.copy(checkpoints / "fsrcnn_x2.pth", tmp_path / "weights.pth"))
    with pytest.raises(UsageError, match="pass --scale"):
        load_model(weights=str(anonymous))
    assert load_model(weights=str(anonymous), scale=2).scale == 2


# --- the models and download subcommands ----------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    models_cmd.register(app)
    return app


def test_models_json_and_table(cli: typer.Typer, checkpoints: Path) -> None:
    cache_fixture(checkpoints, "fsrcnn_x2.pth")
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout) if r["weights"] != "your own"}
    for row in rows.values():
        assert {"name", "aliases", "arch", "scales", "params", "license", "cached", "trainable_only"} <= row.keys()
    assert rows["carn-m"]["params"] == 414_811 and rows["carn-m"]["license"] == "MIT"
    assert rows["carn-m"]["paper_set5_psnr"] == {"2": 37.53, "3": 33.99, "4": 31.92}
    assert rows["fsrcnn"]["cached_scales"] == [2] and rows["fsrcnn"]["cached"] is False
    assert rows["bicubic"]["cached"] is True and rows["bicubic"]["params"] == 0
    assert rows["rcan"]["trainable_only"] is True and rows["rcan"]["weights"] == "trainable only"
    assert "animevideov3" in rows["realesr-animevideov3"]["aliases"]
    assert (cache_dir() / "params.json").is_file()  # counts remembered: the table below builds nothing
    archs = {r["name"]: r for r in json.loads(result.stdout) if r["weights"] == "your own"}
    assert set(archs) == {a.name for a in list_archs() if a.matches}  # every family with weights to read
    assert archs["srvgg"]["variants"]["compact-relu"] == {"act": "relu"} and "compact" in archs["srvgg"]["aliases"]
    assert "swinir" in archs and "resample" not in archs  # the resamplers have no weights
    table = CliRunner().invoke(cli, ["models"], env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    lines = table.stdout.splitlines()
    carn = next(i for i, line in enumerate(lines) if line.split()[:2] == ["carn-m", "carn"])
    assert lines[carn].split()[2:] == ["x2", "415K", "MIT", "no", "37.53"]  # one line per scale
    assert [line.split() for line in lines[carn + 1 : carn + 3]] == [["x3", "33.99"], ["x4", "31.92"]]
    for text in ("edsr-baseline", "train", "Architectures for your own weights", "compact-relu"):
        assert text in table.stdout


def test_download_offline_fails_with_one_line(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["download", "carn-m"])
    assert result.exit_code == EXIT_WEIGHTS
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "carn_m.pth" in lines[0] and "offline" in lines[0]


def test_download_from_cache_and_usage_errors(cli: typer.Typer, checkpoints: Path) -> None:
    for s in (2, 3, 4):
        cache_fixture(checkpoints, f"fsrcnn_x{s}.pth")
    result = CliRunner().invoke(cli, ["download", "fsrcnn", "--all", "--json"])
    assert result.exit_code == 0, result.output
    assert [(d["scales"], Path(d["path"]).name) for d in json.loads(result.stdout)] == [
        ([2], "fsrcnn_x2.pth"), ([3], "fsrcnn_x3.pth"), ([4], "fsrcnn_x4.pth")
    ]
    x3 = CliRunner().invoke(cli, ["download", "fsrcnn", "--scale", "3"])
    assert x3.stdout.strip() == str(cache_dir() / "fsrcnn_x3.pth")
    assert CliRunner().invoke(cli, ["download", "fsrcnn", "--scale", "3", "--all"]).exit_code == EXIT_USAGE
    assert CliRunner().invoke(cli, ["download", "rcan"]).exit_code == EXIT_WEIGHTS
    bicubic = CliRunner().invoke(cli, ["download", "bicubic"])
    assert bicubic.exit_code == 0 and "no weights" in bicubic.stderr
