"""Weights files: reading them (through :mod:`upscale_cli.formats`, which never executes code
from a file), our own safetensors export, the manifest, and state dicts checked against a
network.  Fetching files is the job of :mod:`upscale_cli.download`; recognising which network
a state dict is for, of :mod:`upscale_cli.models.detect`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import UsageError, WeightsError
from .files import atomic_path
from .formats import read as read_any

if TYPE_CHECKING:
    from .models.registry import Arch

FORMAT = "upscale-cli/1"
"""Value of the ``format`` metadata key of the safetensors files written by :func:`save_weights`."""

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


def read_checkpoint(
    path: str | os.PathLike[str], key: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    """Read a weights file of any supported format (:mod:`upscale_cli.formats`) safely;
    return (state dict, safetensors metadata or ``None``).

    ``key`` forces a wrapper key of torch files (e.g. the manifest's ``"params_ema"``).  Raises
    :class:`~upscale_cli.errors.WeightsError` naming the file for anything unreadable.
    """
    ckpt = read_any(path, key)
    return ckpt.tensors, ckpt.metadata


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
    """The parsed manifest, checked against ``manifest_schema.json`` (cached per file and
    modification time).  Raises :class:`~upscale_cli.errors.WeightsError` for a file that
    cannot be read and :class:`~upscale_cli.errors.UsageError` for one that breaks the schema
    (one line: the file, the entry, the field)."""
    p = manifest_path() if path is None else path
    try:
        key = (str(p), p.stat().st_mtime_ns)
        if key not in _MANIFESTS:
            data = json.loads(p.read_text(encoding="utf-8"))
            problem = schema_problem(data, _manifest_schema())
            if problem is not None:
                raise UsageError(f"{p}: {_where(problem[0])}{problem[1]}")
            _MANIFESTS[key] = data
    except (OSError, ValueError) as err:
        raise WeightsError(f"{p}: cannot read the weights manifest ({err})") from None
    return _MANIFESTS[key]


def _manifest_schema() -> dict[str, Any]:
    return json.loads(Path(__file__).with_name("manifest_schema.json").read_text(encoding="utf-8"))


def _where(path: tuple[str | int, ...]) -> str:
    """``("models", "fsrcnn", "2", "sources", 0)`` -> ``"fsrcnn x2: sources[0]: "``."""
    head = ""
    if len(path) >= 3 and path[0] == "models":
        head, path = f"{path[1]} x{path[2]}", path[3:]
    elif len(path) == 2 and path[0] == "models":
        head, path = f"model {path[1]}", ()
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return "".join(f"{part}: " for part in (head, rest) if part)


# --- a JSON Schema checker for the keywords manifest_schema.json uses ----------------------------
# (JSON Schema 2020-12; jsonschema is a test dependency only, and the tests hold this checker to it)

Problem = tuple[tuple[str | int, ...], str]
"""Where a value breaks its schema (keys and indices from the root) and how, in words."""

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def schema_problem(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
                   at: tuple[str | int, ...] = ()) -> Problem | None:
    """The first way ``value`` breaks ``schema`` (``None`` if it follows it).

    Knows the keywords of ``manifest_schema.json``: ``type``, ``const``, ``enum``, ``$ref``
    (``#/...`` pointers), ``required``, ``properties``, ``additionalProperties``,
    ``propertyNames``, ``minProperties``, ``items``, ``minItems``, ``minLength``, ``pattern``
    (searched, as JSON Schema does), ``minimum``, ``maximum``, ``oneOf`` and ``not``.
    """
    root = schema if root is None else root
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise ValueError(f"manifest_schema.json uses {keyword!r}, which upscale_cli.weights does not check")
        if keyword == "additionalProperties":  # the fields that ``properties`` does not name
            arg = (schema.get("properties", {}), arg)
        problem = check(value, arg, root, at)
        if problem is not None:
            return problem
    return None


def _type(value: Any, arg: str, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if _TYPES[arg](value) else (at, f"must be a{'n' if arg[0] in 'aeio' else ''} {arg}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _const(value: Any, arg: Any, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if _same(value, arg) else (at, f"must be {json.dumps(arg)}")


def _enum(value: Any, arg: list[Any], root: dict[str, Any], at: tuple) -> Problem | None:
    return None if any(_same(value, a) for a in arg) else (at, f"must be one of {', '.join(map(json.dumps, arg))}")


def _ref(value: Any, arg: str, root: dict[str, Any], at: tuple) -> Problem | None:
    target: Any = root
    for part in arg.removeprefix("#/").split("/"):
        target = target[part]
    return schema_problem(value, target, root, at)


def _if(kind: str, check: Callable[..., Problem | None]) -> Callable[..., Problem | None]:
    """``check``, for values of JSON type ``kind`` only (keywords ignore the other types)."""
    return lambda value, arg, root, at: check(value, arg, root, at) if _TYPES[kind](value) else None


def _required(value: dict, arg: list[str], root: dict[str, Any], at: tuple) -> Problem | None:
    missing = next((k for k in arg if k not in value), None)
    return None if missing is None else (at, f"{missing!r} is required")


def _properties(value: dict, arg: dict[str, Any], root: dict[str, Any], at: tuple) -> Problem | None:
    return next((p for k, v in value.items() if k in arg and (p := schema_problem(v, arg[k], root, (*at, k)))), None)


def _additional(value: dict, arg: tuple[dict[str, Any], Any], root: dict[str, Any], at: tuple) -> Problem | None:
    """``additionalProperties``; ``arg`` is (the sibling ``properties``, the keyword's value)."""
    known, extra = arg
    for k, v in value.items():
        if k in known:
            continue
        if extra is False:
            return (at, f"{k!r} is not an allowed field")
        if isinstance(extra, dict) and (problem := schema_problem(v, extra, root, (*at, k))):
            return problem
    return None


def _property_names(value: dict, arg: dict[str, Any], root: dict[str, Any], at: tuple) -> Problem | None:
    bad = next((k for k in value if schema_problem(k, arg, root, at) is not None), None)
    return None if bad is None else (at, f"{bad!r} is not an allowed name ({arg.get('pattern', arg)})")


def _min_properties(value: dict, arg: int, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if len(value) >= arg else (at, f"must have at least {arg} field{'s' * (arg != 1)}")


def _items(value: list, arg: dict[str, Any], root: dict[str, Any], at: tuple) -> Problem | None:
    return next((p for i, v in enumerate(value) if (p := schema_problem(v, arg, root, (*at, i)))), None)


def _min_items(value: list, arg: int, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if len(value) >= arg else (at, f"must hold at least {arg} item{'s' * (arg != 1)}")


def _min_length(value: str, arg: int, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if len(value) >= arg else (at, f"must be at least {arg} character{'s' * (arg != 1)} long")


def _pattern(value: str, arg: str, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if re.search(arg, value) else (at, f"{value!r} does not match {arg}")


def _minimum(value: float, arg: float, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if value >= arg else (at, f"must be at least {arg}")


def _maximum(value: float, arg: float, root: dict[str, Any], at: tuple) -> Problem | None:
    return None if value <= arg else (at, f"must be at most {arg}")


def _one_of(value: Any, arg: list[dict[str, Any]], root: dict[str, Any], at: tuple) -> Problem | None:
    """Exactly one branch; when none fits, the problem of the branch that got deepest into the
    value (the form the author meant), or all of them when none got further than here."""
    problems = [schema_problem(value, branch, root, at) for branch in arg]
    fits = sum(p is None for p in problems)
    if fits == 1:
        return None
    if fits > 1:
        return (at, "fits more than one of the allowed forms")
    deepest = max(problems, key=lambda p: len(p[0]))  # type: ignore[index]
    if len(deepest[0]) > len(at):  # type: ignore[index]
        return deepest
    return (at, "fits none of the allowed forms (" + "; or ".join(p[1] for p in problems if p) + ")")


def _not(value: Any, arg: dict[str, Any], root: dict[str, Any], at: tuple) -> Problem | None:
    if schema_problem(value, arg, root, at) is not None:
        return None
    if set(arg) == {"required"}:
        return (at, f"{', '.join(map(repr, arg['required']))} is not allowed here")
    return (at, f"must not fit {json.dumps(arg)}")


_KEYWORDS: dict[str, Callable[..., Problem | None]] = {
    "type": _type,
    "const": _const,
    "enum": _enum,
    "$ref": _ref,
    "required": _if("object", _required),
    "properties": _if("object", _properties),
    "additionalProperties": _if("object", _additional),
    "propertyNames": _if("object", _property_names),
    "minProperties": _if("object", _min_properties),
    "items": _if("array", _items),
    "minItems": _if("array", _min_items),
    "minLength": _if("string", _min_length),
    "pattern": _if("string", _pattern),
    "minimum": _if("number", _minimum),
    "maximum": _if("number", _maximum),
    "oneOf": _one_of,
    "not": _not,
}


def manifest_entry(name: str, scale: int, path: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of model ``name`` (registry name) at ``scale``, or ``None``."""
    return load_manifest(path)["models"].get(name, {}).get(str(int(scale)))


def manifest_asset(name: str, path: Path | None = None) -> dict[str, Any] | None:
    """The manifest's entry for asset ``name`` (a file that is no model: ``alexnet``), or ``None``."""
    return load_manifest(path).get("assets", {}).get(name)


def manifest_entries(name: str, path: Path | None = None) -> dict[int, dict[str, Any]]:
    """Every manifest entry of model ``name``, by scale."""
    return {int(s): e for s, e in load_manifest(path)["models"].get(name, {}).items()}


# --- state dicts against architectures ----------------------------------------------------


def convert_for(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` in the family's own key layout (its ``convert_keys``, when it has one)."""
    return arch.convert_keys(dict(sd)) if arch.convert_keys is not None else dict(sd)


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
