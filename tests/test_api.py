"""The Python API: ``upscale_image`` and ``load_model`` on PIL images and numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from upscale_cli import load_model, upscale_image
from upscale_cli.api import target_size
from upscale_cli.errors import UsageError
from upscale_cli.resize import imresize


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_pil_in_pil_out_equals_the_resize_itself() -> None:
    arr = _rgb()
    out = upscale_image(Image.fromarray(arr), "bicubic", scale=3)
    assert isinstance(out, Image.Image) and out.size == (60, 36) and out.mode == "RGB"
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ref = (imresize(x, scale=3).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(out).astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_numpy_keeps_dtype_and_layout(dtype: type) -> None:
    base = _rgb(8, 10).astype(np.float32) / 255
    arr = {np.uint8: (base * 255).round(), np.uint16: (base * 65535).round(), np.float32: base}[dtype].astype(dtype)
    out = upscale_image(arr, "nearest", scale=2)
    assert out.dtype == dtype and out.shape == (16, 20, 3)
    assert np.array_equal(out[::2, ::2], arr)  # nearest at x2 repeats each pixel


def test_grey_and_alpha_arrays() -> None:
    grey = _rgb(8, 8)[..., 0]
    assert upscale_image(grey, "bicubic", scale=2).shape == (16, 16)
    rgba = np.concatenate([_rgb(8, 8), np.full((8, 8, 1), 128, np.uint8)], axis=-1)
    out = upscale_image(rgba, "bicubic", scale=2)
    assert out.shape == (16, 16, 4) and np.all(out[..., 3] == 128)  # flat alpha stays flat


def test_loaded_model_and_final_size() -> None:
    model = load_model("bicubic", 4)
    out = upscale_image(Image.fromarray(_rgb(10, 20)), model, width=30)
    assert out.size == (30, 15)
    with pytest.raises(UsageError):
        upscale_image(Image.fromarray(_rgb()), model, scale=2)


def test_target_size_rules() -> None:
    assert target_size(10, 20, 4, None, None, None) == (40, 80)
    assert target_size(10, 20, 4, 1.5, None, None) == (15, 30)
    assert target_size(10, 20, 4, None, None, 25) == (25, 50)
    assert target_size(10, 20, 4, None, 7, 9) == (9, 7)
    with pytest.raises(UsageError):
        target_size(10, 20, 4, 2.0, 5, None)
    with pytest.raises(UsageError):
        target_size(10, 20, 4, -1.0, None, None)


def test_an_unmeasured_explicit_precision_runs_with_a_warning() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    model = load_model("fsrcnn", 2, pretrained=False)  # random weights: nothing measured
    with pytest.warns(UserWarning, match="no measured Set5 cost in bf16; running in bf16 as asked"):
        out = upscale_image(arr, model, precision="bf16", device="cpu")
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
