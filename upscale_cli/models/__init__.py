"""The model zoo: a registry of architectures and named models (see :mod:`.registry`).

Every module of this package registers its family at import time; importing the package
imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from .detect import candidates, detect_arch, infer_kwargs
from .loaded import LoadedModel
from .registry import (
    Arch,
    Convention,
    ModelSpec,
    SmallConfig,
    create_model,
    family_of,
    format_arch,
    get_arch,
    get_spec,
    list_archs,
    list_specs,
    register_arch,
    register_model,
    resolve_arch,
    split_overrides,
)

_INFRA = {"registry", "loaded", "layers", "detect"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _INFRA and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "Arch",
    "Convention",
    "LoadedModel",
    "ModelSpec",
    "SmallConfig",
    "candidates",
    "create_model",
    "detect_arch",
    "family_of",
    "format_arch",
    "get_arch",
    "get_spec",
    "infer_kwargs",
    "list_archs",
    "list_specs",
    "register_arch",
    "register_model",
    "resolve_arch",
    "split_overrides",
]
