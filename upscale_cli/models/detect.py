"""Which network a state dict is for: the family recognised from its keys, and the kwargs and
scale read off its tensor shapes (the spandrel approach).

Each registered family converts the keys to its layout (``Arch.convert_keys``), says whether
they are its own (``Arch.matches``) and reads its hyperparameters (``Arch.infer_kwargs``).  A
family's *candidates* for a state dict are the configurations (its inferred kwargs, under each
of its variants) whose network, built on the meta device, has exactly the file's keys and
shapes; detection succeeds when there is exactly one in all families.  When none fits, the
error names the closest family: the one whose own keys (those of its network for the kwargs
read off the file, or for its defaults) are most present in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import WeightsError
from ..weights import convert_for, key_diff
from .registry import Arch, format_arch, list_archs, list_specs, variant_of

UNKNOWN = "cannot tell the architecture from the keys"

Candidate = tuple[Arch, dict[str, Any], int | None]
"""A family, kwargs and scale (``None`` when the shapes do not tell) that fit a state dict."""


def _claim(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """``sd`` converted to ``arch``'s layout if the family recognises it as its own, else None."""
    if arch.matches is None:
        return None
    try:
        converted = convert_for(arch, sd)
        return converted if arch.matches(converted) else None
    except Exception:  # noqa: BLE001 - a converter or matcher choking on foreign keys means "no"
        return None


def claims(sd: Mapping[str, Tensor]) -> list[tuple[Arch, dict[str, Tensor]]]:
    """Every family that recognises ``sd`` as its own, with ``sd`` converted to its layout."""
    return [(arch, csd) for arch in list_archs() if (csd := _claim(arch, sd)) is not None]


def _meta_state(arch: Arch, kwargs: Mapping[str, Any], scale: int) -> dict[str, Tensor]:
    """The state dict (meta tensors: shapes only) of ``arch`` built with ``kwargs`` at ``scale``."""
    with torch.device("meta"):
        return arch.build(scale=scale, **kwargs).state_dict()


def _fits(arch: Arch, kwargs: Mapping[str, Any], scale: int | None, sd: Mapping[str, Tensor]) -> bool:
    """Whether the network of these kwargs has exactly the keys and shapes of ``sd``."""
    try:
        return key_diff(_meta_state(arch, kwargs, scale or 4), sd) is None
    except (ValueError, TypeError):  # kwargs no network of the family has
        return False


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


def candidates(arch: Arch, sd: Mapping[str, Tensor], overrides: Mapping[str, Any] | None = None) -> list[Candidate]:
    """The configurations of ``arch`` that fit the converted state dict ``sd`` exactly: the
    kwargs read off its shapes with ``overrides`` applied, under each variant that agrees
    with ``overrides`` (``Arch.variants``: what the keys cannot tell).  WeightsError when the
    keys are not the family's."""
    overrides = dict(overrides or {})
    kwargs, scale = infer_kwargs(arch, sd)
    kwargs.update(overrides)
    options = [kwargs]
    for preset in arch.variants.values():
        if all(overrides.get(k, v) == v for k, v in preset.items()):
            option = {**kwargs, **preset}
            if option not in options:
                options.append(option)
    return [(arch, option, scale) for option in options if _fits(arch, option, scale, sd)]


def describe(candidate: Candidate) -> str:
    """An ``--arch`` value that selects ``candidate``: the variant name with its
    ``NAME:key=value`` spelling, or the family name."""
    arch, kwargs, _ = candidate
    variant = variant_of(arch, kwargs)
    return f"{variant} ({format_arch(arch.name, arch.variants[variant])})" if variant else arch.name


def ambiguous(found: list[Candidate], what: str) -> str:
    """The message for several candidates: each of them, and the flag that picks one."""
    names = ", ".join(describe(c) for c in found)
    return f"{what} fit {len(found)} networks: {names}; pass one of them with --arch"


def _scale_guess(arch: Arch) -> int:
    """A scale the family builds at: its first named model's, else 4."""
    return next((s.scales[0] for s in list_specs() if s.arch == arch.name), 4)


def _own_keys(arch: Arch, sd: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The keys and shapes of ``arch``'s network for the kwargs read off ``sd`` (else for
    its defaults); None for a family without parameters or that cannot be built."""
    try:
        kwargs, scale = infer_kwargs(arch, sd)
        own = _meta_state(arch, kwargs, scale or _scale_guess(arch))
    except (WeightsError, ValueError, TypeError):
        try:
            own = _meta_state(arch, arch.default_kwargs, _scale_guess(arch))
        except (ValueError, TypeError):
            return None
    return own or None


def closest(sd: Mapping[str, Tensor]) -> tuple[Arch, dict[str, Tensor], dict[str, Tensor]] | None:
    """The family whose own keys (:func:`_own_keys`) are most present in ``sd`` (ties: fewer
    unexpected keys), with those keys and ``sd`` in its layout; None when no family shares a key."""
    best, best_score = None, (0.0, 0)
    for arch in list_archs():
        try:
            converted = convert_for(arch, sd)
        except Exception:  # noqa: BLE001 - a converter choking on foreign keys: take them as they are
            converted = dict(sd)
        own = _own_keys(arch, converted)
        if own is None:
            continue
        present = sum(k in converted for k in own)
        score = (present / len(own), -(len(converted) - present))
        if present and score > best_score:
            best, best_score = (arch, own, converted), score
    return best


def nothing_fits(sd: Mapping[str, Tensor]) -> str:
    """The message for a state dict no family fits: the closest family and how it differs."""
    first = ", ".join(list(sd)[:3])
    found = closest(sd)
    if found is None:
        return f"{UNKNOWN}: no known family has any of them ({len(sd)} tensors; first keys: {first})"
    arch, own, converted = found
    present = sum(k in converted for k in own)
    return (
        f"{UNKNOWN}: no known family has exactly them ({len(sd)} tensors; first keys: {first}); "
        f"closest: {arch.name}, with {present} of its {len(own)} keys ({key_diff(own, converted)})"
    )


def detect_arch(sd: Mapping[str, Tensor]) -> Candidate:
    """Recognise the family of a state dict from its keys alone.

    Each registered family converts the keys to its layout (``convert_keys``) and says whether
    they are its own (``matches``); kwargs and scale are read off the shapes
    (``infer_kwargs``); the configurations whose network has exactly these keys and shapes are
    the candidates (:func:`candidates`).  One candidate: it.  None, but one family claims the
    keys: that family's inferred kwargs (the strict load then says what differs).  Raises
    WeightsError otherwise: several candidates (naming each, with the ``--arch`` that picks
    it) or none (naming the closest family and its missing and unexpected keys).
    """
    claimed = claims(sd)
    found: list[Candidate] = []
    for arch, csd in claimed:
        try:
            found += candidates(arch, csd)
        except WeightsError:
            continue
    if len(found) == 1:
        return found[0]
    if found:
        raise WeightsError(ambiguous(found, f"{UNKNOWN}: they"))
    if len(claimed) == 1:
        arch, csd = claimed[0]
        return (arch, *infer_kwargs(arch, csd))
    raise WeightsError(nothing_fits(sd))
