"""Issue 16 (hardening) for ``upscale train``, ``upscale bench`` and the metrics: an unwritable
``--out``, a corrupt ``--resume`` checkpoint, a full disk, the Python 3.10 TOML import, rich markup
in messages, images smaller than the SSIM window, flat images (PSNR capped), ``bench --max-pixels``.

Training runs are ESPCN x2 on three synthetic 48 px images, a step or two, on the CPU.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import math
import os
import struct
import sys
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from conftest import REPO
from PIL import Image
from train_helpers import cli_app, cli_flags, run_train
from typer.testing import CliRunner

import upscale_cli.train.config as config_module
from upscale_cli.commands import bench as bench_cmd
from upscale_cli.metrics import PSNR_MAX, evaluate, psnr
from upscale_cli.train import checkpoint, loop
from upscale_cli.train.checkpoint import FILENAME, FORMAT, load_checkpoint

tomllib = config_module.tomllib
"""The TOML parser of this Python (tomllib, or tomli on 3.10)."""

# --- helpers --------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    return [str(_noise(tmp_path / "data" / f"img{i}.png", 48, 48, i)) for i in range(3)]


def _train_cli(out: Path, data: list[str], *extra: str, **options: str) -> Any:
    flags = cli_flags(out, data, **{"--patch-size": "8", "--batch-size": "2", "--steps": "1", **options})
    return CliRunner().invoke(cli_app(), ["train", *flags, *extra])


def _one_error_line(result: Any) -> str:
    """The run ended by the reporter (no traceback, no exception escaping): its one error line, last."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert errors == lines[-1:] and errors[0].startswith("error: "), result.stderr
    return errors[0]


def _writes_are_refused(folder: Path) -> bool:
    """Does the file system refuse a new file in ``folder``?  (Not as root: chmod stops no one.)"""
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except PermissionError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real one-step checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    data = [str(_noise(root / f"img{i}.png", 48, 48, i)) for i in range(3)]
    run_train(root / "run", data=data, patch_size=8, batch_size=2, steps=1)
    return (root / "run" / FILENAME).read_bytes()


# --- train --out that cannot be written ------------------------------------------------------------


