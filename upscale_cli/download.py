"""Finding, fetching, verifying and caching weights files.

Order of resolution (:func:`resolve_weights`): an explicit ``--weights`` (local path, http(s)
URL or ``hf://repo_id/path/in/repo[@revision]``), then the cache, then the manifest's sources
in order.  URL sources are streamed onto a ``.part`` file beside the target, resumed with an
HTTP ``Range`` request when one is left over and something proves the rest is of the same file
(the sha256, or else the server's validators through ``If-Range``), and moved into place
(``os.replace``, atomic) only after the size and sha256 check passes; ``<file>.json`` beside
it records the URL, the server's validators and whether a hash verified it.  Every transfer
has a deadline and a minimum rate (:class:`Limits`).  Hugging Face sources go through
:func:`huggingface_hub.hf_hub_download` and its own cache.  ``UPSCALE_OFFLINE=1`` or
``HF_HUB_OFFLINE=1`` forbids any network access: offline, Hugging Face's cache is only looked
up (:func:`huggingface_hub.try_to_load_from_cache`), the hub client never builds a request.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from . import __version__
from .errors import UsageError, WeightsError
from .files import atomic_path
from .weights import load_manifest, manifest_entry, sha256_file

CHUNK = 1 << 16
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)
"""What a failed transfer raises (``urllib.error.URLError`` is an ``OSError``)."""
TIMEOUT_S = 30.0
_TRUE = {"1", "true", "yes", "on"}
_PREFIXED_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def cache_dir() -> Path:
    """The weights cache: ``$UPSCALE_CACHE``, else ``$XDG_CACHE_HOME/upscale-cli``, else
    ``~/.cache/upscale-cli``."""
    if os.environ.get("UPSCALE_CACHE"):
        return Path(os.environ["UPSCALE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "upscale-cli"


def is_offline() -> bool:
    """Whether ``UPSCALE_OFFLINE`` or ``HF_HUB_OFFLINE`` forbids network access (read per call)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("UPSCALE_OFFLINE", "HF_HUB_OFFLINE"))


def _console() -> Console:
    """Where progress and warnings go: standard error (stdout stays for results)."""
    return Console(stderr=True)


