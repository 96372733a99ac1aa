"""Weights files: safe reading, our own safetensors export, the manifest, and state dicts
checked against (and recognised by) the registered architectures.

Reading never executes pickled code: torch files go through
``torch.load(..., weights_only=True, map_location="cpu")`` and safetensors files through
:mod:`safetensors`.  Checkpoints of other projects come wrapped in many ways (BasicSR's
``{"params_ema": ...}``, ``{"state_dict": ...}``, DataParallel's ``module.`` prefix); they are
unwrapped here so the rest of the program sees a plain state dict.  Fetching files is the job
of :mod:`upscale_cli.download`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import WeightsError
from .files import atomic_path

if TYPE_CHECKING:
    from .models.registry import Arch

FORMAT = "upscale-cli/1"
"""Value of the ``format`` metadata key of the safetensors files written by :func:`save_weights`."""

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "network", "generator")
"""Keys under which checkpoints nest their state dict, in order of preference (EMA first)."""

_PREFIXES = ("module.",)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    *,
    name: str,
    arch: str,
    kwargs: Mapping[str, Any],
    scales: list[int] | tuple[int, ...],
    scale: int,
    convention: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``state_dict`` as a safetensors file that :func:`~upscale_cli.loader.load_model`
    can load with no other information; return its sha256.

    The file's metadata (all strings, as safetensors requires) holds ``format``
    (:data:`FORMAT`), ``name``, ``arch``, ``kwargs`` (JSON), ``scales`` (JSON list),
    ``scale``, ``convention`` and ``extra`` (JSON).  Tensors are detached, moved to the CPU
    and made contiguous (copies, so tied weights are stored once each).  The write is atomic.
    """
    from safetensors.torch import save_file

    target = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {
        "format": FORMAT,
        "name": name,
        "arch": arch,
        "kwargs": json.dumps(dict(kwargs), sort_keys=True),
        "scales": json.dumps([int(s) for s in scales]),
        "scale": str(int(scale)),
        "convention": convention,
        "extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
    }
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return sha256_file(target)


def is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + n <= size


def _unpickling_error(path: Path, err: Exception) -> WeightsError:
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found is None:  # not an object the safe unpickler refused: a damaged or foreign file
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        cause = detail.group(1).strip() if detail else text.strip().splitlines()[0]
        return WeightsError(f"{path}: not a readable checkpoint ({cause})")
    return WeightsError(
        f"{path}: holds pickled Python objects ({found.group(1)}), not only tensors (a "
        "whole-model checkpoint?); pickled code is never executed here. Convert it where you "
        "trust its source: torch.save(model.state_dict(), 'weights.pth'), then pass that file"
    )


def unwrap_state_dict(obj: Any, key: str | None = None) -> tuple[dict[str, Tensor], str | None]:
    """Find the state dict inside a loaded checkpoint; return it and the wrapper key used.

    Wrappers are followed while the object holds no tensors at its top level and has one of
    :data:`WRAPPER_KEYS` (or ``key``, when given, which must exist) holding a mapping.
    ``module.`` prefixes are stripped and non-tensor entries dropped.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must be a mapping, not {type(obj).__name__}")
    used: str | None = None
    if key is not None:
        if not isinstance(obj.get(key), Mapping):
            raise KeyError(f"no state dict under key {key!r} (keys: {', '.join(map(str, list(obj)[:8]))})")
        obj, used = obj[key], key
    while not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, used = obj[inner], inner
    sd: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            name = str(k)
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
            sd[name] = v
    return sd, used


def read_checkpoint(
    path: str | os.PathLike[str], key: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    """Read a safetensors or torch checkpoint safely; return (state dict, safetensors metadata).

    The metadata is ``None`` for torch files (and for safetensors files without any).  ``key``
    forces a wrapper key (e.g. the manifest's ``"params_ema"``).  Raises
    :class:`~upscale_cli.errors.WeightsError` naming the file for anything unreadable,
    including pickled whole-model checkpoints, which are refused.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file")
    metadata: dict[str, str] | None = None
    try:
        if is_safetensors(p):
            from safetensors import safe_open

            with safe_open(str(p), framework="pt", device="cpu") as f:
                metadata = f.metadata() or None
                obj: Any = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        else:
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise _unpickling_error(p, err) from None
    except Exception as err:  # noqa: BLE001 - any reader failure is one user-facing line
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{p}: not a readable checkpoint ({cause})") from None
    try:
        sd, _ = unwrap_state_dict(obj, key)
    except (TypeError, KeyError) as err:
        raise WeightsError(f"{p}: {err.args[0]}") from None
    if not sd:
        raise WeightsError(f"{p}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))})")
    return sd, metadata


# --- the manifest -------------------------------------------------------------------------

MANIFEST_ENV = "UPSCALE_MANIFEST"
"""Environment variable naming another manifest file to use (tests, private model zoos)."""


def manifest_path() -> Path:
    """``$UPSCALE_MANIFEST``, else the manifest shipped in the package (a copy of the
    repository's ``weights_manifest.json``)."""
    override = os.environ.get(MANIFEST_ENV)
    return Path(override).expanduser() if override else Path(__file__).with_name("weights_manifest.json")


_MANIFESTS: dict[tuple[str, int], dict[str, Any]] = {}


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    """The parsed manifest (cached per file and modification time)."""
    p = manifest_path() if path is None else path
    try:
        key = (str(p), p.stat().st_mtime_ns)
        if key not in _MANIFESTS:
            _MANIFESTS[key] = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"{p}: cannot read the weights manifest ({err})") from None
    return _MANIFESTS[key]


