"""Weights files and their resolution: safe reading, our safetensors export, family detection,
and real downloads from loopback servers (a plain HTTP server with Range support, and a
stand-in for the Hugging Face endpoint)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from loopback import Loopback
from rich.console import Console
from torch import nn

from upscale_cli import download
from upscale_cli.download import Expected, cache_dir, parse_hf, resolve_weights
from upscale_cli.errors import UsageError, WeightsError
from upscale_cli.formats.torchfile import unwrap_state_dict
from upscale_cli.models import detect_arch
from upscale_cli.weights import (
    FORMAT,
    key_diff,
    load_strict,
    read_checkpoint,
    save_weights,
    sha256_file,
)


@pytest.fixture
def payload() -> bytes:
    """A small real checkpoint (a torch file of a conv layer), 40 KB or so."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(nn.Conv2d(3, 64, 7).state_dict(), buf)
    return buf.getvalue()


def write_manifest(path: Path, model: str, scale: int, entry: dict) -> Path:
    path.write_text(json.dumps({"version": 1, "models": {model: {str(scale): entry}}}), encoding="utf-8")
    return path


def entry_for(data: bytes, sources: list[dict], file: str = "conv.pth", **extra: object) -> dict:
    return {
        "arch": "fsrcnn",
        "kwargs": {"d": 56, "s": 12, "m": 4},
        "file": file,
        "sources": sources,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "license": "MIT",
        "citation": "test",
        **extra,
    }


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the resolver at a temporary manifest holding one ``fsrcnn`` x2 entry."""

    def make(entry: dict) -> Path:
        path = write_manifest(tmp_path / "manifest.json", "fsrcnn", 2, entry)
        monkeypatch.setenv("UPSCALE_MANIFEST", str(path))
        return path

    return make


# --- save_weights / read_checkpoint ------------------------------------------------------------


def test_save_weights_writes_metadata_and_contiguous_cpu_tensors(tmp_path: Path) -> None:
    sd = {"w": torch.arange(12.0).reshape(3, 4).t(), "b": torch.ones(2)}  # a non-contiguous view
    assert not sd["w"].is_contiguous()
    path = tmp_path / "sub" / "m.safetensors"
    digest = save_weights(
        path, sd, name="mine", arch="fsrcnn", kwargs={"d": 56}, scales=[2, 3], scale=3, convention="y",
        extra={"epochs": 5},
    )
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left behind
    got, meta = read_checkpoint(path)
    assert meta is not None
    assert meta["format"] == FORMAT and meta["name"] == "mine" and meta["arch"] == "fsrcnn"
    assert json.loads(meta["kwargs"]) == {"d": 56} and json.loads(meta["scales"]) == [2, 3]
    assert meta["scale"] == "3" and meta["convention"] == "y" and json.loads(meta["extra"]) == {"epochs": 5}
    assert torch.equal(got["w"], sd["w"]) and got["w"].is_contiguous() and got["w"].device.type == "cpu"


def test_failed_save_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_weights(path, {"a": torch.ones(1)}, name="a", arch="x", kwargs={}, scales=[2], scale=2, convention="rgb")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_weights(path, {"a": "not a tensor"}, name="a", arch="x", kwargs={}, scales=[2], scale=2, convention="rgb")  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_wrappers_prefixes_and_non_tensors(tmp_path: Path) -> None:
    inner = {"module.conv.weight": torch.ones(2, 2), "module.conv.bias": torch.zeros(2)}
    ema = {"conv.weight": torch.full((2, 2), 7.0)}
    path = tmp_path / "ckpt.pth"
    torch.save({"params": inner, "params_ema": ema, "epoch": 3}, path)
    sd, meta = read_checkpoint(path)
    assert meta is None and list(sd) == ["conv.weight"] and sd["conv.weight"][0, 0] == 7  # EMA preferred
    sd, _ = read_checkpoint(path, key="params")
    assert sorted(sd) == ["conv.bias", "conv.weight"]  # module. stripped
    torch.save({"state_dict": {"model": {**inner, "step": 10, "lr": torch.tensor(0.1)}}, "optimizer": {}}, path)
    sd, _ = read_checkpoint(path)
    assert sorted(sd) == ["conv.bias", "conv.weight", "lr"]  # nested wrappers followed, ints dropped
    with pytest.raises(WeightsError, match="no state dict under key 'nope'"):
        read_checkpoint(path, key="nope")
    assert unwrap_state_dict({"model": {"x.w": torch.ones(1)}})[1] == "model"


class _Evil:
    """Unpickling this object would create a directory: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": _Evil(marker)}, path)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    # torch's safe loader refuses the global; the restricted unpickler refuses the call
    assert str(err.value) == f"{path}: refused: the pickle calls os.makedirs; pickled code is never executed"