def test_out_under_a_regular_file_is_a_usage_error_before_any_work(
    tmp_path: Path, images: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the training images were loaded before --out was checked")

    monkeypatch.setattr(loop, "ImageStore", no_data)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, cause in ((blocker / "run", "cannot write there"), (blocker, "a file, not a folder")):
        result = _train_cli(out, images)
        assert result.exit_code == 2
        line = _one_error_line(result)
        assert f"--out {out}" in line and cause in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("resume", [False, True])
def test_read_only_out_is_refused_before_the_first_step(
    tmp_path: Path, images: list[str], monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    if resume:
        run_train(out, data=images, patch_size=8, batch_size=2, steps=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.chmod(0o500)
    try:
        if not _writes_are_refused(out):  # root: make the folder unwritable where the probe writes

            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

            monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refuse)
        steps = []
        monkeypatch.setattr(loop.Trainer, "_train_step", lambda self, *a: steps.append(1) or ({"l1": 0.0}, None))
        result = _train_cli(out, images, *(["--resume"] if resume else []), **{"--steps": "2"})
    finally:
        out.chmod(0o700)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert f"--out {out}: cannot write there (Permission denied)" in line
    assert steps == []
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_full_disk_during_training_is_one_line(
    tmp_path: Path, images: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, state: dict) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(loop, "save_checkpoint", full)
    out = tmp_path / "run"
    result = _train_cli(out, images)
    assert result.exit_code == 1
    assert _one_error_line(result) == f"error: {out / FILENAME}: {os.strerror(errno.ENOSPC)}"


# --- a corrupt --resume checkpoint ----------------------------------------------------------------


class _NotATensor:
    """A class weights_only=True refuses to build."""


def _corrupt(kind: str, good: bytes) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "garbage":
        return b"hello, this is not a checkpoint at all\n" * 20
    if kind == "empty":
        return b""
    buf = io.BytesIO()
    if kind == "python objects":
        torch.save({"format": FORMAT, "thing": _NotATensor()}, buf)
    elif kind == "other torch file":
        torch.save({"weight": torch.zeros(2)}, buf)
    return buf.getvalue()


CAUSES = {
    "truncated": "truncated checkpoint",
    "garbage": "not a checkpoint of upscale train (not a PyTorch zip file)",
    "empty": "empty checkpoint (0 bytes)",
    "python objects": "not a checkpoint of upscale train (it holds Python objects",
    "other torch file": "not a checkpoint of upscale train (no format tag",
}


@pytest.mark.parametrize("kind", list(CAUSES))
def test_corrupt_resume_checkpoint_is_one_line_naming_its_cause(
    tmp_path: Path, images: list[str], trained_checkpoint: bytes, kind: str
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / FILENAME).write_bytes(_corrupt(kind, trained_checkpoint))
    result = _train_cli(out, images, "--resume")
    assert result.exit_code == 3
    line = _one_error_line(result)
    assert line.startswith(f"error: {out / FILENAME}: ") and CAUSES[kind] in line
    for torch_words in ("weights_only", "PytorchStreamReader", "miniz", "trust"):
        assert torch_words not in result.output


def test_checkpoint_with_a_damaged_tensor_is_refused(tmp_path: Path, trained_checkpoint: bytes) -> None:
    """torch reads a flipped byte inside a tensor without a word; the zip's CRC-32 catches it."""
    with zipfile.ZipFile(io.BytesIO(trained_checkpoint)) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack_from("<HH", trained_checkpoint, member.header_offset + 26)  # local header
    data_start = member.header_offset + 30 + name_len + extra_len
    damaged = bytearray(trained_checkpoint)
    damaged[data_start + member.file_size // 2] ^= 0xFF
    path = tmp_path / FILENAME
    path.write_bytes(bytes(damaged))
    torch.load(path, weights_only=True)  # torch alone would resume from it
    with pytest.raises(checkpoint.WeightsError, match=r"damaged checkpoint \(checksum mismatch in data/"):
        load_checkpoint(path)


def test_a_good_checkpoint_still_loads(tmp_path: Path, trained_checkpoint: bytes) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(trained_checkpoint)
    assert load_checkpoint(path)["step"] == 1


# --- Python 3.10: tomli for tomllib ----------------------------------------------------------------


def test_config_reads_toml_with_tomli_where_tomllib_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Python 3.10: no tomllib, the tomli package instead (a fresh copy of the module)."""
    parsed: list[str] = []
    tomli = types.ModuleType("tomli")
    tomli.loads = lambda text: parsed.append(text) or tomllib.loads(text)  # type: ignore[attr-defined]
    tomli.TOMLDecodeError = tomllib.TOMLDecodeError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    spec = importlib.util.spec_from_file_location("upscale_cli.train._config_py310", config_module.__file__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fresh)  # dataclasses look their module up while it runs
    spec.loader.exec_module(fresh)
    assert fresh.tomllib is tomli
    good = tmp_path / "good.toml"
    good.write_text('steps = 7\n"patch-size" = 24\n')
    assert fresh.read_toml(good) == {"steps": 7, "patch_size": 24}
    assert parsed == [good.read_text()]
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 7\n")
    with pytest.raises(fresh.UsageError, match="not valid TOML"):
        fresh.read_toml(bad)


def test_pyproject_installs_tomli_on_python_3_10_only() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert "tomli>=1.1; python_version < '3.11'" in project["dependencies"]


# --- rich markup in train's messages ---------------------------------------------------------------


def test_train_error_with_brackets_reaches_stderr_intact(tmp_path: Path, images: list[str]) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("[degradation]\nblur_sigma = [3.0, 1.0]\n")
    result = _train_cli(tmp_path / "run", images, "--config", str(toml))
    assert result.exit_code == 2
    assert "degradation 'blur_sigma' must be [low, high] with 0 <= low <= high" in _one_error_line(result)


def test_train_lines_show_folder_names_with_brackets(tmp_path: Path, images: list[str]) -> None:
    out = tmp_path / "run[exp]"
    result = _train_cli(out, images)
    assert result.exit_code == 0, result.output
    assert f"weights: {out / 'model.safetensors'}" in result.stderr


def test_validation_image_too_small_for_ssim_is_refused_before_training(tmp_path: Path, images: list[str]) -> None:
    small = _noise(tmp_path / "val" / "small.png", 14, 40)  # x2: 10x36 scored, under 11x11
    result = _train_cli(tmp_path / "run", images, **{"--val-set": str(small.parent), "--val-every": "1"})
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert f"{small}: 36x10 px are scored at x2, under SSIM's 11x11 window" in line
    assert not (tmp_path / "run" / FILENAME).exists()


# --- bench: small images, flat images, --max-pixels, names with brackets --------------------------


def _bench_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    bench_cmd.register(app)
    return app


def _bench(*args: str) -> Any:
    return CliRunner().invoke(_bench_app(), ["bench", "--device", "cpu", *args])


def _strict_json(text: str) -> Any:
    def refuse(word: str) -> None:
        raise AssertionError(f"{word} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_image_with_nothing_left_once_shaved_is_one_line(tmp_path: Path) -> None:
    tiny = _noise(tmp_path / "Tiny" / "strip.png", 5, 40)
    result = _bench("--set", str(tiny.parent), "--scale", "2")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith(f"error: {tiny}: 40x5 is too small to score at x2")


def test_image_under_the_ssim_window_keeps_its_psnr(tmp_path: Path) -> None:
    folder = tmp_path / "Mixed"
    small = _noise(folder / "small.png", 14, 40, 1)
    _noise(folder / "big.png", 48, 48, 2)
    result = _bench("--set", str(folder), "--scale", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = _strict_json(result.stdout)["rows"]
    per = row["per_image"]
    assert per["small.png"]["ssim"] is None and 0 < per["small.png"]["psnr"] < PSNR_MAX
    assert 0 < per["big.png"]["ssim"] < 1
    assert row["ssim"] is None and row["psnr"] == pytest.approx((per["small.png"]["psnr"] + per["big.png"]["psnr"]) / 2)
    assert f"note: {small}: 36x10 px are scored at x2, under SSIM's 11x11 window" in result.stderr
    table = _bench("--set", str(folder), "--scale", "2", "--format", "markdown")
    assert f"| {row['psnr']:.2f} / - |" in table.stdout


def test_flat_image_psnr_is_capped_at_100_db_in_every_format(tmp_path: Path) -> None:
    folder = tmp_path / "Flat"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "grey.png")
    args = ("--set", str(folder), "--scale", "2")
    rows = _strict_json(_bench(*args, "--format", "json").stdout)["rows"]
    assert rows[0]["psnr"] == 100.0 and rows[0]["per_image"]["grey.png"]["psnr"] == 100.0
    assert _bench(*args, "--format", "csv").stdout.splitlines()[1].split(",")[4] == "100.0"
    assert "100.00 / 1.0000" in _bench(*args, "--format", "markdown").stdout
    assert "100.00 / 1.0000" in _bench(*args).stdout


def test_bench_max_pixels_lifts_the_limit_its_refusal_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "Big"
    big = _noise(folder / "big.png", 32, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow's limit, the default
    refused = _bench("--set", str(folder), "--scale", "2")
    assert refused.exit_code == 1
    line = _one_error_line(refused)
    assert str(big) in line and "over the limit of 500" in line and "--max-pixels" in line
    assert _bench("--set", str(folder), "--scale", "2", "--max-pixels", "0").exit_code == 0
    assert _bench("--set", str(folder), "--scale", "2", "--max-pixels", "2000").exit_code == 0
    assert _bench("--set", str(folder), "--scale", "2", "--max-pixels", "1000").exit_code == 1


def test_bench_negative_max_pixels_is_a_usage_error_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import upscale_cli.loader

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(upscale_cli.loader, "load_model", no_model)
    _noise(tmp_path / "Set" / "a.png", 32, 32)
    result = _bench("--set", str(tmp_path / "Set"), "--scale", "2", "--max-pixels", "-1")
    assert result.exit_code == 2
    assert _one_error_line(result) == "error: --max-pixels must be >= 0 (0 = no limit), got -1"


def test_bench_table_shows_set_names_with_brackets(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny[v2]"
    _noise(folder / "a.png", 32, 32)
    table = tmp_path / "table.txt"
    result = _bench("--set", str(folder), "--scale", "2", "--output", str(table))
    assert result.exit_code == 0, result.output
    assert "Tiny[v2] PSNR / SSIM" in table.read_text()


# --- the metrics themselves -------------------------------------------------------------------------


def test_psnr_is_capped_and_ssim_is_nan_under_the_window() -> None:
    a = torch.rand(3, 40, 14)
    assert float(psnr(a * 255, a * 255)) == PSNR_MAX
    p, s = evaluate(a, a, scale=2)  # 36x10 scored
    assert float(p) == PSNR_MAX and math.isnan(float(s))
    p, s = evaluate(a, (a + 0.1).clamp(0, 1), scale=1)  # 38x12: SSIM defined
    assert 0 < float(p) < PSNR_MAX and 0 < float(s) < 1
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate(a[:, :4], a[:, :4], scale=2)
