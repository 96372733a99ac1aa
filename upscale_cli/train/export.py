"""Export of trained weights: ``OUT/model.safetensors`` and ``OUT/model.json``.

The safetensors file carries the architecture, kwargs, scale(s) and input convention in its
metadata (:func:`upscale_cli.weights.save_weights`), so ``upscale img.png --weights
OUT/model.safetensors`` needs no other flag.  ``model.json`` repeats those facts with the
file's sha256 and size, how it was trained (data, steps, losses, seed...) and its validation
PSNR/SSIM; :func:`manifest_entry` turns it into an entry of ``weights_manifest.json`` once the
file has a download source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..models import Arch
from ..weights import atomic_path, save_weights

WEIGHTS_NAME = "model.safetensors"
INFO_NAME = "model.json"
LICENSE = "the training data's terms apply (weights trained with upscale-cli)"
MANIFEST_SETS = ("Set5", "Set14", "B100", "Urban100", "Manga109")
"""Set names the manifest's ``measured`` figures may use."""


def export_model(
    out_dir: Path,
    state_dict: Mapping[str, Tensor],
    *,
    name: str,
    arch: Arch,
    kwargs: Mapping[str, Any],
    scales: Sequence[int],
    params: int,
    training: Mapping[str, Any],
    validation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``model.json`` atomically; return the ``model.json`` dict.

    Args:
        out_dir: the run's folder.
        state_dict: the weights (the EMA's when EMA is on).
        name: model name recorded in the metadata.
        arch: the family; its name and convention go into the metadata.
        kwargs: build kwargs.
        scales: the scales the network was trained for; the first is its default scale.
        params: the network's parameter count.
        training: facts about the run (data, steps, losses, seed...).
        validation: ``{"set", "step", "psnr", "ssim", "per_scale"}`` of these weights, if any.
    """
    path = out_dir / WEIGHTS_NAME
    extra = {"training": dict(training), "validation": dict(validation) if validation else None}
    sha = save_weights(
        path,
        state_dict,
        name=name,
        arch=arch.name,
        kwargs=kwargs,
        scales=list(scales),
        scale=int(scales[0]),
        convention=arch.convention,
        extra=extra,
    )
    info = {
        "name": name,
        "arch": arch.name,
        "kwargs": dict(kwargs),
        "scales": [int(s) for s in scales],
        "scale": int(scales[0]),
        "convention": arch.convention,
        "file": WEIGHTS_NAME,
        "sha256": sha,
        "size": path.stat().st_size,
        "params": int(params),
        "paper": arch.paper,
        **extra,
    }
    with atomic_path(out_dir / INFO_NAME) as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return info


def manifest_entry(
    info: Mapping[str, Any], scale: int, sources: Sequence[Mapping[str, Any]], file: str | None = None
) -> dict[str, Any]:
    """The ``weights_manifest.json`` entry (``models[name][str(scale)]``) for exported weights.

    Args:
        info: the ``model.json`` of the export.
        scale: which of its scales the entry is for.
        sources: where the file can be downloaded from (``[{"url": ...}]``).
        file: the file name in the weights cache (default: ``<name>_x<scale>.safetensors``).
    """
    entry: dict[str, Any] = {
        "arch": info["arch"],
        "kwargs": info["kwargs"],
        "file": file or f"{info['name']}_x{scale}.safetensors",
        "sources": [dict(s) for s in sources],
        "sha256": info["sha256"],
        "size": info["size"],
        "license": LICENSE,
        "citation": info["paper"],
    }
    val = info.get("validation") or {}
    per = (val.get("per_scale") or {}).get(str(scale)) or (val.get("per_scale") or {}).get(scale)
    if per and val.get("set") in MANIFEST_SETS:
        entry["measured"] = {
            "source": f"upscale train validation at step {val['step']}",
            val["set"]: {"psnr": round(per["psnr"], 2), "ssim": round(per["ssim"], 4)},
        }
    steps = info.get("training", {}).get("steps")
    entry["notes"] = f"Trained with `upscale train` ({steps} steps)."
    return entry