def test_whole_model_checkpoint_loads_its_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    net = nn.Conv2d(1, 2, 3)
    torch.save(net, path)
    sd, _ = read_checkpoint(path)
    assert list(sd) == ["weight", "bias"]
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(WeightsError, match=r"junk\.pth: not a weights file of any supported format"):
        read_checkpoint(junk)
    with pytest.raises(WeightsError, match="no such weights file"):
        read_checkpoint(tmp_path / "absent.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(WeightsError, match="holds no tensors"):
        read_checkpoint(empty)


def test_cuda_saved_fixture_loads_on_cpu(checkpoints: Path) -> None:
    sd, _ = read_checkpoint(checkpoints / "fsrcnn_x2.pth")
    assert all(t.device.type == "cpu" for t in sd.values())


# --- key checks and family detection ---------------------------------------------------------------


def test_key_diff_is_readable() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))
    sd = dict(net.state_dict())
    sd["2.weight"] = torch.zeros(3, 4, 3, 3)
    del sd["0.bias"]
    sd["extra.w"] = torch.ones(1)
    diff = key_diff(net.state_dict(), sd)
    assert diff == (
        "1 missing: 0.bias; 1 unexpected: extra.w; "
        "1 shape mismatch (file vs model): 2.weight (3, 4, 3, 3) vs (3, 8, 3, 3)"
    )
    with pytest.raises(WeightsError, match=r"^w\.pth: weights do not fit the network \(1 missing: 0\.bias;"):
        load_strict(net, sd, "w.pth")
    many = {f"k{i}": torch.ones(1) for i in range(7)}
    assert key_diff({}, many) == "7 unexpected: k0, k1, k2, ... 4 more"
    assert key_diff(net.state_dict(), net.state_dict()) is None


@pytest.mark.parametrize(
    ("file", "arch", "kwargs", "scale"),
    [
        ("carn_m.pth", "carn", {"mobile": True, "group": 4}, None),
        ("fsrcnn_x2.pth", "fsrcnn", {"d": 56, "s": 12, "m": 4}, None),
        ("fsrcnn_x4.pth", "fsrcnn", {"d": 56, "s": 12, "m": 4}, None),
        ("realesr-animevideov3.pth", "srvgg", {"num_feat": 64, "num_conv": 16}, 4),
    ],
)
def test_detect_fixture_families_from_keys(
    checkpoints: Path, file: str, arch: str, kwargs: dict, scale: int | None
) -> None:
    sd, _ = read_checkpoint(checkpoints / file)
    found, got_kwargs, got_scale = detect_arch(sd)
    assert found.name == arch
    assert {k: got_kwargs[k] for k in kwargs} == kwargs
    assert got_scale == scale


def test_detect_prefers_the_family_that_fits_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.models.detect as zoo
    from upscale_cli.models import Arch

    def family(name: str, bias: bool, matches) -> Arch:
        return Arch(
            name=name,
            build=lambda scale, width=8: nn.Conv2d(3, width, 3, bias=bias),
            convention="rgb",
            radius=lambda kwargs, scale: 1,
            paper="test",
            matches=matches,
            infer_kwargs=lambda sd: ({"width": sd["weight"].shape[0]}, 2),
        )

    def choke(sd: object) -> bool:
        raise KeyError("a matcher that fails on foreign keys")

    with_bias = family("with-bias", True, lambda sd: "weight" in sd)
    no_bias = family("no-bias", False, lambda sd: "weight" in sd)
    monkeypatch.setattr(zoo, "list_archs", lambda: [no_bias, family("choking", True, choke), with_bias])
    arch, kwargs, scale = detect_arch(nn.Conv2d(3, 5, 3).state_dict())  # both claim it; one fits
    assert (arch.name, kwargs, scale) == ("with-bias", {"width": 5}, 2)
    assert detect_arch(nn.Conv2d(3, 5, 3, bias=False).state_dict())[0].name == "no-bias"