def warn(message: str) -> None:
    """One warning line on standard error."""
    _console().print(f"[yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Expected:
    """What a weights file must be: its size and its sha256 (full, or a prefix of it)."""

    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Expected:
        return cls(entry.get("size"), entry.get("sha256"), entry.get("sha256_prefix"))

    @classmethod
    def from_name(cls, name: str) -> Expected:
        """The torch.hub convention: ``name-<8+ hex digits of the sha256>.ext``."""
        found = _PREFIXED_NAME.search(name)
        return cls(sha256_prefix=found.group(1) if found else None)

    @property
    def checks_bytes(self) -> bool:
        """Whether a hash decides (a spliced or damaged file fails it), not the server's word."""
        return self.sha256 is not None or self.sha256_prefix is not None

    def problem(self, path: Path) -> str | None:
        """``None`` if ``path`` is the expected file, else what is wrong with it."""
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            return f"size {size} bytes, expected {self.size}"
        if not self.checks_bytes:
            return None
        digest = sha256_file(path)
        if self.sha256 is not None and digest != self.sha256:
            return f"sha256 {digest[:16]}..., expected {self.sha256[:16]}..."
        if self.sha256_prefix is not None and not digest.startswith(self.sha256_prefix):
            return f"sha256 {digest[:16]}..., expected {self.sha256_prefix}..."
        return None


class _BadBytes(Exception):
    """A source served a file that fails its check."""


def _progress_bar(console: Console, enabled: bool):  # -> rich.progress.Progress
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


# --- limits: a deadline and a minimum rate on every transfer -------------------------------------

TIMEOUT_ENV = "UPSCALE_DOWNLOAD_TIMEOUT"
MIN_RATE_ENV = "UPSCALE_DOWNLOAD_MIN_RATE"
WINDOW_ENV = "UPSCALE_DOWNLOAD_RATE_WINDOW"


@dataclass(frozen=True)
class Limits:
    """How long one download may take, in seconds (``$UPSCALE_DOWNLOAD_TIMEOUT``, default 3600),
    and how slow it may get: under ``$UPSCALE_DOWNLOAD_MIN_RATE`` bytes/s (default 4096) over
    ``$UPSCALE_DOWNLOAD_RATE_WINDOW`` seconds (default 30).  0 turns the deadline or the rate off."""

    deadline: float = 3600.0
    min_rate: float = 4096.0
    window: float = 30.0
    until: float | None = None
    """The ``time.monotonic()`` the deadline falls at, once the download has started."""

    @classmethod
    def from_env(cls) -> Limits:
        """The limits the environment sets, read per download; a bad value is a usage error."""
        return cls(
            _env_number(TIMEOUT_ENV, cls.deadline),
            _env_number(MIN_RATE_ENV, cls.min_rate),
            _env_number(WINDOW_ENV, cls.window, positive=True),
        )

    def started(self) -> Limits:
        """These limits for a download that starts now: its transfers share one deadline."""
        return replace(self, until=time.monotonic() + self.deadline if self.deadline else None)


def _env_number(var: str, default: float, positive: bool = False) -> float:
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UsageError(f"{var}={text!r}: expected a {'positive' if positive else 'non-negative'} number")
    return value


class LimitExceeded(TimeoutError):
    """A transfer ran past its deadline or fell under the minimum rate (see :class:`Limits`)."""


class _Watch:
    """Enforces :class:`Limits` on one transfer from a timer thread.

    Past the deadline, or when fewer than ``min_rate * window`` bytes arrived in the last
    window, it shuts the transfer's sockets down: a read blocked anywhere (status line,
    headers, body) then returns, which a socket timeout alone never brings about when a server
    trickles a byte every few seconds.  :meth:`check` raises :class:`LimitExceeded` afterwards.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.received = 0
        self.why: str | None = None
        self._sockets: list[socket.socket] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def connection(self, cls: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        """``cls``, its sockets recorded as they connect so that this watch can cut them (urllib
        drops the connection's own reference once the headers are in; the body's reader keeps
        the socket open)."""
        sockets = self._sockets

        class Watched(cls):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                sockets.append(self.sock)

        return Watched

    def check(self) -> None:
        if self.why is not None:
            raise LimitExceeded(self.why)

    def _run(self) -> None:
        limits = self.limits.started() if self.limits.until is None else self.limits
        mark, seen = time.monotonic(), 0
        tick = min(1.0, limits.window / 4, (limits.deadline or math.inf) / 4)
        while not self._done.wait(tick):
            now = time.monotonic()
            if self.why is None and limits.until is not None and now > limits.until:
                self.why = f"took longer than {limits.deadline:g} s, the limit {TIMEOUT_ENV} sets"
            elif self.why is None and now - mark >= limits.window:
                if self.received - seen < limits.min_rate * (now - mark):
                    self.why = (f"slower than {limits.min_rate:g} bytes/s over {limits.window:g} s, "
                                f"the limit {MIN_RATE_ENV} sets")
                mark, seen = now, self.received
            if self.why is not None:
                self._cut()

    def _cut(self) -> None:
        for sock in self._sockets:
            with suppress(OSError):  # closed already (its descriptor is -1 then, never another file's)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket, under any TLS layer


def _opener(watch: _Watch) -> urllib.request.OpenerDirector:
    """``urllib``'s default opener (proxies, redirects, TLS), its connections watched."""

    class WatchedHandler(urllib.request.AbstractHTTPHandler):
        def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
            return super().do_open(watch.connection(http_class), req, **kwargs)

    class Http(WatchedHandler, urllib.request.HTTPHandler):
        pass

    class Https(WatchedHandler, urllib.request.HTTPSHandler):
        pass

    return urllib.request.build_opener(Http, Https)


# --- validators: what proves a resumed part continues the same file -------------------------------

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Validators:
    """What a server said of the file at ``url`` (RFC 9110 section 8.8): ETag, Last-Modified, size."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None

    @classmethod
    def of(cls, url: str, resp: Any) -> Validators:
        """The validators of a 200 or 206 answer; the size is the Content-Range total of a 206."""
        found = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if resp.status == 206:
            size = int(found.group(3)) if found and found.group(3) != "*" else None
        else:
            size = resp.length  # http.client's parse of Content-Length (None when absent or bad)
        return cls(url, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), size)

    def if_range(self) -> str | None:
        """The ``If-Range`` value: the ETag unless weak (RFC 9110 section 13.1.5), else Last-Modified."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def continued_by(self, resp: Any, start: int) -> bool:
        """Whether ``resp`` is the rest of this file from byte ``start`` (RFC 9110 section 14.4):
        206, a Content-Range from ``start`` to the end of a file of this size, the same validators."""
        found = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if resp.status != 206 or found is None or int(found.group(1)) != start or self.size is None:
            return False
        now = Validators.of(self.url, resp)
        return (int(found.group(2)) == self.size - 1 and now.size == self.size
                and now.etag == self.etag and now.last_modified == self.last_modified)


def _sidecar(path: Path) -> Path:
    """Where the record of ``path`` lies: ``<path>.json``."""
    return path.with_name(path.name + ".json")


def _write_record(path: Path, validators: Validators, **extra: Any) -> None:
    with atomic_path(_sidecar(path)) as tmp:
        tmp.write_text(json.dumps({**asdict(validators), **extra}, indent=1), encoding="utf-8")


def _read_record(path: Path) -> dict[str, Any]:
    """The record beside ``path`` (``{}`` when absent or unreadable)."""
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_validators(path: Path) -> Validators | None:
    """The validators recorded beside ``path`` (``None`` when absent or not as written)."""
    record = _read_record(path)
    values = {f.name: record.get(f.name) for f in fields(Validators)}
    texts = all(isinstance(values[k], str | None) for k in ("etag", "last_modified"))
    size = values["size"]
    if not isinstance(values["url"], str) or not texts or not (size is None or type(size) is int):
        return None
    return Validators(**values)


def _discard(path: Path) -> None:
    """Remove ``path`` and its record."""
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


# --- transfers -----------------------------------------------------------------------------------


def _request(url: str, start: int, known: Validators | None) -> urllib.request.Request:
    headers = {"User-Agent": f"upscale-cli/{__version__}", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
        if known is not None and (validator := known.if_range()) is not None:
            headers["If-Range"] = validator
    return urllib.request.Request(url, headers=headers)


def fetch_url(url: str, dest: Path, expected: Expected, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a left-over part when safe.

    A part is continued (``Range``) only when something proves the rest is of the same file:
    the ``expected`` hash, checked at the end, or else the server's validators, recorded in
    ``dest.part.json`` by the first answer, sent back as ``If-Range`` and matched by the 206
    answer (:meth:`Validators.continued_by`); otherwise it starts over.  The finished part must
    pass ``expected`` and is then moved into place atomically, its record into ``dest.json``
    (``verified``: whether a hash decided).  A resumed part that fails the check is discarded
    and fetched once more from the start.  The transfers run under :class:`Limits`, one
    deadline for them all.  Raises
    :class:`_BadBytes` when the server's bytes fail the check, :class:`LimitExceeded` (the part
    removed) and :data:`TRANSPORT_ERRORS` for transport errors (the part kept for a resume).
    """
    limits = Limits.from_env().started()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = _download(url, part, expected, progress, limits)
    problem = expected.problem(part)
    if problem is not None and resumed:  # the left-over part may be of another file: from zero
        _discard(part)
        _download(url, part, expected, progress, limits)
        problem = expected.problem(part)
    if problem is not None:
        _discard(part)
        raise _BadBytes(problem)
    record = _read_validators(part) or Validators(url)
    os.replace(part, dest)
    _write_record(dest, record, verified=expected.checks_bytes)
    _sidecar(part).unlink(missing_ok=True)


def _download(url: str, part: Path, expected: Expected, progress: bool, limits: Limits) -> bool:
    """Fetch into ``part``, continuing what it holds when that is safe; return whether it was a resume."""
    known = _read_validators(part)
    start = part.stat().st_size if part.exists() else 0
    if start and not _may_resume(url, start, expected, known):
        _discard(part)
        start, known = 0, None
    try:
        _stream(url, part, start, known, progress, limits)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:
            raise
        if not (expected.checks_bytes or _holds_all(err, start, known)):  # past the end of another file
            _discard(part)
            _stream(url, part, 0, None, progress, limits)
            return False
    return start > 0


def _may_resume(url: str, start: int, expected: Expected, known: Validators | None) -> bool:
    """Whether a part of ``start`` bytes may be continued: a hash will check it, or the server's
    validators can prove the rest is of the same file."""
    if expected.size is not None and start > expected.size:
        return False
    if known is not None and (known.url != url or (known.size is not None and start > known.size)):
        return False
    return expected.checks_bytes or (known is not None and known.size is not None and known.if_range() is not None)


def _holds_all(err: urllib.error.HTTPError, start: int, known: Validators | None) -> bool:
    """A 416 answer to a resume: whether the part already holds the whole file it began."""
    found = re.fullmatch(r"bytes \*/(\d+)", (err.headers.get("Content-Range") or "").strip())
    return found is not None and known is not None and int(found.group(1)) == start == known.size


def _stream(url: str, part: Path, start: int, known: Validators | None, progress: bool, limits: Limits) -> None:
    """One transfer under ``limits``; a transfer they cut leaves no part behind."""
    with _Watch(limits) as watch:
        try:
            _transfer(url, part, start, known, progress, watch)
        except Exception:
            if watch.why is None:
                raise
            _discard(part)
            raise LimitExceeded(watch.why) from None


def _transfer(url: str, part: Path, start: int, known: Validators | None, progress: bool, watch: _Watch) -> None:
    """GET ``url`` into ``part``: its ``start`` bytes continued when the answer proves the rest is
    of the same file (with no ``known`` validators, a 206 from ``start`` is enough: a hash
    checks the file), else from byte 0 (asked again when the answer was a 206 of other bytes)."""
    opener = _opener(watch)
    for begin in (start, 0) if start else (0,):
        with opener.open(_request(url, begin, known), timeout=TIMEOUT_S) as resp:
            if begin and not (known.continued_by(resp, begin) if known else _starts_at(resp, begin)):
                if resp.status == 206:
                    continue  # a range of something else: ask for the whole file
                begin = 0  # a 200: the whole file (Range ignored, or If-Range did not match)
            if not begin:
                _write_record(part, Validators.of(url, resp))
            _copy(resp, part, begin, progress, watch)
            return


def _starts_at(resp: Any, start: int) -> bool:
    return resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {start}-")


def _copy(resp: Any, part: Path, start: int, progress: bool, watch: _Watch) -> None:
    """Stream the body of ``resp`` onto ``part`` (appended after ``start`` bytes, or from zero)."""
    length = resp.length
    total = start + length if length is not None else None
    with _progress_bar(_console(), progress) as bar, open(part, "ab" if start else "wb") as out:
        task = bar.add_task(part.name[: -len(".part")], total=total, completed=start)
        received = 0
        while block := resp.read1(CHUNK):
            out.write(block)
            received += len(block)
            watch.received += len(block)
            bar.update(task, advance=len(block))
    watch.check()
    if length is not None and received < length:  # cut short: keep the part for a resume
        raise ConnectionError(f"connection closed after {start + received} of {total} bytes")


def _hf_cache() -> str:
    """Hugging Face's cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    home = os.environ.get("HF_HOME") or str(Path(xdg) / "huggingface")
    return str(Path(home).expanduser() / "hub")


def fetch_hf(
    repo_id: str, filename: str, revision: str | None, expected: Expected, *,
    local_only: bool = False, progress: bool = True,
) -> Path:
    """``hf_hub_download`` into Hugging Face's cache (``HF_ENDPOINT`` honoured), then verify.

    A cached file that fails the check is fetched again once (``force_download``); a download
    that still fails raises :class:`_BadBytes`.  ``progress=False`` silences the hub itself
    (:func:`_hub_quiet`).  The download has the deadline of :class:`Limits`; its minimum rate
    is the hub's own read timeout (``HF_HUB_DOWNLOAD_TIMEOUT``).
    """
    limits = Limits.from_env()
    with _hub_quiet(not progress):
        if local_only:
            return _fetch_hf(repo_id, filename, revision, expected, local_only)
        return _before_deadline(lambda: _fetch_hf(repo_id, filename, revision, expected, local_only), limits)


@contextmanager
def _hub_quiet(quiet: bool) -> Iterator[None]:
    """With ``quiet``, nothing of huggingface_hub's own on stderr: no progress bars, no log
    records under ERROR (its "Retrying in 1s [Retry 1/5]"), no warnings.  Its errors still come
    back as exceptions, which the caller reports in one line."""
    if not quiet:
        yield
        return
    import logging
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    logger = logging.getLogger("huggingface_hub")
    level, bars = logger.level, not are_progress_bars_disabled()
    logger.setLevel(logging.ERROR)
    if bars:
        disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if bars:
            enable_progress_bars()


def _before_deadline(call: Callable[[], Path], limits: Limits) -> Path:
    """``call()`` in a daemon thread, given up (:class:`LimitExceeded`) past the deadline:
    huggingface_hub times out a silent read, but not a download that trickles."""
    if not limits.deadline:
        return call()
    outcome: list[Path | BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread as is
            outcome.append(err)

    worker = threading.Thread(target=run, name="hf-download", daemon=True)
    worker.start()
    worker.join(limits.deadline)
    if not outcome:
        raise LimitExceeded(f"took longer than {limits.deadline:g} s, the limit {TIMEOUT_ENV} sets")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _fetch_hf(repo_id: str, filename: str, revision: str | None, expected: Expected, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if local_only:
        # a cache lookup only: hf_hub_download(local_files_only=True) still builds request
        # headers, and recent huggingface_hub versions fetch their agent registry from the Hub
        # for that unless HF_HUB_OFFLINE was set before the process imported it
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache(), revision=revision)
        if not isinstance(cached, str):
            raise FileNotFoundError(f"hf://{repo_id}/{filename} is not in the Hugging Face cache {_hf_cache()}")
        problem = expected.problem(Path(cached))
        if problem is None:
            return Path(cached)
        raise _BadBytes(problem)
    for force in (False, True):
        path = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=_hf_cache(),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                force_download=force,
            )
        )
        problem = expected.problem(path)
        if problem is None:
            return path
    raise _BadBytes(problem)


def parse_hf(uri: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo/path/in/repo[@revision]`` -> (repo_id, filename, revision)."""
    rest = uri[len("hf://") :]
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or (revision is not None and not revision):
        raise UsageError(f"{uri}: expected hf://OWNER/REPO/PATH/IN/REPO[@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _user_weights(weights: str, progress: bool) -> Path:
    """``--weights``: a local file, an http(s) URL (cached by URL) or an ``hf://`` file."""
    if weights.startswith("hf://"):
        repo_id, filename, revision = parse_hf(weights)
        expected = Expected.from_name(filename)
        try:
            return fetch_hf(repo_id, filename, revision, expected, local_only=is_offline(), progress=progress)
        except _BadBytes as err:
            raise WeightsError(f"{weights}: {err}") from None
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - huggingface_hub raises many types
            raise WeightsError(f"{weights}: cannot fetch it ({_why(err)})") from None
    if re.match(r"^https?://", weights):
        return _url_weights(weights, progress)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    return path


def _url_weights(url: str, progress: bool) -> Path:
    """A ``--weights`` URL, cached under ``urls/<hash of the URL>/<file name>``; checked against
    the sha256 prefix its file name carries, if any (torch.hub convention).  With no prefix,
    nothing but the server's word vouches for the bytes: the record beside the file says so
    (``verified: false``), and ``upscale models`` lists it as unverified."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1].split("?", 1)[0]) or "weights"
    dest = cache_dir() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    expected = Expected.from_name(name)
    with locked(dest):
        if dest.is_file() and expected.problem(dest) is None:
            return dest
        if is_offline():
            raise WeightsError(f"{url}: offline and not cached; download it and pass the file, or put it at {dest}")
        try:
            fetch_url(url, dest, expected, progress)
        except _BadBytes as err:
            raise WeightsError(f"{url}: the file served fails its check ({err})") from None
        except TRANSPORT_ERRORS as err:
            raise WeightsError(f"{url}: cannot download it ({_why(err)})") from None
    return dest


_WORK_FILES = (".lock", ".part", ".part.json", ".tmp")


def url_downloads() -> list[dict[str, Any]]:
    """The files ``--weights URL`` put in the cache, each with its record: the URL, the server's
    validators, and ``verified`` -- whether a hash checked the bytes (the sha256 prefix of a
    torch.hub-style name) or only the server's word vouches for them (no record: unverified,
    unless the name carries a hash)."""
    root = cache_dir() / "urls"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        names = {p.name for p in folder.iterdir() if p.is_file()}
        for name in sorted(names):
            if name.startswith(".") or name.endswith(_WORK_FILES) or (name.endswith(".json") and name[:-5] in names):
                continue
            path = folder / name
            record = _read_record(path)
            rows.append(
                {
                    "file": name,
                    "path": str(path),
                    "url": record.get("url"),
                    "size": path.stat().st_size,
                    "etag": record.get("etag"),
                    "last_modified": record.get("last_modified"),
                    "verified": bool(record.get("verified", Expected.from_name(name).checks_bytes)),
                }
            )
    return rows


def _why(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def package_file(source: Mapping[str, Any]) -> Path:
    """The path of a ``{"package": "weights/NAME"}`` source: a file shipped in the package."""
    return Path(__file__).resolve().parent / source["package"]


def _describe(source: Mapping[str, Any]) -> str:
    if "url" in source:
        return source["url"]
    if "package" in source:
        return f"the installed package ({source['package']})"
    hf = source["hf"]
    return f"hf://{hf['repo_id']}/{hf['filename']}@{hf['revision']}"


def cached_path(entry: Mapping[str, Any]) -> Path:
    """Where the cache keeps the file of a manifest entry fetched from a URL."""
    return cache_dir() / entry["file"]


def is_cached(entry: Mapping[str, Any]) -> bool:
    """Cheap presence test (size only, no hashing) for ``upscale models``."""
    path = cached_path(entry)
    size = entry.get("size")
    if path.is_file() and (size is None or path.stat().st_size == size):
        return True
    for source in entry["sources"]:
        if "package" in source and package_file(source).is_file():
            return True
        if "hf" in source:
            from huggingface_hub import try_to_load_from_cache

            hf = source["hf"]
            found = try_to_load_from_cache(
                hf["repo_id"], hf["filename"], cache_dir=_hf_cache(), revision=hf["revision"]
            )
            if isinstance(found, str):
                return True
    return False


def resolve_entry(entry: Mapping[str, Any], what: str, progress: bool = True) -> Path:
    """The verified local file of manifest ``entry``: from the cache or its sources in order.

    ``what`` names the model in messages.  A cached file that fails the check is removed and
    fetched again; a source that serves wrong bytes is reported and the next one tried.  The
    entry's ``companions`` (entries of their own) are resolved into the same folder.
    """
    expected = Expected.of(entry)
    for source in entry["sources"]:  # shipped in the package: used in place, never copied
        if "package" in source:
            path = package_file(source)
            problem = expected.problem(path) if path.is_file() else "missing from this installation"
            if problem is None:
                return path
            warn(f"{what}: {path} fails its check ({problem}); trying the other sources")
    dest = cached_path(entry)
    with locked(dest):  # another process fetching the same file: wait, then use its result
        path = _resolve_entry(entry, dest, what, progress)
    for companion in entry.get("companions", ()):  # files read beside it (an MXNet graph ...)
        resolve_entry(companion, f"{what}, {companion['file']}", progress)
    return path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path.lock`` (POSIX ``flock``; no lock where unavailable)
    so that two processes never write the same ``.part``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve_entry(entry: Mapping[str, Any], dest: Path, what: str, progress: bool) -> Path:
    expected = Expected.of(entry)
    if dest.is_file():
        problem = expected.problem(dest)
        if problem is None:
            return dest
        warn(f"cached {dest} fails its check ({problem}); removing it and fetching it again")
        _discard(dest)
    offline = is_offline()
    failures: list[str] = []
    for source in entry["sources"]:
        if "package" in source:
            continue  # checked first, in resolve_entry
        where = _describe(source)
        try:
            if "hf" in source:
                hf = source["hf"]
                return fetch_hf(
                    hf["repo_id"], hf["filename"], hf["revision"], expected, local_only=offline, progress=progress
                )
            if offline:
                continue
            fetch_url(source["url"], dest, expected, progress)
            return dest
        except _BadBytes as err:
            warn(f"{where} served a file that fails its check ({err}); trying the next source")
            failures.append(f"{where}: wrong file ({err})")
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - network and hub errors of every kind
            failures.append(f"{where}: {_why(err)}")
    urls = " or ".join(_describe(s) for s in entry["sources"])
    cause = "offline (UPSCALE_OFFLINE/HF_HUB_OFFLINE set) and not cached" if offline else "; ".join(failures)
    raise WeightsError(f"cannot get {entry['file']} ({what}): {cause}; download {urls} and put it at {dest}")


def resolve_weights(name: str | None, scale: int | None, weights: str | None = None, progress: bool = True) -> Path:
    """The local, verified weights file for model ``name`` at ``scale``, or for ``weights``.

    ``weights`` (a path, URL or ``hf://`` URI) wins when given; otherwise the manifest entry of
    the named model is resolved (see :func:`resolve_entry`).  Raises
    :class:`~upscale_cli.errors.UsageError` for an unknown model or scale and
    :class:`~upscale_cli.errors.WeightsError` when no verified file can be had.
    """
    if weights is not None:
        return _user_weights(weights, progress)
    if name is None:
        raise UsageError("name a model or pass --weights FILE")
    from .models import get_spec

    spec = get_spec(name)
    scale = spec.scales[0] if scale is None else scale
    if scale not in spec.scales:
        raise UsageError(f"model {spec.name!r} exists for scales {list(spec.scales)}, not x{scale}")
    entry = manifest_entry(spec.name, scale)
    if entry is None:
        if spec.trainable_only:
            raise WeightsError(
                f"{spec.name} x{scale}: no verified public weights exist; pass a checkpoint with "
                f"--weights FILE, or train one with `upscale train {spec.name} --scale {scale}`"
            )
        raise WeightsError(f"{spec.name} x{scale}: no weights listed in the manifest; pass --weights FILE")
    try:
        return resolve_entry(entry, f"{spec.name} x{scale}", progress)
    except WeightsError as err:
        twins = packaged_twins(spec.name, scale)
        if not twins:
            raise
        raise WeightsError(
            f"{err}; or use {' or '.join(twins)}, the same network with in-house weights in the package"
        ) from None


def packaged_twins(name: str, scale: int) -> list[str]:
    """The other models whose manifest entry at ``scale`` ships in the package and has the same
    architecture and hyperparameters as model ``name``: what to run when its host is unreachable."""
    from .models import get_spec

    spec = get_spec(name)
    twins = []
    for other, entries in load_manifest()["models"].items():
        entry = entries.get(str(scale))
        if other == spec.name or entry is None or not any("package" in s for s in entry["sources"]):
            continue
        if entry["arch"] == spec.arch and entry.get("kwargs", {}) == dict(spec.kwargs):
            twins.append(other)
    return twins
