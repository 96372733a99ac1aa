"""Which network a state dict is for: the family recognised from its keys, and the kwargs and
scale read off its tensor shapes (the spandrel approach).

Each registered family converts the keys to its layout (``Arch.convert_keys``), says whether
they are its own (``Arch.matches``) and reads its hyperparameters (``Arch.infer_kwargs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import WeightsError
from ..weights import convert_for, key_diff
from .registry import Arch, list_archs


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


def detect_arch(sd: Mapping[str, Tensor]) -> tuple[Arch, dict[str, Any], int | None]:
    """Recognise the family of a state dict from its keys alone.

    Each registered family converts the keys to its layout (``convert_keys``) and says whether
    they are its own (``matches``); kwargs and scale are read off the shapes
    (``infer_kwargs``).  When several families claim the keys, the one whose network has
    exactly these keys and shapes wins.  Raises WeightsError when none (or no single one) fits.
    """
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
