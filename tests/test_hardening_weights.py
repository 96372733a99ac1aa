"""Issue 16, weights: downloads that are never spliced and always end, a quiet Hugging Face
client under ``-q``, pickles of protocols 4-5 read safely (and code-calling ones refused in
one line), and user manifests checked against the schema when they are loaded."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import torch
import typer
from conftest import REPO
from loopback import Loopback
from test_cli import make_png, run
from test_weights import entry_for, hub, write_manifest  # noqa: F401 - hub is a fixture
from torch import nn
from typer.testing import CliRunner

from upscale_cli.commands import models as models_cmd
from upscale_cli.download import cache_dir, resolve_weights, url_downloads
from upscale_cli.errors import UsageError, WeightsError
from upscale_cli.weights import load_manifest, read_checkpoint, schema_problem

# --- a hostile HTTP server -------------------------------------------------------------------------


def _checkpoint(seed: int) -> bytes:
    """A small real torch file (a conv layer's state dict); two seeds give two files of one size."""
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), buf)
    return buf.getvalue()


class Hostile:
    """Serves ``data`` at any path on 127.0.0.1, and can misbehave.

    ``etag``/``last_modified``: the validators it sends (``None``: none); ``cut_after``: body
    bytes sent before hanging up; ``honour_if_range``: whether a stale ``If-Range`` gets the
    whole file (RFC 9110) or, as a liar, the range anyway; ``lie``: headers that replace the
    true ones on a 206; ``byte_delay``: seconds between body bytes (a trickle, for
    ``trickle_for`` seconds at most);
    ``header_delay``: seconds between the bytes of the status line.  ``requests`` keeps the
    request headers."""

    def __init__(self) -> None:
        self.data = b""
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.cut_after: int | None = None
        self.honour_if_range = True
        self.lie: dict[str, str] = {}
        self.byte_delay = 0.0
        self.trickle_for = 8.0
        self.header_delay = 0.0
        self.requests: list[dict[str, str]] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    server.answer(self)
                except OSError:  # the client hung up (a limit cut it): nothing to answer
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w/model.pth"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append(dict(h.headers))
        data, rng, cond = self.data, h.headers.get("Range"), h.headers.get("If-Range")
        fresh = cond is None or cond in (self.etag, self.last_modified)
        start = int(rng.split("=")[1].split("-")[0]) if rng and (fresh or not self.honour_if_range) else 0
        if self.header_delay:
            for byte in b"HTTP/1.1 200 OK\r\n":
                if self.stop.wait(self.header_delay):
                    return
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            h.wfile.write(b"\r\n")
            return
        headers = {"Content-Length": str(len(data) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        for name, value in (("ETag", self.etag), ("Last-Modified", self.last_modified)):
            if value is not None:
                headers[name] = value
        if start:
            headers.update(self.lie)
        h.send_response(206 if start else 200)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        body = data[start:][: self.cut_after]
        if not self.byte_delay:
            h.wfile.write(body)
            return
        began = time.monotonic()
        for i in range(len(body)):
            if self.stop.wait(self.byte_delay) or time.monotonic() - began > self.trickle_for:
                return  # hang up: no test waits on a trickle for long, even one that is not cut
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile(online: None) -> Iterator[Hostile]:
    srv = Hostile()
    yield srv
    srv.close()


def _cut_then_change(srv: Hostile | Loopback, first: bytes, second: bytes, url: str) -> None:
    """The first download is cut a third of the way in; then the server holds another file."""
    cut = len(first) // 3
    if isinstance(srv, Hostile):
        srv.data, srv.cut_after = first, cut
    else:
        srv.files["/w/model.pth"], srv.cut_after = first, cut
    with pytest.raises(WeightsError, match="connection closed"):
        resolve_weights(None, None, weights=url, progress=False)
    if isinstance(srv, Hostile):
        srv.data, srv.cut_after = second, None
    else:
        srv.files["/w/model.pth"], srv.cut_after = second, None


# --- 1. a resumed download is never spliced from two files -----------------------------------------


def test_resume_without_validators_starts_over_instead_of_splicing(server: Loopback, online: None) -> None:
    """The issue's case: the first answer (no ETag, no Last-Modified) is cut; the resume would get
    the other bytes of a changed file.  Nothing proves the part is of that file: start over."""
    first, second = _checkpoint(0), _checkpoint(1)
    assert len(first) == len(second) and first != second
    url = server.base + "/w/model.pth"
    _cut_then_change(server, first, second, url)
    path = resolve_weights(None, None, weights=url, progress=False)
    assert path.read_bytes() == second  # the whole new file, not first[:n] + second[n:]
    assert server.gets("/w/model.pth") == [None, None]  # the second request asked for all of it
    assert torch.equal(read_checkpoint(path)[0]["weight"], torch.load(io.BytesIO(second))["weight"])


def test_resume_sends_if_range_and_continues_the_same_file(hostile: Hostile) -> None:
    data = _checkpoint(0)
    hostile.etag = '"v1"'
    _cut_then_change(hostile, data, data, hostile.url)
    path = resolve_weights(None, None, weights=hostile.url, progress=False)
    assert path.read_bytes() == data
    resume = hostile.requests[-1]
    assert resume["Range"] == f"bytes={len(data) // 3}-" and resume["If-Range"] == '"v1"'
    assert len(hostile.requests) == 2  # only the missing bytes were fetched


def test_changed_file_behind_if_range_is_fetched_whole(hostile: Hostile) -> None:
    """An honest server answers a stale If-Range with the whole new file (200)."""
    first, second = _checkpoint(0), _checkpoint(1)
    hostile.last_modified = "Wed, 01 Jan 2025 00:00:00 GMT"
    _cut_then_change(hostile, first, second, hostile.url)
    hostile.last_modified = "Thu, 02 Jan 2025 00:00:00 GMT"
    assert resolve_weights(None, None, weights=hostile.url, progress=False).read_bytes() == second
    assert hostile.requests[-1]["If-Range"] == "Wed, 01 Jan 2025 00:00:00 GMT"


@pytest.mark.parametrize(
    "lie",
    [
        {"ETag": '"v2"'},  # the range of another file, which says so
        {"ETag": '"v1"', "Content-Range": "bytes {start}-9999/10000"},  # a file of another size
        {"ETag": '"v1"', "Content-Range": "bytes 0-{last}/{size}"},  # not the range asked for
    ],
    ids=["other-etag", "other-size", "other-range"],
)
def test_a_lying_206_is_not_spliced(hostile: Hostile, lie: dict[str, str]) -> None:
    """The server ignores If-Range and sends the range of the new file: the answer does not
    continue the part (RFC 9110 section 14.4), so the download starts over from byte 0."""
    first, second = _checkpoint(0), _checkpoint(1)
    hostile.etag = '"v1"'
    _cut_then_change(hostile, first, second, hostile.url)
    hostile.etag, hostile.honour_if_range = '"v2"', False
    start = len(first) // 3
    hostile.lie = {k: v.format(start=start, last=len(second) - 1, size=len(second)) for k, v in lie.items()}
    assert resolve_weights(None, None, weights=hostile.url, progress=False).read_bytes() == second
    assert "Range" not in hostile.requests[-1]  # asked again, for the whole file


def test_with_a_known_hash_a_spliced_file_fails_and_is_fetched_again(
    server: Loopback, online: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest entry has a sha256: the resume is plain (the hash decides), the spliced file
    fails the hash and is fetched again from zero, and only the right file is cached."""
    good, other = _checkpoint(0), _checkpoint(1)
    monkeypatch.setenv("UPSCALE_MANIFEST", str(write_manifest(
        tmp_path / "m.json", "fsrcnn", 2, entry_for(good, [{"url": server.base + "/w/model.pth"}], file="model.pth")
    )))
    server.files["/w/model.pth"], server.cut_after = good, len(good) // 3
    with pytest.raises(WeightsError, match="connection closed"):
        resolve_weights("fsrcnn", 2, progress=False)
    server.files["/w/model.pth"], server.cut_after = other, None  # a mirror that serves other bytes
    with pytest.raises(WeightsError, match="wrong file"):
        resolve_weights("fsrcnn", 2, progress=False)
    assert not (cache_dir() / "model.pth").exists() and not (cache_dir() / "model.pth.part").exists()
    assert server.gets("/w/model.pth")[1:] == [f"bytes={len(good) // 3}-", None]
    server.files["/w/model.pth"] = good
    assert resolve_weights("fsrcnn", 2, progress=False).read_bytes() == good


# --- 1b. the record beside a download, and "unverified" in `upscale models` ------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    models_cmd.register(app)
    return app


def test_download_record_and_unverified_in_models(
    hostile: Hostile, cli: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_cmd, "model_rows", list)  # the zoo's rows (test_loader) take seconds to build
    data = _checkpoint(0)
    hostile.data, hostile.etag, hostile.last_modified = data, '"v1"', "Wed, 01 Jan 2025 00:00:00 GMT"
    path = resolve_weights(None, None, weights=hostile.url, progress=False)
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record == {"url": hostile.url, "etag": '"v1"', "last_modified": "Wed, 01 Jan 2025 00:00:00 GMT",
                      "size": len(data), "verified": False}
    digest = hashlib.sha256(data).hexdigest()
    named = hostile.url.replace("model.pth", f"model-{digest[:8]}.pth")  # torch.hub-style: checked
    checked = resolve_weights(None, None, weights=named, progress=False)
    assert json.loads(checked.with_name(checked.name + ".json").read_text())["verified"] is True
    assert not list(cache_dir().glob("urls/*/*.part*"))

    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    downloads = {r["url"]: r for r in json.loads(result.stdout) if r["weights"] == "downloaded"}
    assert downloads[hostile.url]["verified"] is False and downloads[hostile.url]["path"] == str(path)
    assert downloads[hostile.url]["etag"] == '"v1"' and downloads[hostile.url]["size"] == len(data)
    assert downloads[named]["verified"] is True
    table = CliRunner().invoke(cli, ["models"], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    line = next(x for x in table.stdout.splitlines() if "model.pth" in x)
    assert "unverified" in line
    assert "unverified" not in next(x for x in table.stdout.splitlines() if f"model-{digest[:8]}.pth" in x)


def test_a_file_cached_without_a_record_is_listed_unverified() -> None:
    """A download made before records existed: nothing vouches for it."""
    folder = cache_dir() / "urls" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "old.pth").write_bytes(b"x" * 10)
    (folder / "old.pth.lock").write_text("")
    assert [(d["file"], d["url"], d["verified"]) for d in url_downloads()] == [("old.pth", None, False)]


# --- 2. a deadline and a minimum rate on every download --------------------------------------------


def _limits(monkeypatch: pytest.MonkeyPatch, timeout: float, min_rate: float, window: float) -> None:
    monkeypatch.setenv("UPSCALE_DOWNLOAD_TIMEOUT", str(timeout))
    monkeypatch.setenv("UPSCALE_DOWNLOAD_MIN_RATE", str(min_rate))
    monkeypatch.setenv("UPSCALE_DOWNLOAD_RATE_WINDOW", str(window))


def _no_part_left() -> None:
    assert not [p for p in cache_dir().rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_a_trickling_server_ends_with_one_line_and_exit_3(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A byte every 0.5 s never trips a socket timeout; the minimum rate ends it."""
    hostile.data, hostile.byte_delay = _checkpoint(0)[:40], 0.5
    _limits(monkeypatch, timeout=60, min_rate=1000, window=0.4)
    began = time.monotonic()
    code, _, err = run([make_png(tmp_path / "a.png"), "--weights", hostile.url, "-q"], capfd)
    assert time.monotonic() - began < 5
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and hostile.url in lines[0] and "UPSCALE_DOWNLOAD_MIN_RATE" in lines[0], err
    assert "1000 bytes/s" in lines[0]
    _no_part_left()
    assert not (tmp_path / "a_x4.png").exists()


def test_the_deadline_ends_a_download_that_is_slow_but_steady(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile.data, hostile.byte_delay = _checkpoint(0), 0.002  # ~500 bytes/s: above the rate, for a minute
    _limits(monkeypatch, timeout=0.8, min_rate=10, window=0.2)
    began = time.monotonic()
    with pytest.raises(WeightsError, match=r"cannot download it \(took longer than 0\.8 s.*UPSCALE_DOWNLOAD_TIMEOUT"):
        resolve_weights(None, None, weights=hostile.url, progress=False)
    assert time.monotonic() - began < 3
    _no_part_left()


def test_a_server_that_trickles_its_headers_is_cut_too(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status line a byte at a time: the read is blocked inside http.client, and still ends."""
    hostile.data, hostile.header_delay = _checkpoint(0), 0.2
    _limits(monkeypatch, timeout=1.0, min_rate=1000, window=0.5)
    began = time.monotonic()
    with pytest.raises(WeightsError, match=r"UPSCALE_DOWNLOAD_(MIN_RATE|TIMEOUT)"):
        resolve_weights(None, None, weights=hostile.url, progress=False)
    assert time.monotonic() - began < 3


def test_manifest_sources_have_the_limits_too(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = _checkpoint(0)
    hostile.data, hostile.byte_delay = data, 0.5
    monkeypatch.setenv("UPSCALE_MANIFEST", str(write_manifest(
        tmp_path / "m.json", "fsrcnn", 2, entry_for(data, [{"url": hostile.url}], file="model.pth"))))
    _limits(monkeypatch, timeout=60, min_rate=1000, window=0.3)
    with pytest.raises(WeightsError, match=r"cannot get model\.pth.*slower than 1000 bytes/s.*_DOWNLOAD_MIN_RATE"):
        resolve_weights("fsrcnn", 2, progress=False)
    _no_part_left()


@pytest.mark.parametrize("var", [f"UPSCALE_DOWNLOAD_{v}" for v in ("TIMEOUT", "MIN_RATE", "RATE_WINDOW")])
def test_bad_limits_are_usage_errors(hostile: Hostile, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    hostile.data = _checkpoint(0)
    monkeypatch.setenv(var, "soon")
    for weights in (hostile.url, "hf://org/w/conv.pth"):
        with pytest.raises(UsageError, match=var):
            resolve_weights(None, None, weights=weights, progress=False)
    assert hostile.requests == []


def test_hf_downloads_have_the_deadline(hub: Loopback, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    hub.files["/org/w/resolve/main/conv.pth"] = _checkpoint(0)
    hub.delay = 0.6  # every answer waits (the hub client's own read timeout is 10 s)
    monkeypatch.setenv("UPSCALE_DOWNLOAD_TIMEOUT", "0.2")
    began = time.monotonic()
    with pytest.raises(WeightsError, match=r"hf://org/w/conv\.pth: cannot fetch it \(took longer than 0\.2 s"):
        resolve_weights(None, None, weights="hf://org/w/conv.pth", progress=False)
    assert time.monotonic() - began < 1.2  # the transfer itself needs three answers: 1.8 s
    for worker in threading.enumerate():  # the abandoned transfer ends here, not in another test
        if worker.name == "hf-download":
            worker.join(10)


# --- 3. Hugging Face's own logs under -q -----------------------------------------------------------


def _flaky(srv: Loopback, failures: int) -> None:
    """The first ``failures`` requests for a file get a 503, which huggingface_hub retries."""
    base = srv.httpd.RequestHandlerClass
    left = [failures]

    class Flaky(base):  # type: ignore[misc, valid-type]
        def _reply(self, with_body: bool) -> None:
            if left[0] > 0 and "/resolve/" in self.path:
                left[0] -= 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super()._reply(with_body)

    srv.httpd.RequestHandlerClass = Flaky


@pytest.mark.parametrize("quiet", [True, False])
def test_hub_retries_are_silent_when_quiet(
    hub: Loopback, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, quiet: bool  # noqa: F811
) -> None:
    """huggingface_hub logs its retries (on stderr, through logging's last-resort handler, in a
    plain process; pytest's own log capture here): none of it when the caller asked for quiet."""
    data = _checkpoint(0)
    hub.files["/org/w/resolve/main/conv.pth"] = data
    _flaky(hub, 2)  # the hub client retries the first quietly, then logs each retry
    capfd.readouterr()
    path = resolve_weights(None, None, weights="hf://org/w/conv.pth", progress=not quiet)
    assert path.read_bytes() == data
    hub_logs = [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]
    if quiet:
        assert hub_logs == [] and capfd.readouterr().err == ""
    else:  # the same run unquiet: the retry really happened, and is logged
        assert any("Retrying" in m for m in hub_logs), hub_logs


def test_hub_errors_still_come_through_when_quiet(hub: Loopback, tmp_path: Path,  # noqa: F811
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([make_png(tmp_path / "a.png"), "--weights", "hf://org/w/missing.pth", "-q"], capfd)
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "hf://org/w/missing.pth: cannot fetch it" in lines[0]


# --- 4. pickles of protocols 4 and 5 ---------------------------------------------------------------


class _CallsCode:
    """Pickles as a call of ``os.system`` (pickling it runs nothing)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def _pickled_file(path: Path, obj: object, protocol: int, layout: str) -> Path:
    raw = pickle.dumps(obj, protocol=protocol)
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", raw)
            archive.writestr("archive/version", "3\n")
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("protocol", [4, 5])
def test_a_code_calling_pickle_of_protocol_4_or_5_is_refused_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], protocol: int, layout: str
) -> None:
    marker = tmp_path / "MARKER"
    evil = _pickled_file(tmp_path / "evil.pth", {"weight": _CallsCode(marker)}, protocol, layout)
    code, _, err = run([make_png(tmp_path / "a.png"), "--weights", evil, "-q"], capfd)
    assert code == 3
    assert err.strip().splitlines() == [f"error: {evil}: refused: the pickle calls os.system; "
                                        "pickled code is never executed"]
    assert "Warning" not in err and not marker.exists()


def test_unsupported_pickle_protocol_is_one_line(tmp_path: Path) -> None:
    raw = pickle.dumps({"a": 1}, protocol=4)
    path = tmp_path / "future.pth"
    path.write_bytes(b"\x80\x06" + raw[2:])
    with pytest.raises(WeightsError, match=r"future\.pth: unsupported pickle protocol 6"):
        read_checkpoint(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_legitimate_files_of_newer_protocols_load_without_warnings(tmp_path: Path, protocol: int,
                                                                    zip_format: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))
    sd_path, model_path = tmp_path / "sd.pth", tmp_path / "model.pth"
    torch.save(net.state_dict(), sd_path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    torch.save(net, model_path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (sd_path, model_path):
            tensors, _ = read_checkpoint(path)
            assert tensors.keys() == net.state_dict().keys()
            for name, value in net.state_dict().items():
                assert torch.equal(tensors[name], value)


# --- 5. user manifests are checked against the schema ----------------------------------------------


SCHEMA = json.loads((REPO / "upscale_cli" / "manifest_schema.json").read_text(encoding="utf-8"))
SHIPPED = json.loads((REPO / "weights_manifest.json").read_text(encoding="utf-8"))


def test_an_entry_without_sources_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], cli: typer.Typer
) -> None:
    entry = entry_for(b"x", [{"url": "https://example.org/conv.pth"}])
    del entry["sources"]
    path = write_manifest(tmp_path / "mine.json", "fsrcnn", 2, entry)
    monkeypatch.setenv("UPSCALE_MANIFEST", str(path))
    code, _, err = run([make_png(tmp_path / "a.png"), "--model", "fsrcnn", "--scale", "2", "-q"], capfd)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {path}: fsrcnn x2: 'sources' is required"]
    listed = CliRunner().invoke(cli, ["models"])
    assert listed.exit_code == 2 and "fsrcnn x2: 'sources' is required" in listed.stderr


BROKEN = {
    "no sources": (lambda e: e.pop("sources"), "fsrcnn x2: 'sources' is required"),
    "ftp": (lambda e: e.update(sources=[{"url": "ftp://x/y"}]),
            "fsrcnn x2: sources[0].url: 'ftp://x/y' does not match"),
    "no revision": (lambda e: e.update(sources=[{"hf": {"repo_id": "o/r", "filename": "x"}}]),
                    "fsrcnn x2: sources[0].hf: 'revision' is required"),
    "empty source": (lambda e: e.update(sources=[{}]), "fsrcnn x2: sources[0]: fits none of the allowed forms"),
    "no sources at all": (lambda e: e.update(sources=[]), "fsrcnn x2: sources: must hold at least 1 item"),
    "neither hash": (lambda e: e.pop("sha256"), "fsrcnn x2: fits none of the allowed forms ('sha256' is required"),
    "both hashes": (lambda e: e.update(sha256_prefix="1af70e2c"), "fsrcnn x2: fits none of the allowed forms"),
    "upper-case hash": (lambda e: e.update(sha256="A" * 64), "fsrcnn x2: sha256: 'AAAA"),
    "size zero": (lambda e: e.update(size=0), "fsrcnn x2: size: must be at least 1"),
    "size bool": (lambda e: e.update(size=True), "fsrcnn x2: size: must be an integer"),
    "unknown field": (lambda e: e.update(sourcez=[]), "fsrcnn x2: 'sourcez' is not an allowed field"),
    "bad format": (lambda e: e.update(format="onnx"), "fsrcnn x2: format: must be one of"),
    "paper psnr": (lambda e: e.update(paper={"source": "x", "Set5": {"psnr": 70}}),
                   "fsrcnn x2: paper.Set5.psnr: must be at most 60"),
    "companion": (lambda e: e.update(companions=[{"file": "g.json", "sources": [{"url": "https://x/g"}]}]),
                  "fsrcnn x2: companions[0]: 'sha256' is required"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_schema_problems_are_named_and_agree_with_jsonschema(case: str, tmp_path: Path) -> None:
    change, message = BROKEN[case]
    broken = copy.deepcopy(SHIPPED)
    change(broken["models"]["fsrcnn"]["2"])
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(broken)  # the reference agrees it is broken
    path = tmp_path / "m.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_manifest(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_the_shipped_manifest_and_valid_variants_pass() -> None:
    assert schema_problem(SHIPPED, SCHEMA) is None
    variant = copy.deepcopy(SHIPPED)
    entry = variant["models"]["fsrcnn"]["2"]
    entry["sha256_prefix"] = entry.pop("sha256")[:8]
    entry["sources"] = [{"hf": {"repo_id": "o/r", "filename": "x.pth", "revision": "main"}}]
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(variant) and schema_problem(variant, SCHEMA) is None


def test_the_checker_knows_every_keyword_of_the_schema() -> None:
    """A keyword the checker does not know would be ignored silently: it refuses instead."""
    with pytest.raises(ValueError, match="uniqueItems"):
        schema_problem([1], {"type": "array", "uniqueItems": True})

