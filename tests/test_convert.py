"""Weights published in another project's format: downloaded from a loopback server, verified,
converted once into our safetensors, cached with their own sha256; and ``upscale convert``."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from loopback import Loopback
from test_weights import entry_for, write_manifest
from typer.testing import CliRunner

from upscale_cli.cli import _group_app
from upscale_cli.convert import converted_path
from upscale_cli.download import cache_dir
from upscale_cli.errors import WeightsError
from upscale_cli.loader import load_model
from upscale_cli.models import create_model
from upscale_cli.weights import FORMAT, read_checkpoint, save_weights


def fsrcnn_file() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A FSRCNN x2 state dict (yjn870's key layout, the upstream one) as torch bytes."""
    torch.manual_seed(0)
    sd = create_model("fsrcnn", 2).state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue(), sd


def entry(data: bytes, url: str, **extra: object) -> dict:
    """A manifest entry (test_weights' shape) for weights published in another format."""
    return entry_for(data, [{"url": url}], file="up.pth", format="torch", **extra)


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(e: dict) -> None:
        monkeypatch.setenv("UPSCALE_MANIFEST", str(write_manifest(tmp_path / "manifest.json", "fsrcnn", 2, e)))

    return make


def same(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in module.state_dict().items())


def test_first_use_downloads_verifies_and_converts_once(server: Loopback, manifest, online: None) -> None:
    data, sd = fsrcnn_file()
    server.files["/up.pth"] = data
    e = entry(data, server.base + "/up.pth")
    manifest(e)
    first = load_model("fsrcnn", 2, progress=False)
    target = converted_path("fsrcnn", e)
    assert first.source == str(target) and same(first.module, sd)
    stored, meta = read_checkpoint(target)
    assert meta is not None and meta["format"] == FORMAT and meta["arch"] == "fsrcnn"
    extra = json.loads(meta["extra"])
    assert extra["source_sha256"] == e["sha256"] and extra["source_format"] == "torch"
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert record["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest() == first.sha256
    assert len(server.gets("/up.pth")) == 1
    second = load_model("fsrcnn", 2, progress=False)  # the cached conversion, re-verified
    assert second.source == str(target) and same(second.module, sd)
    assert len(server.gets("/up.pth")) == 1


def test_damaged_conversion_is_rebuilt_and_damaged_upstream_refetched(
    server: Loopback, manifest, online: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data, sd = fsrcnn_file()
    server.files["/up.pth"] = data
    e = entry(data, server.base + "/up.pth")
    manifest(e)
    load_model("fsrcnn", 2, progress=False)
    target = converted_path("fsrcnn", e)
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in a tensor: still a readable file, but not the one recorded
    target.write_bytes(bytes(raw))
    again = load_model("fsrcnn", 2, progress=False)
    assert same(again.module, sd) and "fail their check" in capsys.readouterr().err
    assert len(server.gets("/up.pth")) == 1  # rebuilt from the verified upstream copy
    target.unlink()
    (cache_dir() / "up.pth").write_bytes(data[:-10] + b"0123456789")  # a damaged upstream copy
    assert same(load_model("fsrcnn", 2, progress=False).module, sd)
    assert len(server.gets("/up.pth")) == 2  # refetched, never used


def test_upstream_serving_wrong_bytes_is_never_converted(server: Loopback, manifest, online: None) -> None:
    data, _ = fsrcnn_file()
    server.files["/up.pth"] = data[:-1] + bytes([data[-1] ^ 1])
    e = entry(data, server.base + "/up.pth")
    manifest(e)
    with pytest.raises(WeightsError, match="wrong file"):
        load_model("fsrcnn", 2, progress=False)
    assert not converted_path("fsrcnn", e).exists()


def test_offline_message_says_what_to_download_and_where(manifest) -> None:
    data, _ = fsrcnn_file()
    manifest(entry(data, "http://127.0.0.1:9/up.pth"))
    with pytest.raises(WeightsError) as err:
        load_model("fsrcnn", 2, progress=False)
    msg = str(err.value)
    assert "offline" in msg and "http://127.0.0.1:9/up.pth" in msg and str(cache_dir() / "up.pth") in msg


def test_companion_files_land_beside_the_main_file(server: Loopback, manifest, online: None) -> None:
    data, sd = fsrcnn_file()
    graph = b'{"nodes": []}'
    server.files["/up.pth"] = data
    server.files["/up-symbol.json"] = graph
    companion = {
        "file": "up-symbol.json",
        "sources": [{"url": server.base + "/up-symbol.json"}],
        "sha256": hashlib.sha256(graph).hexdigest(),
        "size": len(graph),
    }
    manifest(entry(data, server.base + "/up.pth", companions=[companion]))
    assert same(load_model("fsrcnn", 2, progress=False).module, sd)
    assert (cache_dir() / "up-symbol.json").read_bytes() == graph


def test_download_command_converts_ahead_of_time(server: Loopback, manifest, online: None) -> None:
    data, _ = fsrcnn_file()
    server.files["/up.pth"] = data
    e = entry(data, server.base + "/up.pth")
    manifest(e)
    result = CliRunner().invoke(_group_app(), ["download", "fsrcnn", "--scale", "2", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"] == str(converted_path("fsrcnn", e))


# --- upscale convert ------------------------------------------------------------------------


def test_convert_writes_a_file_that_loads_with_no_other_flag(tmp_path: Path) -> None:
    data, sd = fsrcnn_file()
    src = tmp_path / "fsrcnn_x3.pth"
    src.write_bytes(data)
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(_group_app(), ["convert", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert (facts["arch"], facts["scale"], facts["source_format"]) == ("fsrcnn", 3, "torch")
    loaded = load_model(weights=str(out))
    assert (loaded.arch.name, loaded.scale) == ("fsrcnn", 3) and same(loaded.module, sd)
    again = CliRunner().invoke(_group_app(), ["convert", str(src), "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert src.read_bytes() == data


def test_convert_never_overwrites_its_input(tmp_path: Path) -> None:
    _, sd = fsrcnn_file()
    src = tmp_path / "mine.safetensors"
    save_weights(
        src, sd, name="m", arch="fsrcnn", kwargs={"d": 56, "s": 12, "m": 4}, scales=[2], scale=2, convention="y"
    )
    before = src.read_bytes()
    result = CliRunner().invoke(_group_app(), ["convert", str(src), "--overwrite"])
    assert result.exit_code == 2 and "overwrite the input" in result.output
    assert src.read_bytes() == before


def test_convert_names_the_format_and_what_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "odd.pth"
    torch.save({"foo.weight": torch.ones(2, 2)}, src)
    result = CliRunner().invoke(_group_app(), ["convert", str(src)])
    assert result.exit_code == 3
    line = result.output.strip()
    assert "\n" not in line and "odd.pth" in line and "(torch file)" in line and "no known family" in line
    assert not (tmp_path / "odd.safetensors").exists()
