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

import warnings
from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from . import devices
from .engine import Upscaler
from .errors import InputError, UsageError
from .io import ImageInfo, Picture, from_numpy, from_pil, map_frames, to_numpy, to_pil
from .models.loaded import LoadedModel
from .options import PictureOptions, RunOptions
from .resize import imresize

API_GROUPS = ("model", "engine", "picture")
"""The option groups :func:`upscale_image` takes (see :class:`~upscale_cli.options.RunOptions`)."""
_GIB = 1 << 30


def target_size(
    height: int, width: int, scale: int, outscale: float | None, out_width: int | None, out_height: int | None
) -> tuple[int, int]:
    """Output ``(height, width)`` (see :meth:`PictureOptions.final_size`, which also checks the values)."""
    return PictureOptions(outscale=outscale, width=out_width, height=out_height).final_size(height, width, scale)


def output_bytes(info: ImageInfo, scale: int, picture: PictureOptions) -> int:
    """Bytes of memory an image's output takes, besides the network's activations.

    The engine's float32 RGB output (and the alpha) at the model's scale; a float32 copy at the
    final size when it is resampled or grey; per frame, the float32 quantising temporary and
    the encoded samples; the frames before the last are held, as float32, until the file is
    written.
    """
    planes = info.channels + int(info.has_alpha)
    model_px = scale * scale * info.width * info.height
    out_h, out_w = picture.final_size(info.height, info.width, scale)
    final_px = out_h * out_w
    engine = 4 * (3 + int(info.has_alpha)) * model_px
    copy = 4 * planes * final_px if (final_px != model_px or info.channels != 3) else 0
    frame = planes * final_px * (4 + info.bits // 8)
    return engine + copy + info.frame_count * frame + (info.frame_count - 1) * 4 * planes * final_px


def check_memory(info: ImageInfo, upscaler: Upscaler, picture: PictureOptions) -> None:
    """Refuse, before decoding, an image whose output (:func:`output_bytes`) and, on the CPU, one
    batch of tile activations (:meth:`Upscaler.activation_bytes`) would not fit the available RAM.

    Raises:
        InputError: one line with the sizes, the memory needed and available, and the flags
            that lower it.
    """
    need = output_bytes(info, upscaler.model.scale, picture)
    tiles = upscaler.activation_bytes(info.height, info.width) if upscaler.device.type == "cpu" else 0
    available = devices.available_ram()
    if need + tiles <= available:
        return
    out_h, out_w = picture.final_size(info.height, info.width, upscaler.model.scale)
    frames = f" x {info.frame_count} frames" if info.frame_count > 1 else ""
    if tiles > need:
        hint = "use a smaller --tile (or --tile auto)"
    else:
        hint = "lower --outscale/--width/--height or --scale, or refuse such inputs with --max-pixels"
    raise InputError(
        f"{info.path}: {info.width}x{info.height} -> {out_w}x{out_h}{frames} needs about "
        f"{(need + tiles) / _GIB:.1f} GiB of memory, {available / _GIB:.1f} GiB is available; {hint}"
    )


def _upscale_frame(pic: Picture, upscaler: Upscaler, picture: PictureOptions,
                   progress: Callable[[int, int], None] | None) -> Picture:
    """One frame through the network (grey as three equal channels, alpha by bicubic), resampled
    to the final size and clamped to 0..1."""
    scale = upscaler.model.scale
    out_h, out_w = picture.final_size(pic.height, pic.width, scale)
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


def upscale_picture(
    pic: Picture,
    upscaler: Upscaler,
    picture: PictureOptions = PictureOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> Picture:
    """Upscale every frame of a decoded picture with an :class:`Upscaler` (the CLI's per-image
    step); ``progress(tiles_done, tiles_total)`` counts the tiles of all frames."""
    frames = pic.frame_count
    done = [0]

    def frame(one: Picture) -> Picture:
        def report(k: int, total: int) -> None:
            if progress is not None:
                progress(done[0] * total + k, frames * total)

        out = _upscale_frame(one, upscaler, picture, report)
        done[0] += 1
        return out

    return map_frames(pic, frame)


@overload
def upscale_image(image: Image.Image, model: LoadedModel | str | None = ..., **options: Any) -> Image.Image: ...
@overload
def upscale_image(image: np.ndarray, model: LoadedModel | str | None = ..., **options: Any) -> np.ndarray: ...
@overload
def upscale_image(image: Picture, model: LoadedModel | str | None = ..., **options: Any) -> Picture: ...


def upscale_image(
    image: Image.Image | np.ndarray | Picture,
    model: LoadedModel | str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Image.Image | np.ndarray | Picture:
    """Upscale one image and return it in the type it came in, with the command line's
    defaults (:mod:`upscale_cli.options`): model ``default``, x4 or the model's own scale.

    Args:
        image: a PIL image, a numpy array (``HxW``, ``HxWx1/3/4``; uint8, uint16 or float
            0..1) or a :class:`~upscale_cli.io.Picture` (every frame is upscaled).
        model: a :class:`LoadedModel` (see :func:`upscale_cli.load_model`), a model name, or
            None for the command line's default.
        progress: called with ``(tiles_done, tiles_total)``.
        options: the command line's model, engine and final-size options by name:
            ``scale``, ``weights``, ``arch`` (when ``model`` is a name or None); ``device``,
            ``precision``, ``tile``, ``tile_overlap``, ``batch_size``, ``backend``, ``compile``
            (see :class:`~upscale_cli.engine.Upscaler`); ``outscale``, ``width``, ``height``.
            An explicit precision the model has no good measurement for runs all the same,
            with a :class:`UserWarning` saying so.

    A numpy array comes back with the same dtype; a PIL image in the mode
    :func:`~upscale_cli.io.to_pil` chooses for its depth and channels.

    Raises:
        TypeError: an unknown option.
        UsageError: a bad value, or a ``scale`` the loaded model does not run at.
    """
    if not isinstance(model, (LoadedModel, str, type(None))):
        raise UsageError(f"model must be a LoadedModel, a model name or None, not {type(model).__name__}")
    named = {"model": model} if isinstance(model, str) else {}
    try:
        opts = RunOptions.from_flat(API_GROUPS, **named, **options)
    except TypeError as exc:
        raise TypeError(f"upscale_image(): {exc}") from None
    if isinstance(model, LoadedModel):
        if opts.model.scale is not None and opts.model.scale != model.scale:
            raise UsageError(f"the loaded model runs at x{model.scale}, not x{opts.model.scale}")
        if opts.model.weights is not None or opts.model.arch is not None:
            raise UsageError("weights= and arch= choose a model to load: pass a model name or None with them")
    else:
        model = opts.model.load()
    upscaler = Upscaler(model, opts.engine)
    if upscaler.precision_note:
        warnings.warn(upscaler.precision_note, UserWarning, stacklevel=2)
    out = upscale_picture(_as_picture(image), upscaler, opts.picture, progress)
    if isinstance(image, Picture):
        return out
    if isinstance(image, Image.Image):
        return to_pil(out)
    return to_numpy(out, dtype=np.asarray(image).dtype)


def _as_picture(image: Image.Image | np.ndarray | Picture) -> Picture:
    if isinstance(image, Picture):
        return image
    if isinstance(image, Image.Image):
        return from_pil(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return from_numpy(np.asarray(image))
    raise UsageError(f"upscale_image takes a PIL image, a numpy array or a Picture, not {type(image).__name__}")
