"""Finding, fetching, verifying and caching weights files.

Order of resolution (:func:`resolve_weights`): an explicit ``--weights`` (local path, http(s)
URL or ``hf://repo_id/path/in/repo[@revision]``), then the cache, then the manifest's sources
in order.  URL sources are streamed onto a ``.part`` file beside the target, resumed with an
HTTP ``Range`` request when one is left over, and moved into place (``os.replace``, atomic) only
after the size and sha256 check passes.  Hugging Face sources go through
:func:`huggingface_hub.hf_hub_download` and its own cache.  ``UPSCALE_OFFLINE=1`` or
``HF_HUB_OFFLINE=1`` forbids any network access: offline, Hugging Face's cache is only looked
up (:func:`huggingface_hub.try_to_load_from_cache`), the hub client never builds a request.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from . import __version__
from .errors import UsageError, WeightsError
from .weights import manifest_entry, sha256_file

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

    def problem(self, path: Path) -> str | None:
        """``None`` if ``path`` is the expected file, else what is wrong with it."""
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            return f"size {size} bytes, expected {self.size}"
        if self.sha256 is None and self.sha256_prefix is None:
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


def _open(url: str, start: int):  # -> http.client.HTTPResponse
    headers = {"User-Agent": f"upscale-cli/{__version__}", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def fetch_url(url: str, dest: Path, expected: Expected, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a left-over part.

    The part is continued with ``Range: bytes=N-`` when the server answers 206 (and restarted
    when it answers 200); the finished part must pass ``expected`` and is then moved into place
    atomically.  A resumed part that fails the check is discarded and fetched once more from
    the start.  Raises :class:`_BadBytes` when the server's bytes fail the check, and
    :data:`TRANSPORT_ERRORS` for transport errors (the part is kept for a later resume).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = _download(url, part, expected, progress)
    problem = expected.problem(part)
    if problem is not None and resumed:  # the left-over part may be of another file: from zero
        part.unlink()
        _download(url, part, expected, progress)
        problem = expected.problem(part)
    if problem is not None:
        part.unlink()
        raise _BadBytes(problem)
    os.replace(part, dest)


def _download(url: str, part: Path, expected: Expected, progress: bool) -> bool:
    """Fetch into ``part``, continuing what it holds; return whether it was a resume."""
    start = part.stat().st_size if part.exists() else 0
    if expected.size is not None and start > expected.size:
        part.unlink()
        start = 0
    try:
        _stream(url, part, start, expected.size, progress)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:  # 416 on a resume: the part already holds every byte
            raise
    return start > 0


def _stream(url: str, part: Path, start: int, size: int | None, progress: bool) -> None:
    with _open(url, start) as resp:
        if start and (resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {start}-")):
            start = 0  # the server ignored the Range header (or answered another range): start over
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        console = _console()
        with _progress_bar(console, progress) as bar, open(part, "ab" if start else "wb") as out:
            task = bar.add_task(part.name[: -len(".part")], total=total, completed=start)
            received = 0
            while block := resp.read(CHUNK):
                out.write(block)
                received += len(block)
                bar.update(task, advance=len(block))
    if length is not None and received < int(length):  # cut short: keep the part for a resume
        raise ConnectionError(f"connection closed after {start + received} of {total} bytes")


def _hf_cache() -> str:
    """Hugging Face's cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return str(Path(home).expanduser() / "hub")


def fetch_hf(
    repo_id: str, filename: str, revision: str | None, expected: Expected, *, local_only: bool = False, progress: bool = True
) -> Path:
    """``hf_hub_download`` into Hugging Face's cache (``HF_ENDPOINT`` honoured), then verify.

    A cached file that fails the check is fetched again once (``force_download``); a download
    that still fails raises :class:`_BadBytes`.  ``progress=False`` silences the hub's bars.
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return _fetch_hf(repo_id, filename, revision, expected, local_only)
    finally:
        if silence:
            enable_progress_bars()


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
    the sha256 prefix its file name carries, if any (torch.hub convention)."""
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
            found = try_to_load_from_cache(hf["repo_id"], hf["filename"], cache_dir=_hf_cache(), revision=hf["revision"])
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
        dest.unlink()
    offline = is_offline()
    failures: list[str] = []
    for source in entry["sources"]:
        if "package" in source:
            continue  # checked first, in resolve_entry
        where = _describe(source)
        try:
            if "hf" in source:
                hf = source["hf"]
                return fetch_hf(hf["repo_id"], hf["filename"], hf["revision"], expected, local_only=offline, progress=progress)
            if offline:
                continue
            fetch_url(source["url"], dest, expected, progress)
            return dest
        except _BadBytes as err:
            warn(f"{where} served a file that fails its check ({err}); trying the next source")
            failures.append(f"{where}: wrong file ({err})")
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
    return resolve_entry(entry, f"{spec.name} x{scale}", progress)
