"""``load_model``: from a model name, a weights file, or both, to a :class:`LoadedModel`.

What can be asked for:

* a named model (``load_model("edsr-baseline", 4)``): the registry gives the architecture and
  kwargs, the manifest the verified weights file (downloaded and cached on first use);
* a weights file alone (``load_model(weights="x.pth")``): our own safetensors exports carry
  arch, kwargs and scale in their metadata; third-party checkpoints are recognised from their
  keys (:func:`~upscale_cli.models.detect.detect_arch`), or named with ``arch=`` (a model name or an
  architecture family);
* a named model with a weights file (``load_model("rcan", 4, weights="mine.pth")``): the named
  model's architecture with those weights;
* parameter-free models (``bicubic`` ...) need no weights; ``pretrained=False`` gives random
  weights (for training).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .convert import cached_conversion, converted_path, export, record_conversion
from .download import locked, resolve_entry, resolve_weights
from .errors import UsageError, WeightsError
from .formats import read as read_any
from .models import Arch, LoadedModel, ModelSpec, detect_arch, get_arch, get_spec, infer_kwargs, list_specs
from .models.detect import ambiguous, candidates
from .models.registry import resolve_arch, split_overrides
from .weights import (
    FORMAT,
    convert_for,
    load_strict,
    manifest_entry,
    read_checkpoint,
    sha256_file,
)


def _is_model_name(name: str) -> bool:
    try:
        get_spec(name)
    except UsageError:
        return False
    return True


def _is_family(name: str) -> bool:
    """Whether ``name`` is a family, or one of its aliases or variants."""
    try:
        resolve_arch(name)
    except UsageError:
        return False
    return True


def _arch_choice(text: str) -> tuple[Arch, dict[str, Any], ModelSpec | None]:
    """What ``--arch`` names (``NAME`` or ``NAME:key=value,...``, see
    :func:`~upscale_cli.models.registry.split_overrides`): the family, the kwargs overrides
    (a variant's preset, then the explicit ones) and the named model when ``NAME`` is one.
    A family name wins over a model of the same name (edsr, carn)."""
    name, overrides = split_overrides(text)
    if _is_family(name) or not _is_model_name(name):
        arch, preset = resolve_arch(name)
        return arch, {**preset, **overrides}, None
    spec = get_spec(name)
    return get_arch(spec.arch), overrides, spec


def known_scales(arch: Arch, kwargs: Mapping[str, Any]) -> list[int] | None:
    """The scales of the registered model with this architecture and these kwargs, if one."""
    for spec in list_specs():
        if get_arch(spec.arch) is arch and all(kwargs.get(k) == v for k, v in spec.kwargs.items()):
            return list(spec.scales)
    return None


def _check_scale(what: str, scale: int, scales: tuple[int, ...] | list[int]) -> None:
    if scale not in scales:
        raise UsageError(f"{what} exists for scales {list(scales)}, not x{scale}")


def _build(arch: Arch, scale: int, kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        return arch.build(scale=scale, **kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(f"cannot build {arch.name} x{scale} with {dict(kwargs)}: {err}") from None


_NAME_SCALE = (re.compile(r"(?<![a-z0-9])x([1-8])(?![0-9])"), re.compile(r"(?<![a-z0-9])([1-8])x(?![a-z0-9])"))


def scale_from_name(name: str) -> int | None:
    """The scale a file name states (``fsrcnn_x3.pth``, ``RealESRGAN_x4plus``, ``4x_foo``), if
    exactly one."""
    stem = Path(name).name.lower()
    found = {int(m) for rx in _NAME_SCALE for m in rx.findall(stem)}
    return found.pop() if len(found) == 1 else None


def _finish(
    name: str, arch: Arch, module: nn.Module, scale: int, kwargs: Mapping[str, Any], device: str, **info: Any
) -> LoadedModel:
    module.eval()
    loaded = LoadedModel(name=name, arch=arch, module=module, scale=scale, kwargs=dict(kwargs), **info)
    return loaded.to(device)


def precision_costs(record: Mapping[str, Any]) -> dict[str, float]:
    """``{precision: dB}`` from a manifest entry's (or a file's metadata's) ``precision_cost``
    (``{"bf16": {"db": 0.004, "device": "cpu", "measured_on": "..."}}``)."""
    return {name: float(m["db"]) for name, m in record.get("precision_cost", {}).items()}


def _named(spec: ModelSpec, scale: int | None, device: str, pretrained: bool, progress: bool) -> LoadedModel:
    arch = get_arch(spec.arch)
    scale = spec.scales[0] if scale is None else int(scale)
    if scale < 1:
        raise UsageError(f"scale must be a positive integer, not {scale}")
    what = f"model {spec.name!r}"
    try:
        module = _build(arch, scale, spec.kwargs)
    except UsageError:
        _check_scale(what, scale, spec.scales)  # an unlisted scale: say which ones exist
        raise
    if not module.state_dict():  # parameter-free models (bicubic ...) run at any scale they build for
        return _finish(spec.name, arch, module, scale, spec.kwargs, device, source="none")
    _check_scale(what, scale, spec.scales)
    if not pretrained:
        return _finish(spec.name, arch, module, scale, spec.kwargs, device, source="random")
    entry = manifest_entry(spec.name, scale) or {}
    extra = {k: entry[k] for k in ("license", "citation") if k in entry}
    if "format" in entry:  # another project's format: converted once, then the conversion is used
        path, digest = _converted(spec, module, scale, entry, progress)
        return _finish(spec.name, arch, module, scale, spec.kwargs, device, source=str(path), sha256=digest,
                       extra=extra, precision_cost=precision_costs(entry))
    path = resolve_weights(spec.name, scale, progress=progress)
    sd, _ = read_checkpoint(path, key=entry.get("wrapper"))
    load_strict(module, convert_for(arch, sd), f"{path.name} ({spec.name} x{scale})")
    digest = entry.get("sha256") or sha256_file(path)  # a full manifest hash was just verified
    return _finish(spec.name, arch, module, scale, spec.kwargs, device, source=str(path), sha256=digest, extra=extra,
                   precision_cost=precision_costs(entry))


def _converted(
    spec: ModelSpec, module: nn.Module, scale: int, entry: Mapping[str, Any], progress: bool
) -> tuple[Path, str]:
    """Load manifest ``entry``'s weights into ``module`` from the conversion cache, converting
    the verified upstream file first when the cache holds no sound conversion; return the
    converted file and its sha256."""
    arch = get_arch(spec.arch)
    what = f"{spec.name} x{scale}"
    target = converted_path(spec.name, entry)
    with locked(target):
        digest = cached_conversion(target, entry)
        if digest is None:
            upstream = resolve_entry(entry, what, progress)
            ckpt = read_any(upstream, entry.get("wrapper"))
            load_strict(module, convert_for(arch, ckpt.tensors), f"{upstream.name} ({what})")
            source = next((s["url"] for s in entry["sources"] if "url" in s), entry["file"])
            info = {"source": source, "source_sha256": entry["sha256"], "source_format": ckpt.format}
            info.update({k: entry[k] for k in ("license", "citation") if k in entry})
            loaded = LoadedModel(spec.name, arch, module, scale, dict(spec.kwargs))
            digest = export(loaded, target, spec.scales, info)
            record_conversion(target, digest, entry, ckpt.format)
            return target, digest
    sd, _ = read_checkpoint(target)
    load_strict(module, convert_for(arch, sd), f"{target} ({what})")
    return target, digest


def _infer(arch: Arch, sd: Mapping[str, Tensor], path: Path) -> tuple[dict[str, Any], int | None]:
    try:
        return infer_kwargs(arch, convert_for(arch, sd))
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def _fitting(
    arch: Arch, overrides: Mapping[str, Any], sd: Mapping[str, Tensor], path: Path
) -> tuple[dict[str, Any], int | None]:
    """Kwargs and scale of family ``arch`` for ``sd``: read off the shapes, ``overrides``
    applied, and the one variant that fits when the keys cannot tell (UsageError when several
    do).  When none fits exactly, the inferred kwargs: the strict load says what differs."""
    try:
        found = candidates(arch, convert_for(arch, sd), overrides)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None
    if len(found) > 1:
        raise UsageError(f"{path.name}: {ambiguous(found, f'the keys and --arch {arch.name}')}")
    if found:
        return found[0][1], found[0][2]
    kwargs, scale = _infer(arch, sd, path)
    return {**kwargs, **overrides}, scale


def _scale_of(arch: Arch, sd: Mapping[str, Tensor], path: Path) -> int | None:
    """The scale the weights were trained for, when the family can read it off the shapes."""
    if arch.multiscale or arch.infer_kwargs is None:
        return None
    try:
        return _infer(arch, sd, path)[1]
    except WeightsError:  # not this family's keys: the strict check will say how
        return None


def _from_metadata(
    meta: Mapping[str, str], path: Path
) -> tuple[str, Arch, dict[str, Any], int, list[int], dict[str, Any]]:
    """Name, arch, kwargs, scale, scales and extra recorded by :func:`~upscale_cli.weights.save_weights`."""
    try:
        kwargs = json.loads(meta["kwargs"])
        scales = [int(s) for s in json.loads(meta["scales"])]
        extra = json.loads(meta.get("extra", "{}"))
        return meta["name"], get_arch(meta["arch"]), kwargs, int(meta["scale"]), scales, extra
    except (KeyError, ValueError, TypeError) as err:
        raise WeightsError(f"{path}: damaged upscale-cli metadata ({err})") from None
    except UsageError as err:
        raise WeightsError(f"{path}: made for an architecture this version does not know ({err})") from None


def _from_file(
    name: str | None, scale: int | None, weights: str, arch_name: str | None, device: str, progress: bool
) -> LoadedModel:
    overrides: dict[str, Any] = {}
    spec = get_spec(name) if name is not None and arch_name is None else None
    if arch_name is not None:  # read before any download, so a wrong name costs nothing
        arch, overrides, spec = _arch_choice(arch_name)
    path = resolve_weights(None, None, weights=weights, progress=progress)
    sd, meta = read_checkpoint(path)
    label = path.name
    extra: dict[str, Any] = {}
    inferred: int | None = None
    scales: list[int] | None = None
    if spec is not None:  # a named model's architecture and kwargs; the file may tell the scale
        arch, kwargs, scales = get_arch(spec.arch), {**spec.kwargs, **overrides}, list(spec.scales)
        label = spec.name if arch_name is None else label
        inferred = _scale_of(arch, sd, path)
    elif arch_name is not None:  # an architecture family: read its kwargs off the shapes
        kwargs, inferred = _fitting(arch, overrides, sd, path)
    elif meta is not None and meta.get("format") == FORMAT:
        label, arch, kwargs, inferred, scales, extra = _from_metadata(meta, path)
        if scale is not None and arch.multiscale:
            inferred = None
    else:
        try:
            arch, kwargs, inferred = detect_arch(sd)
        except WeightsError as err:
            raise WeightsError(f"{path}: {err}") from None
    if scales is None:
        scales = known_scales(arch, kwargs)
    if scale is None and inferred is None and not arch.multiscale:  # FSRCNN...: shapes do not tell
        inferred = scale_from_name(path.name)
        if inferred is not None:
            extra.setdefault("scale_from", "file name")
    if scale is None:
        scale = inferred if inferred is not None else (scales[0] if scales and arch.multiscale else None)
        if scale is None:
            what = f"{path.name}: the scale of these {arch.name} weights"
            raise UsageError(f"{what} cannot be read off the file; pass --scale")
    elif inferred is not None and inferred != scale and not arch.multiscale:
        raise UsageError(f"{path.name} holds a x{inferred} {arch.name} network; it cannot run at x{scale}")
    if scales is not None and (arch.multiscale or inferred is None):
        _check_scale(f"{label} ({arch.name})", int(scale), scales)
    module = _build(arch, int(scale), kwargs)
    load_strict(module, convert_for(arch, sd), f"{path} ({arch.name} x{scale})")
    digest = sha256_file(path)
    return _finish(label, arch, module, int(scale), kwargs, device, source=str(path), sha256=digest, extra=extra,
                   precision_cost=precision_costs(extra))


def load_model(
    name: str | None = None,
    scale: int | None = None,
    *,
    weights: str | None = None,
    arch: str | None = None,
    device: str = "cpu",
    pretrained: bool = True,
    progress: bool = True,
) -> LoadedModel:
    """A network ready to run (eval mode, on ``device``), as a :class:`LoadedModel`.

    Args:
        name: a registered model name or alias; optional with ``weights``.
        scale: upscaling factor; default: the model's first scale, or the one the weights are for.
        weights: a local file, an http(s) URL or ``hf://repo_id/path[@revision]``; replaces the
            model's published weights.
        arch: with ``weights``: a model name, an architecture family, one of its aliases or
            variants (``compact-relu``), optionally with kwargs (``srvgg:act=lrelu``, see
            :func:`~upscale_cli.models.registry.split_overrides`) over those read off the file;
            without both ``arch`` and ``name`` the family is recognised from the file (metadata
            or keys).  Alone (``pretrained=False``): the family with random weights.
        device: torch device string.
        pretrained: ``False`` builds the named model with random weights (training).
        progress: show a progress bar (on standard error) while downloading.

    Raises:
        UsageError: unknown model or architecture, unsupported scale, nothing to load.
        WeightsError: weights unavailable, unverifiable, unreadable or not fitting the network.
    """
    if weights is not None:
        if not pretrained:
            raise UsageError("weights= and pretrained=False contradict each other")
        return _from_file(name, scale, weights, arch, device, progress)
    if name is None and arch is None:
        raise UsageError("name a model (see `upscale models`) or pass --weights FILE")
    if name is None:  # an architecture alone: random weights with its default kwargs
        family_name, overrides = split_overrides(arch)  # type: ignore[arg-type]
        family, preset = resolve_arch(family_name)
        kwargs = {**family.default_kwargs, **preset, **overrides}
        if pretrained:
            raise UsageError(f"architecture {family.name!r} alone has no weights: pass --weights FILE or a model name")
        if scale is None:
            raise UsageError(f"architecture {family.name!r}: pass --scale")
        module = _build(family, int(scale), kwargs)
        return _finish(family.name, family, module, int(scale), kwargs, device, source="random")
    spec = get_spec(name)
    if arch is not None:
        family, overrides, _ = _arch_choice(arch)
        if family.name != spec.arch:
            raise UsageError(f"model {spec.name!r} is a {spec.arch} network, not {arch!r}")
        if overrides:
            raise UsageError(f"--arch {arch!r}: kwargs apply to --weights files and to random weights, "
                             f"not to the published {spec.name!r}")
    return _named(spec, scale, device, pretrained, progress)


__all__ = ["load_model"]
