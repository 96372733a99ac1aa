"""Real third-party checkpoints (../shared/checkpoints) against the zoo's own architecture code.

Each fixture is recognised from its keys alone, loads with ``strict=True`` into the module our
registry builds, and upscales a crop of Set5 ``baby.png`` (made LR with the MATLAB bicubic)
to the right size and a sensible quality.  The full-Set5 figures of ../shared/README.md are
the benchmark's business; here a 96x96 crop keeps the tests fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, SET5, need_shared
from PIL import Image
from torch import Tensor

from upscale_cli.color import rgb_to_y
from upscale_cli.models import LoadedModel, detect_arch, get_arch, get_spec
from upscale_cli.resize import imresize


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The file's state dict, unwrapped from ``{"params": ...}`` (CUDA tensors land on CPU)."""
    obj = torch.load(need_shared(path), map_location="cpu", weights_only=True)
    return obj.get("params", obj)


def load_fixture(path: Path, scale: int) -> LoadedModel:
    """Detect the family from the keys (among every registered one), infer its kwargs, build
    it and load strictly."""
    sd = read_state_dict(path)
    arch, kwargs, inferred_scale = detect_arch(sd)
    assert inferred_scale in (None, scale)
    module = arch.build(scale=scale, **kwargs)
    module.load_state_dict(sd, strict=True)
    return LoadedModel(path.stem, arch, module.eval(), scale, kwargs, source=str(path))


@pytest.fixture(scope="module")
def baby() -> Tensor:
    """A 96x96 crop of Set5 baby.png (a multiple of 2, 3 and 4), RGB 0..1."""
    img = np.array(Image.open(need_shared(SET5 / "baby.png")).convert("RGB"))
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None, :, 200:296, 200:296].contiguous()


def lr_of(hr: Tensor, scale: int) -> Tensor:
    """The protocol's LR: MATLAB bicubic downscale, rounded to 8 bits."""
    return (imresize(hr, scale=1 / scale).clamp(0, 1) * 255).round() / 255


def psnr_y(a: Tensor, b: Tensor) -> float:
    mse = (rgb_to_y(a.clamp(0, 1)) - rgb_to_y(b)).pow(2).mean()
    return float(-10 * torch.log10(mse))


def upscale(model: LoadedModel, lr: Tensor) -> Tensor:
    with torch.no_grad():
        return model(lr)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_carn_m_loads_strictly_and_beats_bicubic(baby: Tensor, scale: int) -> None:
    model = load_fixture(CHECKPOINTS / "carn_m.pth", scale)
    assert model.arch.name == "carn" and model.kwargs == {"mobile": True, "group": 4, "feats": 64}
    assert model.convention == "rgb"
    lr = lr_of(baby, scale)
    sr = upscale(model, lr)
    assert sr.shape == baby.shape
    # CARN-M gains 3.5-4 dB over bicubic on Set5 (README); this crop: 3.7-5.2 dB
    assert psnr_y(sr, baby) > psnr_y(imresize(lr, scale=scale), baby) + 2.0


def test_carn_m_parameter_count(checkpoints: Path) -> None:
    sd = read_state_dict(checkpoints / "carn_m.pth")
    model = load_fixture(checkpoints / "carn_m.pth", 2)
    assert model.params == sum(t.numel() for t in sd.values()) == 414_811
    spec = get_spec("carn-m")
    assert model.params == sum(p.numel() for p in get_arch(spec.arch).build(scale=2, **spec.kwargs).parameters())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fsrcnn_loads_on_cpu_strictly_and_beats_bicubic(baby: Tensor, scale: int) -> None:
    path = CHECKPOINTS / f"fsrcnn_x{scale}.pth"
    model = load_fixture(path, scale)  # saved with CUDA tensors; this machine has no GPU
    assert model.kwargs == dict(get_spec("fsrcnn").kwargs)
    assert model.convention == "y"
    lr = lr_of(baby, scale)
    sr = upscale(model, lr)
    assert sr.shape == baby.shape
    # FSRCNN gains ~2-3.5 dB over bicubic on Set5 (README); this crop: 2.8-3.3 dB
    assert psnr_y(sr, baby) > psnr_y(imresize(lr, scale=scale), baby) + 1.5


def test_realesr_animevideov3_loads_strictly_and_upscales(baby: Tensor, checkpoints: Path) -> None:
    model = load_fixture(checkpoints / "realesr-animevideov3.pth", 4)
    assert model.arch.name == "srvgg" and model.kwargs == {**get_spec("realesr-animevideov3").kwargs, "act": "prelu"}
    lr = lr_of(baby, 4)
    sr = upscale(model, lr)
    assert sr.shape == baby.shape
    # an anime model on a photo: below bicubic in PSNR, yet a clear gain over its own
    # nearest-neighbour base (the residual it learnt does its job) and a faithful image
    nearest = F.interpolate(lr, scale_factor=4, mode="nearest")
    assert psnr_y(sr, baby) > psnr_y(nearest, baby) + 1.0
    assert psnr_y(sr, baby) > 30.0


@pytest.mark.parametrize(
    "name,scale", [("carn_m.pth", 2), ("fsrcnn_x2.pth", 2), ("realesr-animevideov3.pth", 4)]
)
def test_precision_flags_match_measured_deviations(baby: Tensor, name: str, scale: int) -> None:
    """A dtype is declared safe when the output moves by < 0.25 8-bit levels RMS (costs
    < 0.02 dB at 37 dB PSNR); bf16 on perceptual models when no pixel moves by 2 levels."""
    model = load_fixture(CHECKPOINTS / name, scale)
    lr = lr_of(baby[..., 24:72, 24:72], scale)
    ref = upscale(model, lr)
    for dtype, safe in ((torch.float16, model.supports_fp16), (torch.bfloat16, model.supports_bf16)):
        model.module.to(dtype)
        dev = (upscale(model, lr.to(dtype)).float() - ref) * 255
        model.module.float()
        rms = float(dev.pow(2).mean().sqrt())
        if dtype == torch.float16:
            assert safe and rms < 0.25
        elif safe:
            assert model.arch.name in ("srvgg", "rrdbnet") and dev.abs().max() < 2
        else:
            assert rms > 0.25