def manifest_entry(name: str, scale: int, path: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of model ``name`` (registry name) at ``scale``, or ``None``."""
    return load_manifest(path)["models"].get(name, {}).get(str(int(scale)))


def manifest_entries(name: str, path: Path | None = None) -> dict[int, dict[str, Any]]:
    """Every manifest entry of model ``name``, by scale."""
    return {int(s): e for s, e in load_manifest(path)["models"].get(name, {}).items()}


# --- state dicts against architectures ----------------------------------------------------


def convert_for(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` in the family's own key layout (its ``convert_keys``, when it has one)."""
    return arch.convert_keys(dict(sd)) if arch.convert_keys is not None else dict(sd)


def _claim(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """``sd`` converted to ``arch``'s layout if the family recognises it as its own, else None."""
    if arch.matches is None:
        return None
    try:
        converted = convert_for(arch, sd)
        return converted if arch.matches(converted) else None
    except Exception:  # noqa: BLE001 - a converter or matcher choking on foreign keys means "no"
        return None


def _fits_exactly(arch: Arch, sd: Mapping[str, Tensor]) -> bool:
    """Whether the network built from the kwargs read off ``sd`` has exactly its keys and shapes."""
    try:
        kwargs, scale = infer_kwargs(arch, sd)
        with torch.device("meta"):
            net = arch.build(scale=scale or 4, **kwargs)
    except (WeightsError, ValueError, TypeError):
        return False
    return key_diff(net.state_dict(), sd) is None


def infer_kwargs(arch: Arch, sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    """Kwargs and scale (``None`` when unknown) of family ``arch`` read off a converted state
    dict; the family's defaults when it cannot read them.  WeightsError when the keys are not
    the family's at all."""
    if arch.infer_kwargs is None:
        return dict(arch.default_kwargs), None
    try:
        kwargs, scale = arch.infer_kwargs(sd)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        first = ", ".join(list(sd)[:4])
        raise WeightsError(f"not a checkpoint of the {arch.name} family: no key {err} (first keys: {first})") from None
    return dict(kwargs), scale


def key_diff(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], show: int = 3) -> str | None:
    """A one-line, readable difference between two state dicts' keys and shapes, or ``None``.

    Lists the first ``show`` missing, unexpected and shape-mismatched keys and how many
    there are of each.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f", ... {len(items) - show} more" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    return "; ".join(parts) or None


def load_strict(module: torch.nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    """``module.load_state_dict(sd, strict=True)`` with a readable WeightsError on mismatch."""
    diff = key_diff(module.state_dict(), sd)
    if diff is not None:
        raise WeightsError(f"{where}: weights do not fit the network ({diff})")
    module.load_state_dict(sd, strict=True)


def detect_arch(sd: Mapping[str, Tensor]) -> tuple[Arch, dict[str, Any], int | None]:
    """Recognise the family of a state dict from its keys alone.

    Each registered family converts the keys to its layout (``convert_keys``) and says whether
    they are its own (``matches``); kwargs and scale are read off the shapes
    (``infer_kwargs``).  When several families claim the keys, the one whose network has
    exactly these keys and shapes wins.  Raises WeightsError when none (or no single one) fits.
    """
    from .models import list_archs

    claims = [(arch, _claim(arch, sd)) for arch in list_archs()]
    found = [(arch, csd) for arch, csd in claims if csd is not None]
    if len(found) > 1:
        found = [(arch, csd) for arch, csd in found if _fits_exactly(arch, csd)] or found
    if len(found) != 1:
        names = ", ".join(a.name for a, _ in found) or "none"
        first = ", ".join(list(sd)[:4])
        raise WeightsError(
            f"cannot tell the architecture from the keys (families that claim them: {names}; "
            f"first keys: {first}); pass --arch NAME"
        )
    arch, csd = found[0]
    kwargs, scale = infer_kwargs(arch, csd)
    return arch, kwargs, scale
