"""The Python API: upscale PIL images, numpy arrays or :class:`~upscale_cli.io.Picture` objects
with the same engine and options as the command line.

Colour handling (the README's "Conventions"):

* grey images go through the network as three equal channels and come back as their mean;
* alpha is upscaled separately with the MATLAB-compatible bicubic and re-attached;
* the result is clamped to 0..1 and keeps the input's bit depth;
* ``outscale`` / ``width`` / ``height`` resample the network's output with the antialiased
  bicubic (the same :func:`~upscale_cli.resize.imresize` as the ``bicubic`` model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from .engine import Upscaler
from .errors import UsageError
from .io import Picture, from_numpy, from_pil, to_numpy, to_pil
from .models.loaded import LoadedModel
from .resize import imresize


def target_size(
    height: int, width: int, scale: int, outscale: float | None, out_width: int | None, out_height: int | None
) -> tuple[int, int]:
    """Output ``(height, width)``: the model's ``scale``, or ``outscale``, or the requested
    ``out_width``/``out_height`` (aspect ratio kept when only one of the two is given)."""
    if outscale is not None and (out_width or out_height):
        raise UsageError("give either --outscale or --width/--height, not both")
    if outscale is not None:
        if outscale <= 0:
            raise UsageError(f"--outscale {outscale}: must be > 0")
        return max(1, round(height * outscale)), max(1, round(width * outscale))
    if out_width is not None or out_height is not None:
        if (out_width is not None and out_width < 1) or (out_height is not None and out_height < 1):
            raise UsageError("--width and --height must be >= 1")
        if out_width is None:
            return out_height, max(1, round(width * out_height / height))  # type: ignore[operator]
        if out_height is None:
            return max(1, round(height * out_width / width)), out_width
        return out_height, out_width
    return height * scale, width * scale


def upscale_picture(
    pic: Picture,
    upscaler: Upscaler,
    *,
    outscale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Picture:
    """Upscale a decoded picture with an :class:`Upscaler` (the CLI's per-image step)."""
    scale = upscaler.model.scale
    out_h, out_w = target_size(pic.height, pic.width, scale, outscale, width, height)
    color = pic.color
    rgb = color.expand(3, -1, -1) if color.shape[0] == 1 else color
    sr = upscaler.upscale(rgb.float(), progress=progress)
    if color.shape[0] == 1:
        sr = sr.mean(dim=0, keepdim=True)
    alpha = pic.alpha
    if alpha is not None:
        alpha = imresize(alpha.float(), scale=scale)
    if (out_h, out_w) != (pic.height * scale, pic.width * scale):
        sr = imresize(sr, size=(out_h, out_w))
        if alpha is not None:
            alpha = imresize(alpha, size=(out_h, out_w))
    sr = sr.clamp_(0.0, 1.0)
    if alpha is not None:
        alpha = alpha.clamp_(0.0, 1.0)
    return pic.with_pixels(sr, alpha)


@overload
def upscale_image(image: Image.Image, model: LoadedModel | str = ..., **options: Any) -> Image.Image: ...
@overload
def upscale_image(image: np.ndarray, model: LoadedModel | str = ..., **options: Any) -> np.ndarray: ...
@overload
def upscale_image(image: Picture, model: LoadedModel | str = ..., **options: Any) -> Picture: ...


def upscale_image(
    image: Image.Image | np.ndarray | Picture,
    model: LoadedModel | str = "bicubic",
    *,
    scale: int | None = None,
    outscale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | str = "auto",
    tile_overlap: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Image.Image | np.ndarray | Picture:
    """Upscale one image and return it in the type it came in.

    Args:
        image: a PIL image, a numpy array (``HxW``, ``HxWx1/3/4``; uint8, uint16 or float
            0..1) or a :class:`~upscale_cli.io.Picture`.
        model: a :class:`LoadedModel` (see :func:`upscale_cli.load_model`) or a model name.
        scale: the scale when ``model`` is a name.
        outscale, width, height: final size, as the CLI's ``--outscale``/``--width``/``--height``.
        device, precision, tile, tile_overlap, batch_size: engine options (see
            :class:`~upscale_cli.engine.Upscaler`).
        progress: called with ``(tiles_done, tiles_total)``.

    A numpy array comes back with the same dtype; a PIL image in the mode
    :func:`~upscale_cli.io.to_pil` chooses for its depth and channels.
    """
    if isinstance(model, str):
        from .loader import load_model

        model = load_model(model, scale)
    elif scale is not None and scale != model.scale:
        raise UsageError(f"the loaded model runs at x{model.scale}, not x{scale}")
    upscaler = Upscaler(
        model, device=device, precision=precision, tile=tile, tile_overlap=tile_overlap, batch_size=batch_size
    )
    if isinstance(image, Picture):
        pic = image
    elif isinstance(image, Image.Image):
        pic = from_pil(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pic = from_numpy(np.asarray(image))
    else:
        raise UsageError(f"upscale_image takes a PIL image, a numpy array or a Picture, not {type(image).__name__}")
    out = upscale_picture(pic, upscaler, outscale=outscale, width=width, height=height, progress=progress)
    if isinstance(image, Picture):
        return out
    if isinstance(image, Image.Image):
        return to_pil(out)
    return to_numpy(out, dtype=np.asarray(image).dtype)
