"""Validation during training, by ``upscale bench``'s protocol code.

The set is found and its (HR, LR) pairs are made by :mod:`upscale_cli.bench` (HR cropped to a
multiple of the scale, LR by the MATLAB-compatible bicubic rounded to 8 bits, grey images as
three equal channels), the network runs through the inference engine as ``upscale bench`` runs
it (fp32, whole image), and the output is scored by :func:`upscale_cli.metrics.evaluate` (8-bit
output, Y channel, ``scale`` px shaved): the figure printed during training is the figure
``upscale bench`` prints for the exported weights.  Pairs are made once per scale and kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bench import BenchSet, Pair, find_set, make_pair, missing_ssim, super_resolve
from ..engine import Upscaler
from ..errors import UsageError
from ..metrics import evaluate
from ..models import Arch, LoadedModel


@dataclass(frozen=True)
class ValidationSet:
    """A test set's pairs, per scale."""

    name: str
    pairs: Mapping[int, Sequence[Pair]]


def _scored_pair(bench_set: BenchSet, path: Path, scale: int) -> Pair:
    """:func:`make_pair`, refusing an image without SSIM (the validation line prints a mean SSIM)."""
    pair = make_pair(bench_set, path, scale)
    why = missing_ssim(pair, scale)
    if why is not None:
        raise UsageError(f"--val-set {bench_set.name}: {path}: {why}; remove it or choose another set")
    return pair


def load_validation_set(spec: str, data_dir: str | None, scales: Sequence[int]) -> ValidationSet:
    """Find set ``spec`` (a known name under ``data_dir`` or a folder) and make its pairs.

    Raises:
        UsageError: the set is not found (the message says where to put it), or an image of it
            is too small for SSIM.
        InputError: an image cannot be read, or nothing of it is left to score.
    """
    found = find_set(spec, Path(data_dir) if data_dir else None)
    return ValidationSet(found.name, {s: [_scored_pair(found, p, s) for p in found.hr] for s in scales})


def validate(
    module: nn.Module, arch: Arch, kwargs: Mapping[str, Any], vset: ValidationSet, device: torch.device
) -> dict[str, Any]:
    """Mean PSNR/SSIM of ``module`` over the set, per scale and over the scales.

    Returns ``{"psnr", "ssim", "per_scale": {scale: {"psnr", "ssim"}}}``.  The module is put in
    eval mode for the pass and returned to its previous mode; the engine may change its memory
    format (contiguous for fp32), in place.
    """
    was_training = module.training
    module.eval()
    per_scale: dict[int, dict[str, float]] = {}
    try:
        for scale, pairs in vset.pairs.items():
            model = LoadedModel(name="validation", arch=arch, module=module, scale=scale, kwargs=kwargs)
            engine = Upscaler(model, device=str(device), precision="fp32", tile=0, batch_size=1)
            scores = [evaluate(super_resolve(engine.upscale, p.lr), p.hr, scale) for p in pairs]
            per_scale[scale] = {
                "psnr": float(sum(float(s[0]) for s in scores) / len(scores)),
                "ssim": float(sum(float(s[1]) for s in scores) / len(scores)),
            }
    finally:
        module.train(was_training)
    return {
        "psnr": sum(v["psnr"] for v in per_scale.values()) / len(per_scale),
        "ssim": sum(v["ssim"] for v in per_scale.values()) / len(per_scale),
        "per_scale": per_scale,
    }