def test_detect_refuses_unknown_keys() -> None:
    with pytest.raises(WeightsError, match=r"cannot tell the architecture.*no known family has any of them.*first keys: foo\.weight\)$"):
        detect_arch({"foo.weight": torch.ones(1)})


# --- downloads: plain HTTP ------------------------------------------------------------------------


def test_download_verifies_caches_and_shows_progress(
    server: Loopback, payload: bytes, manifest, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/w/conv.pth"] = payload
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    shown = io.StringIO()
    monkeypatch.setattr(download, "_console", lambda: Console(file=shown, force_terminal=True, width=120))
    path = resolve_weights("fsrcnn", 2)
    assert path == cache_dir() / "conv.pth" and path.read_bytes() == payload
    assert "conv.pth" in shown.getvalue() and "100%" in shown.getvalue()
    assert not (cache_dir() / "conv.pth.part").exists()
    assert resolve_weights("fsrcnn", 2) == path  # second time from the cache
    assert len(server.gets("/w/conv.pth")) == 1


def test_concurrent_resolutions_download_once(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/w/conv.pth"] = payload
    server.delay = 0.3  # the first download is still running when the second caller arrives
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: resolve_weights("fsrcnn", 2, progress=False), range(2)))
    assert paths[0] == paths[1] and paths[0].read_bytes() == payload
    assert len(server.gets("/w/conv.pth")) == 1


def test_download_resumes_a_partial_file(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/w/conv.pth"] = payload
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    half = len(payload) // 2
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "conv.pth.part").write_bytes(payload[:half])
    path = resolve_weights("fsrcnn", 2, progress=False)
    assert path.read_bytes() == payload
    assert server.gets("/w/conv.pth") == [f"bytes={half}-"]  # only the missing bytes were asked for


def test_interrupted_download_resumes_next_time(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/w/conv.pth"] = payload
    server.cut_after = third = len(payload) // 3
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    with pytest.raises(WeightsError, match=r"cannot get conv\.pth.*connection closed after \d+ of \d+ bytes"):
        resolve_weights("fsrcnn", 2, progress=False)
    assert (cache_dir() / "conv.pth.part").stat().st_size == third  # kept for the resume
    assert not (cache_dir() / "conv.pth").exists()
    server.cut_after = None
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload
    assert server.gets("/w/conv.pth") == [None, f"bytes={third}-"]


def test_server_without_range_support_restarts_cleanly(
    server: Loopback, payload: bytes, manifest, online: None
) -> None:
    server.files["/w/conv.pth"] = payload
    server.range_ok = False
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "conv.pth.part").write_bytes(payload[:100])
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload


def test_stale_part_is_discarded_and_fetched_again(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/w/conv.pth"] = payload
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "conv.pth.part").write_bytes(b"x" * 1000)  # wrong bytes from an older file
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload
    assert server.gets("/w/conv.pth") == ["bytes=1000-", None]


