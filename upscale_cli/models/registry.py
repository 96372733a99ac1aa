"""One registry for every network of the zoo, in the style of timm.

Two levels:

* :class:`Arch` - an architecture *family* (``edsr``, ``rrdbnet``, ``carn`` ...): how to build
  it, its input convention, its receptive-field radius as a function of its kwargs, and how to
  recognise and read third-party checkpoints of it.
* :class:`ModelSpec` - a *named model* (``edsr-baseline``, ``realesrgan-x4plus`` ...): an
  arch with fixed kwargs, the scales it exists for and its aliases.  Pretrained weights for a
  named model are described in ``weights_manifest.json`` under the same name.

Each family lives in its own module under :mod:`upscale_cli.models` and calls
:func:`register_arch` and :func:`register_model` at import time; the package imports every
module, so adding a file is all it takes to add a family (its ``test_configs`` give it the
registry contract's checks, ``tests/test_registry_contract.py``).

``--arch`` names a family by its name, an alias or a variant (:func:`resolve_arch`), or a
named model, optionally followed by kwargs: ``NAME:key=value,...`` (:func:`split_overrides`).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ..errors import UsageError

Convention = Literal["rgb", "rgb255", "y"]
"""Input/output convention of a network's ``forward``.

* ``rgb``: RGB in 0..1 in, RGB in 0..1 out.
* ``rgb255``: RGB in 0..255 in and out (nets that subtract the DIV2K mean inside, EDSR/RCAN).
* ``y``: the BT.601 Y channel in 0..1 in and out; Cb/Cr are upscaled with bicubic.
"""

StateDict = Mapping[str, Tensor]

SmallConfig = tuple[Mapping[str, Any], int]
"""``(kwargs, scale)`` of a tiny instance of a family, for :attr:`Arch.test_configs`."""


def _one(_kwargs: Mapping[str, Any], _scale: int) -> int:
    return 1


@dataclass(frozen=True)
class Arch:
    """An architecture family.

    Attributes:
        name: registry key, lower case (``"edsr"``).
        build: ``build(scale=S, **kwargs) -> nn.Module``.  Multi-scale families accept and may
            ignore ``scale`` (they hold every scale's upsampler).
        convention: see :data:`Convention`.
        radius: receptive-field radius in *input* pixels as a function of ``(kwargs, scale)``;
            tiling with at least this much overlap reproduces whole-image output exactly.
        paper: short citation ``"Lim et al., EDSR, CVPRW 2017"``.
        multiscale: ``forward(x, scale)`` instead of ``forward(x)``.
        size_multiple: input H and W must be multiples of this (``(kwargs, scale) -> int``);
            the runtime pads (reflect) and crops, so callers never see it.
        fp16, bf16: whether inference in that dtype is numerically safe (``layers.py``: fp16
            for every family here; bf16 only where a family declares it, the GAN-trained ones).
        matches: does a state dict (after :attr:`convert_keys`) belong to this family?
        infer_kwargs: kwargs and scale (``None`` if not determinable) read off a state dict's
            shapes, so ``--weights FILE`` needs no other flag.
        convert_keys: turns older/foreign key layouts of the family into ours.
        default_kwargs: kwargs used when none are given.
        test_configs: tiny ``(kwargs, scale)`` instances of the family (kwargs merged over
            ``default_kwargs``) that the registry contract test (``tests/test_registry_contract.py``)
            checks: built on the meta device; a state dict of it recognised as this family's and
            no other's; kwargs and scale read back by ``infer_kwargs``; the radius exact under a
            one-pixel perturbation; tiled output equal to whole-image output.  Keep them tiny
            (1-2 blocks, 4-16 channels, a radius of a few pixels) so each runs on a 16-24 px
            CPU input in well under a second; give one per layout the detector must tell apart
            (e.g. each upsampler).  Every family with parameters must declare at least one.
        global_context: outputs depend (weakly) on the whole image, through global average
            pooling or attention over the whole map (RCAN's and HAT's channel attention): the
            radius is that of the local operations, tiles then differ from the whole image
            only through those global statistics (the contract test bounds that leak instead
            of requiring exactness).
        aliases: other names ``--arch`` accepts for the family (``compact`` for ``srvgg``).
        variants: named kwargs presets that ``--arch`` accepts like family names, for kwargs
            the keys cannot tell (``{"compact-relu": {"act": "relu"}}``); detection tries each
            and names the ones whose network has exactly the file's keys and shapes.
        recipe: the training recipe (:mod:`upscale_cli.train.recipes`) of the family when it
            is another family's (``espcn`` for ``espcn-ycbcr``); by default the family's own.
    """

    name: str
    build: Callable[..., nn.Module]
    convention: Convention
    radius: Callable[[Mapping[str, Any], int], int]
    paper: str
    multiscale: bool = False
    size_multiple: Callable[[Mapping[str, Any], int], int] = _one
    fp16: bool = True
    bf16: bool = False
    matches: Callable[[StateDict], bool] | None = None
    infer_kwargs: Callable[[StateDict], tuple[dict[str, Any], int | None]] | None = None
    convert_keys: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    test_configs: tuple[SmallConfig, ...] = ()
    global_context: bool = False
    aliases: tuple[str, ...] = ()
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    recipe: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A named model: an :class:`Arch` with fixed kwargs.

    Attributes:
        name: registry key, lower case with dashes (``"edsr-baseline"``).
        arch: name of the :class:`Arch`.
        kwargs: passed to ``arch.build`` together with ``scale``.
        scales: the scales the model exists for.
        aliases: other accepted names (case-insensitive).
        description: one line for ``upscale models``.
        trainable_only: True when no public weights exist (only ``--weights`` or training).
    """

    name: str
    arch: str
    kwargs: Mapping[str, Any]
    scales: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    description: str = ""
    trainable_only: bool = False


_ARCHS: dict[str, Arch] = {}
_ARCH_NAMES: dict[str, tuple[str, Mapping[str, Any]]] = {}
"""Every name ``--arch`` accepts for a family (its name, aliases, variants): family key and preset."""
_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_arch(arch: Arch) -> Arch:
    """Add an architecture family; its name, aliases and variant names must be unique."""
    key = _key(arch.name)
    names = {key: {}, **{_key(a): {} for a in arch.aliases}, **{_key(v): p for v, p in arch.variants.items()}}
    for name in names:
        if name in _ARCH_NAMES:
            raise ValueError(f"architecture name {name!r} registered twice")
    _ARCHS[key] = arch
    _ARCH_NAMES.update((name, (key, preset)) for name, preset in names.items())
    return arch


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a named model; its name and aliases must not clash with another model's."""
    if _key(spec.arch) not in _ARCHS:
        raise ValueError(f"model {spec.name!r} names unknown architecture {spec.arch!r}")
    for name in (spec.name, *spec.aliases):
        key = _key(name)
        if key in _ALIASES:
            raise ValueError(f"model name {name!r} registered twice")
        _ALIASES[key] = _key(spec.name)
    _MODELS[_key(spec.name)] = spec
    return spec


def _unknown(kind: str, name: str, known: list[str]) -> UsageError:
    close = difflib.get_close_matches(_key(name), known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `upscale models`"
    return UsageError(f"unknown {kind} {name!r}{hint}")


def get_arch(name: str) -> Arch:
    """The architecture family called ``name`` or one of its aliases (raises :class:`UsageError`)."""
    arch, preset = resolve_arch(name)
    if preset:
        raise UsageError(f"{name!r} is a variant of {arch.name} ({format_arch(arch.name, preset)}), not a family")
    return arch


def resolve_arch(name: str) -> tuple[Arch, dict[str, Any]]:
    """The family a name, alias or variant name stands for, and the variant's kwargs preset."""
    key = _key(name)
    if key not in _ARCH_NAMES:
        raise _unknown("architecture", name, sorted(_ARCH_NAMES))
    family, preset = _ARCH_NAMES[key]
    return _ARCHS[family], dict(preset)


def variant_of(arch: Arch, kwargs: Mapping[str, Any]) -> str | None:
    """The name of the variant of ``arch`` whose preset ``kwargs`` agree with, if any."""
    return next((v for v, p in arch.variants.items() if all(kwargs.get(k) == x for k, x in p.items())), None)


def split_overrides(text: str, flag: str = "--arch") -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` -> ``(NAME, {key: value})``; a plain ``NAME`` has none.

    The syntax of ``--arch`` (any family, alias, variant or model name): after the colon,
    keyword arguments as in a Python call, each value a Python literal (``4``, ``0.5``,
    ``True``, ``(6, 6)``, ``'x'``) or a bare word, read as a string (``act=relu``).  Nothing
    is evaluated (:func:`ast.literal_eval`).  Raises :class:`UsageError` on anything else.
    """
    name, colon, rest = text.partition(":")
    if not colon:
        return name.strip(), {}
    bad = UsageError(f"{flag} {text!r}: expected NAME:key=value,key=value (values are Python literals or words)")
    try:
        call = ast.parse(f"f({rest})", mode="eval").body
    except SyntaxError:
        raise bad from None
    if not isinstance(call, ast.Call) or call.args or not call.keywords or any(k.arg is None for k in call.keywords):
        raise bad
    try:
        return name.strip(), {k.arg: _literal(k.value) for k in call.keywords if k.arg is not None}
    except ValueError:
        raise bad from None


def _literal(node: ast.expr) -> Any:
    """A bare word as its string, anything else as a Python literal (ValueError otherwise)."""
    return node.id if isinstance(node, ast.Name) else ast.literal_eval(node)


def format_arch(name: str, kwargs: Mapping[str, Any]) -> str:
    """``NAME:key=value,...``, the inverse of :func:`split_overrides` (``name`` alone without kwargs)."""
    if not kwargs:
        return name
    words = (f"{k}={v}" if isinstance(v, str) and v.isidentifier() else f"{k}={v!r}" for k, v in kwargs.items())
    return f"{name}:{','.join(words)}"


def get_spec(name: str) -> ModelSpec:
    """The named model ``name`` or one of its aliases (raises :class:`UsageError`)."""
    key = _key(name)
    if key not in _ALIASES:
        raise _unknown("model", name, sorted(_ALIASES))
    return _MODELS[_ALIASES[key]]


def family_of(name: str) -> Arch:
    """The family of a named model, or of a family, alias or variant name (raises :class:`UsageError`,
    naming the closest models, when it is neither)."""
    key = _key(name)
    if key in _ALIASES:
        return _ARCHS[_key(_MODELS[_ALIASES[key]].arch)]
    if key in _ARCH_NAMES:
        return _ARCHS[_ARCH_NAMES[key][0]]
    raise _unknown("model", name, sorted(_ALIASES))


def list_archs() -> list[Arch]:
    """Every registered family, in registration order."""
    return list(_ARCHS.values())


def list_specs() -> list[ModelSpec]:
    """Every registered named model, in registration order."""
    return list(_MODELS.values())


def create_model(name: str, scale: int, **overrides: Any) -> nn.Module:
    """Build the randomly initialised network of model (or arch) ``name`` for ``scale``.

    ``name`` may be a named model or an architecture family; ``overrides`` replace kwargs.
    """
    key = _key(name)
    if key in _ALIASES:
        spec = _MODELS[_ALIASES[key]]
        arch = get_arch(spec.arch)
        if scale not in spec.scales and not arch.multiscale:
            raise UsageError(f"model {spec.name!r} exists for scales {list(spec.scales)}, not x{scale}")
        kwargs = {**spec.kwargs, **overrides}
    else:
        arch, preset = resolve_arch(name)
        kwargs = {**arch.default_kwargs, **preset, **overrides}
    return arch.build(scale=scale, **kwargs)