def test_wrong_bytes_reported_and_next_source_tried(
    server: Loopback, payload: bytes, manifest, online: None, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/bad/conv.pth"] = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    server.files["/good/conv.pth"] = payload
    manifest(entry_for(payload, [{"url": server.base + "/bad/conv.pth"}, {"url": server.base + "/good/conv.pth"}]))
    path = resolve_weights("fsrcnn", 2, progress=False)
    assert path.read_bytes() == payload
    err = capsys.readouterr().err
    assert "/bad/conv.pth served a file that fails its check" in err and "sha256" in err


def test_every_source_failing_is_one_clear_error(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/bad/conv.pth"] = payload + b"tail"
    manifest(entry_for(payload, [{"url": server.base + "/bad/conv.pth"}, {"url": server.base + "/missing/conv.pth"}]))
    with pytest.raises(WeightsError) as err:
        resolve_weights("fsrcnn", 2, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "conv.pth" in msg and "HTTP 404" in msg and "wrong file (size" in msg
    assert str(cache_dir() / "conv.pth") in msg
    assert not (cache_dir() / "conv.pth").exists() and not (cache_dir() / "conv.pth.part").exists()


@pytest.mark.parametrize("var", ["UPSCALE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_with_nothing_cached(
    server: Loopback, payload: bytes, manifest, online: None, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    server.files["/w/conv.pth"] = payload
    url = server.base + "/w/conv.pth"
    manifest(entry_for(payload, [{"url": url}]))
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsError) as err:
        resolve_weights("fsrcnn", 2)
    msg = str(err.value)
    assert "offline" in msg and "conv.pth" in msg and url in msg and str(cache_dir() / "conv.pth") in msg
    assert server.requests == []  # no network attempt at all


def test_offline_uses_a_good_cached_file(payload: bytes, manifest) -> None:
    manifest(entry_for(payload, [{"url": "http://127.0.0.1:9/never"}]))
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "conv.pth").write_bytes(payload)
    assert resolve_weights("fsrcnn", 2).read_bytes() == payload


def test_package_source_is_used_in_place_and_verified(
    server: Loopback, payload: bytes, manifest, online: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-house weights shipped in the package: verified and used where they lie, no copy;
    a damaged shipped file is reported and the next source used."""
    package = tmp_path / "pkg"
    (package / "weights").mkdir(parents=True)
    monkeypatch.setattr(download, "__file__", str(package / "download.py"))
    shipped = package / "weights" / "conv.pth"
    shipped.write_bytes(payload)
    server.files["/w/conv.pth"] = payload
    manifest(entry_for(payload, [{"package": "weights/conv.pth"}, {"url": server.base + "/w/conv.pth"}]))
    assert resolve_weights("fsrcnn", 2, progress=False) == shipped.resolve()
    assert not (cache_dir() / "conv.pth").exists() and server.gets("/w/conv.pth") == []
    shipped.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload
    assert "fails its check" in capsys.readouterr().err and len(server.gets("/w/conv.pth")) == 1


def test_corrupt_cache_is_removed_and_fetched_again(
    server: Loopback, payload: bytes, manifest, online: None, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/w/conv.pth"] = payload
    manifest(entry_for(payload, [{"url": server.base + "/w/conv.pth"}]))
    cache_dir().mkdir(parents=True, exist_ok=True)
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    (cache_dir() / "conv.pth").write_bytes(bytes(corrupt))
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload
    assert "fails its check" in capsys.readouterr().err
    assert len(server.gets("/w/conv.pth")) == 1


def test_sha256_prefix_entries(server: Loopback, payload: bytes, manifest, online: None) -> None:
    server.files["/w/conv.pth"] = payload
    entry = entry_for(payload, [{"url": server.base + "/w/conv.pth"}])
    entry["sha256_prefix"] = entry.pop("sha256")[:8]
    del entry["size"]
    manifest(entry)
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == payload
    assert Expected(sha256_prefix="00000000").problem(cache_dir() / "conv.pth") is not None


def test_models_without_weights_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match=r"rcan x4: no verified public weights.*--weights FILE.*upscale train rcan"):
        resolve_weights("rcan", 4)
    with pytest.raises(UsageError, match="not x5"):
        resolve_weights("fsrcnn", 5)
    with pytest.raises(UsageError, match="unknown model"):
        resolve_weights("no-such-model", 2)


# --- --weights: paths, URLs, hf:// -------------------------------------------------------------------


def test_weights_url_is_downloaded_once_and_checked_against_its_name(
    server: Loopback, payload: bytes, online: None
) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    server.files[f"/x/conv-{digest[:8]}.pth"] = payload
    server.files["/x/liar-00000000.pth"] = payload
    url = f"{server.base}/x/conv-{digest[:8]}.pth"
    first = resolve_weights(None, None, weights=url, progress=False)
    assert first.read_bytes() == payload and resolve_weights(None, None, weights=url) == first
    assert len(server.gets(f"/x/conv-{digest[:8]}.pth")) == 1
    with pytest.raises(WeightsError, match="liar-00000000.pth: the file served fails its check"):
        resolve_weights(None, None, weights=f"{server.base}/x/liar-00000000.pth", progress=False)


def test_weights_url_offline() -> None:
    url = "http://127.0.0.1:9/x/conv.pth"
    with pytest.raises(
        WeightsError, match=r"x/conv\.pth: offline and not cached.*put it at .*urls/[0-9a-f]{16}/conv\.pth"
    ):
        resolve_weights(None, None, weights=url)


def test_weights_local_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        resolve_weights(None, None, weights=str(tmp_path / "nope.pth"))
    (tmp_path / "w.pth").write_bytes(b"x")
    assert resolve_weights(None, None, weights=str(tmp_path / "w.pth")) == tmp_path / "w.pth"


def test_parse_hf_uris() -> None:
    assert parse_hf("hf://org/repo/a/b.pth@v1") == ("org/repo", "a/b.pth", "v1")
    assert parse_hf("hf://org/repo/b.pth") == ("org/repo", "b.pth", None)
    with pytest.raises(UsageError):
        parse_hf("hf://org/b.pth")


@pytest.fixture
def hub(server: Loopback, monkeypatch: pytest.MonkeyPatch, online: None, tmp_path: Path) -> Loopback:
    """The loopback server as the Hugging Face endpoint.  huggingface_hub reads HF_HUB_OFFLINE
    and HF_ENDPOINT once, at import, so its constants are set too (no request leaves the host).
    Its agent-harness registry (huggingface_hub >= 1.x fetches it from the endpoint when it
    first builds request headers, then keeps it in the process and in a file) starts empty, as
    in a fresh process: whether a test's code makes that request must not depend on the order
    the tests ran in."""
    import importlib

    import huggingface_hub.constants as hfc

    try:
        detect = importlib.import_module("huggingface_hub.utils._detect_agent")
    except ImportError:  # older huggingface_hub: no registry
        pass
    else:
        monkeypatch.setattr(detect, "_registry", None)
        monkeypatch.setattr(hfc, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))

    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "ENDPOINT", server.base)
    monkeypatch.setattr(hfc, "HUGGINGFACE_CO_URL_TEMPLATE", server.base + "/{repo_id}/resolve/{revision}/{filename}")
    return server


def test_hf_source_through_the_hub_client(
    hub: Loopback, payload: bytes, manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.files["/org/bad/resolve/main/conv.pth"] = b"wrong" + payload
    hub.files["/org/weights/resolve/v1/sub/conv.pth"] = payload
    sources = [
        {"hf": {"repo_id": "org/bad", "filename": "conv.pth", "revision": "main"}},
        {"hf": {"repo_id": "org/weights", "filename": "sub/conv.pth", "revision": "v1"}},
    ]
    manifest(entry_for(payload, sources))
    path = resolve_weights("fsrcnn", 2)
    assert path.read_bytes() == payload
    assert "models--org--weights" in str(path) and Path(os.environ["HF_HOME"]) in path.parents  # HF's own cache
    assert ("HEAD", "/org/weights/resolve/v1/sub/conv.pth", None) in hub.requests
    # offline afterwards: found in HF's cache without any request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    assert resolve_weights("fsrcnn", 2) == path
    assert hub.requests == []


@pytest.mark.parametrize("var", ["UPSCALE_OFFLINE", "HF_HUB_OFFLINE"])
def test_hf_offline_and_not_cached(
    hub: Loopback, payload: bytes, manifest, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    manifest(entry_for(payload, [{"hf": {"repo_id": "org/weights", "filename": "conv.pth", "revision": "main"}}]))
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsError, match=r"conv\.pth.*offline.*hf://org/weights/conv\.pth@main.*put it at"):
        resolve_weights("fsrcnn", 2)
    assert hub.requests == []


def test_hf_uri_as_weights(hub: Loopback, payload: bytes) -> None:
    hub.files["/org/w/resolve/main/dir/conv.pth"] = payload
    path = resolve_weights(None, None, weights="hf://org/w/dir/conv.pth")
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(WeightsError, match=r"hf://org/w/missing\.pth: cannot fetch it"):
        resolve_weights(None, None, weights="hf://org/w/missing.pth")
