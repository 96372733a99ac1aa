"""Image I/O: decode any Pillow image into a :class:`Picture`, encode it back atomically.

A :class:`Picture` is what the engine and the API work on: a float32 colour tensor (grey or
RGB, nominally 0..1), an optional alpha plane, and what is needed to write the result back
the way the input was (sample depth, ICC profile, EXIF, source format and path).

Reading (:func:`read_image`)
    * The size is checked against ``max_pixels`` from the file header, before any pixel is
      decoded; Pillow's own decompression-bomb check is replaced by this one while we read.
    * EXIF orientation is applied (the same transforms as ``ImageOps.exif_transpose``) and the
      tag is reset to 1 in the EXIF that is kept.
    * Modes: ``1`` and ``L`` -> grey; ``LA`` -> grey + alpha; ``P``/``PA`` -> RGB, + alpha when
      the palette has transparency; ``RGB``/``RGBX``, ``RGBA``/``RGBa``; ``CMYK``/``YCbCr`` ->
      RGB (a plain Pillow conversion: no colour management, the CMYK ICC profile is dropped);
      ``I;16*`` -> grey, 16 bits; ``I`` (int32) -> grey, value/65535; ``F`` -> grey, as is.
      A transparency key (PNG tRNS, GIF) on a grey or RGB image becomes an alpha plane.
    * 16-bit RGB, RGBA and grey+alpha PNG, and 16-bit RGB/RGBA TIFF, keep all 16 bits.  Pillow
      has no 16-bit colour mode: its decoder unpacks only the high byte of each sample.  We let
      Pillow's own decoder (which undoes PNG filtering, TIFF compression and interlacing) run
      a second time with the opposite-endian raw mode, which unpacks the low bytes, and join
      the two.  16-bit grey+alpha PNG is decoded once as 4 bytes per pixel.  Premultiplied
      16-bit TIFF cannot be split this way and is read at 8 bits with an
      :class:`ImageIOWarning`.
    * Multi-frame files (GIF, APNG, multi-page TIFF): the first frame only.
    * Every failure (missing, empty, not an image, corrupt, truncated, too large) raises
      :class:`~upscale_cli.errors.InputError` whose message is one line: ``"<path>: <cause>"``.

Writing (:func:`write_image`)
    * Formats: PNG, JPEG, WebP, TIFF.  The output mode follows the input (:func:`output_mode`):
      grey stays grey (WebP has no grey mode: RGB), alpha is kept (JPEG: flattened onto white
      with an :class:`ImageIOWarning`), ``1`` is written as ``L`` and ``P`` as RGB/RGBA (an
      upscaled image has too many colours for a palette), more than 8 bits are written as 16
      bits in PNG and TIFF (``I`` and ``F`` stay ``I``/``F`` in TIFF), 8 bits in JPEG/WebP.
      Pillow cannot encode 16-bit colour, so those PNG/TIFF files are encoded here (PNG:
      Paeth-filtered zlib stream; TIFF: baseline, deflate with horizontal predictor).
    * The ICC profile is written where the format allows it (all four), when its colour space
      matches the output channels; EXIF (orientation 1) into PNG, JPEG, WebP and the TIFFs
      Pillow writes (not the 16-bit colour TIFFs encoded here).  From a TIFF source only the
      descriptive IFD0 tags (make, model, date, artist...) are kept as EXIF.
    * The write is atomic: temp file in the target folder, fsync, then an atomic rename (a
      hard link when the target must not be overwritten, so a file that appears meanwhile is
      not clobbered either).  The temp file is removed on any exception, Ctrl-C included.
    * An existing target is refused (:class:`OutputExistsError`) unless ``overwrite=True``; a
      target that is the picture's own source file (or one of ``protect``) is always refused.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError, features
from torch import Tensor

from .encoders import EXIF_HEADER as _EXIF_HEADER
from .encoders import write_png as _write_png
from .encoders import write_tiff16 as _write_tiff16
from .errors import InputError, UsageError
from .files import UMASK as _UMASK

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageIOWarning",
    "OutputExistsError",
    "Picture",
    "from_numpy",
    "from_pil",
    "image_size",
    "is_image_file",
    "output_mode",
    "read_image",
    "resolve_output_format",
    "to_numpy",
    "to_pil",
    "write_image",
]

Image.init()  # register every plugin so that extensions and formats below are known

_ORIENTATION = 0x0112  # EXIF / TIFF tag
_ALIASES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}
_CANONICAL_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif"}
_SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
                  ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
_HOLDS_ALPHA = {"PNG": True, "JPEG": False, "WEBP": True, "TIFF": True}
_MAX_SIDE = {"JPEG": 65535, "WEBP": 16383}
_DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 90}
# Extensions of raster formats Pillow can open that people feed to an upscaler.
_CANDIDATE_EXTENSIONS = (
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib",
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".pcx", ".sgi", ".ico", ".dds",
    ".jp2", ".j2k", ".jpx", ".avif",
)
_REGISTERED = Image.registered_extensions()
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ext for ext in _CANDIDATE_EXTENSIONS if _REGISTERED.get(ext) in Image.OPEN
)
"""Lower-case extensions (with the dot) of image files this Pillow build can read."""

# Pillow's raw mode for a 16-bit colour image -> the raw mode that unpacks the other byte
# ("N" = native order, which libtiff hands over).
_NATIVE = "L" if sys.byteorder == "little" else "B"
_OTHER_BYTE = {
    f"{m};16{e}": f"{m};16{o}"
    for m in ("RGB", "RGBA", "RGBX")
    for e, o in (("B", "L"), ("L", "B"), ("N", "B" if _NATIVE == "L" else "L"))
}
# TIFF IFD0 tags carried over as EXIF: description, make, model, software, date, artist, copyright.
_TIFF_DESCRIPTIVE = (270, 271, 272, 305, 306, 315, 33432)
_LA16 = "LA;16B"  # 16-bit grey+alpha PNG; decoded as "RGBA" = [L hi, L lo, A hi, A lo]


class ImageIOWarning(UserWarning):
    """A note about an image that was read or written in a lossy way (alpha flattened...)."""


class OutputExistsError(InputError):
    """The output file exists and ``overwrite`` was not given."""


@dataclass
class Picture:
    """A decoded image.

    Attributes:
        color: ``(C, H, W)`` float tensor, ``C`` = 1 (grey) or 3 (RGB), nominally 0..1
            (8-bit value/255, 16-bit and ``I`` value/65535, ``F`` as stored).
        alpha: ``(1, H, W)`` float tensor in 0..1 (straight, not premultiplied), or None.
        bits: sample depth to write back: 8, 16, or 32 (``I``/``F`` modes, float arrays).
        mode: the source's mode ("RGB", "I;16", "P", ...; a 16-bit RGB PNG is "RGB" with
            ``bits=16``); informative, and ``I``/``F`` are kept when writing TIFF.
        icc: the ICC profile, or None.
        exif: EXIF block (``Exif\\0\\0`` + TIFF structure) with orientation 1, or None.
        format: Pillow's name of the source format ("PNG", "JPEG"...), or None.
        source: the file it was read from, or None; :func:`write_image` never writes onto it.

    Build a result with :meth:`with_pixels`, which keeps the metadata.
    """

    color: Tensor
    alpha: Tensor | None = None
    bits: int = 8
    mode: str = "RGB"
    icc: bytes | None = field(default=None, repr=False)
    exif: bytes | None = field(default=None, repr=False)
    format: str | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        c = self.color
        if c.ndim != 3 or c.shape[0] not in (1, 3) or not c.is_floating_point():
            raise ValueError(f"Picture.color must be a float (1|3, H, W) tensor, got {tuple(c.shape)} {c.dtype}")
        a = self.alpha
        if a is not None and (a.shape != (1, *c.shape[1:]) or not a.is_floating_point()):
            raise ValueError(f"Picture.alpha must be a float (1, {c.shape[1]}, {c.shape[2]}) tensor, got {tuple(a.shape)}")
        if self.bits not in (8, 16, 32):
            raise ValueError(f"Picture.bits must be 8, 16 or 32, got {self.bits}")

    @property
    def width(self) -> int:
        return int(self.color.shape[2])

    @property
    def height(self) -> int:
        return int(self.color.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as Pillow's ``Image.size``."""
        return self.width, self.height

    @property
    def channels(self) -> int:
        """Colour channels: 1 (grey) or 3 (RGB); alpha not counted."""
        return int(self.color.shape[0])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    def with_pixels(self, color: Tensor, alpha: Tensor | None) -> Picture:
        """A copy with new pixels (e.g. the upscaled ones) and the same metadata and depth."""
        return replace(self, color=color, alpha=alpha)


# --------------------------------------------------------------------------- reading


_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _own_pixel_limit() -> Iterator[int | None]:
    """Switch Pillow's decompression-bomb check off while we decode; yield its configured limit.

    :func:`read_image` checks the size itself (so that the limit can be raised past
    Pillow's and the refusal names ``--max-pixels``).  Nested and concurrent reads share one
    saved value; the last one out restores it.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
        pillow_limit = _limit_saved
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd metadata are not ours to show
            yield pillow_limit
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _input_error(path: Path, exc: BaseException) -> InputError:
    """Translate an exception raised while reading ``path`` into a one-line InputError."""
    if isinstance(exc, FileNotFoundError):
        cause = "no such file"
    elif isinstance(exc, IsADirectoryError):
        cause = "is a folder, not an image"
    elif isinstance(exc, PermissionError):
        cause = "permission denied"
    elif isinstance(exc, UnidentifiedImageError):
        cause = "not an image (unrecognised format)"
    elif isinstance(exc, MemoryError):
        cause = "not enough memory to decode it"
    else:
        detail = _one_line(str(exc)) or type(exc).__name__
        cause = f"corrupt or truncated image ({detail})"
    return InputError(f"{path}: {cause}")


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None, pillow_limit: int | None) -> None:
    limit = pillow_limit if max_pixels is None else max_pixels
    if max_pixels is not None and max_pixels < 0:
        raise UsageError(f"--max-pixels must be >= 0 (0 = no limit), got {max_pixels}")
    pixels = size[0] * size[1]
    if limit and pixels > limit:
        raise InputError(
            f"{path}: {size[0]}x{size[1]} = {pixels} pixels is over the limit of {limit}"
            " (raise it with --max-pixels)"
        )


@contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open ``path`` lazily (header only) with the size checked; errors -> InputError."""
    with _own_pixel_limit() as pillow_limit:
        try:
            if path.is_file() and path.stat().st_size == 0:
                raise InputError(f"{path}: empty file (0 bytes)")
            img = Image.open(path)
        except InputError:
            raise
        except Exception as exc:
            raise _input_error(path, exc) from exc
        with img:
            _check_pixels(path, img.size, max_pixels, pillow_limit)
            yield img


def _tile_rawmode(img: Image.Image) -> str | None:
    tile = getattr(img, "tile", None)
    if not tile:
        return None
    args = tile[0].args
    raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    return raw if isinstance(raw, str) else None


def _with_rawmode(img: ImageFile.ImageFile, rawmode: str) -> None:
    """Make Pillow's decoder unpack the file's samples with ``rawmode`` (before ``load``)."""
    tiles = []
    for t in img.tile:
        args = rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:])
        tiles.append(t._replace(args=args))
    img.tile = tiles


def _load_low_bytes(path: Path, rawmode: str) -> np.ndarray:
    """Decode ``path`` again, unpacking the low byte of every 16-bit sample."""
    with Image.open(path) as again:
        _with_rawmode(again, _OTHER_BYTE[rawmode])
        again.load()
        return np.asarray(again)


def _apply_key(img: Image.Image, samples: np.ndarray) -> np.ndarray | None:
    """Alpha (0 or full) from a transparency key colour (PNG tRNS, GIF), in sample units."""
    key = img.info.get("transparency")
    if key is None or isinstance(key, bytes):
        return None
    key_arr = np.asarray(key if isinstance(key, tuple) else (key,), dtype=np.int64)
    if key_arr.size != samples.shape[2]:
        return None
    return np.where((samples == key_arr).all(axis=2, keepdims=True), 0, 1).astype(np.float32)


def _decoded(
    img: Image.Image, path: Path | None, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, int, float, str]:
    """Decode: (colour HxWxC float32, alpha HxWx1 float32 0..1 or None, bits, peak, mode).

    ``peak`` is the sample value that maps to 1.0.  ``path`` allows the second decode of
    16-bit colour files; without it they come out at 8 bits.  Lossy reads append to ``notes``.
    """
    mode = img.mode
    rawmode = _tile_rawmode(img) if path is not None else None  # gone once loaded
    if rawmode == _LA16:
        _with_rawmode(img, "RGBA")
    img.load()
    if rawmode == _LA16:
        b = np.asarray(img).astype(np.uint16)
        la = (b[..., 0::2] << 8) | b[..., 1::2]
        return la[..., :1].astype(np.float32), la[..., 1:].astype(np.float32) / 65535, 16, 65535.0, "LA"
    if rawmode in _OTHER_BYTE and path is not None:
        high = np.asarray(img).astype(np.uint16)
        samples = (high << 8) | _load_low_bytes(path, rawmode)
        alpha = samples[..., 3:].astype(np.float32) / 65535 if mode == "RGBA" else _apply_key(img, samples)
        return samples[..., :3].astype(np.float32), alpha, 16, 65535.0, mode
    if rawmode and rawmode.startswith("RGBa;16"):
        notes.append(f"{path}: premultiplied 16-bit TIFF, read at 8 bits")

    if mode.startswith("I;16"):
        samples = np.asarray(img).astype(np.float32)[..., None]
        return samples, _apply_key(img, samples), 16, 65535.0, "I;16"
    if mode in ("I", "F"):
        samples = np.asarray(img).astype(np.float32)[..., None]
        return samples, None, 32, (65535.0 if mode == "I" else 1.0), mode
    if mode in ("1", "L"):
        samples = np.asarray(img.convert("L"))[..., None]
        return samples.astype(np.float32), _apply_key(img, samples), 8, 255.0, mode
    if mode in ("LA", "La"):
        la = np.asarray(img.convert("LA")).astype(np.float32)
        return la[..., :1], la[..., 1:] / 255, 8, 255.0, mode
    if mode in ("P", "PA", "RGBA", "RGBa") or (mode == "RGB" and "transparency" not in img.info):
        target = "RGBA" if mode != "RGB" and img.has_transparency_data else "RGB"
        rgb = np.asarray(img.convert(target)).astype(np.float32)
        return rgb[..., :3], (rgb[..., 3:] / 255 if target == "RGBA" else None), 8, 255.0, mode
    if mode == "RGB":  # with a transparency key colour
        samples = np.asarray(img)
        return samples.astype(np.float32), _apply_key(img, samples), 8, 255.0, mode
    try:  # CMYK, YCbCr, RGBX, HSV...: Pillow's plain conversion
        rgb = np.asarray(img.convert("RGB")).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {mode}") from exc
    return rgb, None, 8, 255.0, mode


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an ``H x W x C`` array (ImageOps.exif_transpose's transforms)."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return a[:, ::-1]
    if orientation == 3:  # ROTATE_180
        return a[::-1, ::-1]
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return a[::-1]
    if orientation == 5:  # TRANSPOSE
        return a.transpose(1, 0, 2)
    if orientation == 6:  # ROTATE_270 (clockwise)
        return np.rot90(a, -1)
    if orientation == 7:  # TRANSVERSE
        return a.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return np.rot90(a, 1)
    return a


def _exif(img: Image.Image) -> tuple[bytes | None, int]:
    """(EXIF bytes with orientation 1, orientation to apply) of a loaded image; ``img`` is
    not modified.

    A TIFF's "EXIF" is its whole IFD0 (strip offsets and all): only its descriptive tags
    (:data:`_TIFF_DESCRIPTIVE`) are kept.  Pillow applies a TIFF's orientation on load.
    """
    try:
        exif = img.getexif()
        orientation = int(exif.get(_ORIENTATION, 1))
        if img.format == "TIFF":
            kept = Image.Exif()
            kept.update((tag, exif[tag]) for tag in _TIFF_DESCRIPTIVE if tag in exif)
            return (kept.tobytes() if len(kept) else None), 1
        if len(exif) == 0:
            return None, 1
        raw = img.info.get("exif")
        if orientation != 1 or not isinstance(raw, bytes):
            copy = Image.Exif()
            copy.load(exif.tobytes())
            copy[_ORIENTATION] = 1
            raw = copy.tobytes()
        elif not raw.startswith(_EXIF_HEADER):
            raw = _EXIF_HEADER + raw
    except Exception:  # corrupt EXIF: ignore it, as viewers do
        return None, 1
    return raw, orientation if orientation in range(1, 9) else 1


def _tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


def _picture(img: Image.Image, path: Path | None, notes: list[str], *, orient: bool) -> Picture:
    color, alpha, bits, peak, mode = _decoded(img, path, notes)
    exif, orientation = _exif(img)
    if orient:
        color = _orient(color, orientation)
        alpha = None if alpha is None else _orient(alpha, orientation)
    if peak != 1.0:
        color = color / np.float32(peak)
    icc = img.info.get("icc_profile") or None
    return Picture(
        color=_tensor(color),
        alpha=None if alpha is None else _tensor(alpha),
        bits=bits,
        mode=mode,
        icc=icc if _icc_space(icc) in (b"GRAY", b"RGB ") else None,
        exif=exif,
        format=img.format,
        source=path,
    )


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Picture:
    """Decode the image file at ``path`` (first frame), EXIF orientation applied.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (checked from the header before
            decoding); None = Pillow's ``Image.MAX_IMAGE_PIXELS``; 0 = no limit.

    Raises:
        InputError: one line, ``"<path>: <cause>"``: missing, empty, not an image, corrupt or
            truncated, or over the pixel limit (the message names ``--max-pixels``).
        UsageError: ``max_pixels`` is negative.
    """
    path = Path(path)
    notes: list[str] = []
    with _opened(path, max_pixels) as img:
        try:
            pic = _picture(img, path, notes, orient=True)
        except Exception as exc:
            raise _input_error(path, exc) from exc
    for note in notes:  # outside _opened, which silences Pillow's own warnings
        warnings.warn(ImageIOWarning(note), stacklevel=2)
    return pic


def image_size(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image` would return it, from the header only.

    Orientations 5-8 swap width and height (for a PNG, only when its eXIf chunk comes before
    the pixels).  Same errors as :func:`read_image`; the pixels are not validated.
    """
    path = Path(path)
    with _opened(path, max_pixels) as img:
        w, h = img.size
        if img.format == "TIFF" or (img.format == "PNG" and "exif" not in img.info):
            # Pillow reports a TIFF's size already oriented; for a PNG it would decode the
            # pixels to look for an eXIf chunk after them
            return w, h
        try:
            orientation = img.getexif().get(_ORIENTATION, 1)
        except Exception:
            return w, h
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def from_pil(img: Image.Image, *, apply_orientation: bool = False) -> Picture:
    """A :class:`Picture` of an in-memory Pillow image (any mode :func:`read_image` takes).

    EXIF orientation is applied only when asked (an in-memory image is usually upright
    already).  16-bit colour is not available here: Pillow holds such images at 8 bits.
    """
    try:
        return _picture(img, None, [], orient=apply_orientation)
    except ValueError as exc:
        raise UsageError(f"cannot use this image: {_one_line(str(exc))}") from exc


def from_numpy(arr: np.ndarray, *, icc: bytes | None = None, exif: bytes | None = None) -> Picture:
    """A :class:`Picture` of an ``HxW``, ``HxWx1`` (grey), ``HxWx2`` (grey+alpha), ``HxWx3``
    (RGB) or ``HxWx4`` (RGBA) array: uint8 (0..255), uint16 (0..65535) or float (0..1)."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or 0 in a.shape:
        raise UsageError(f"expected an HxW, HxWx1, HxWx2, HxWx3 or HxWx4 array, got shape {np.shape(arr)}")
    if a.dtype == np.uint8:
        bits, peak = 8, 255.0
    elif a.dtype == np.uint16:
        bits, peak = 16, 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        bits, peak = 32, 1.0
    else:
        raise UsageError(f"unsupported array dtype {a.dtype}: use uint8, uint16 or float32 (0..1)")
    a = a.astype(np.float32) / np.float32(peak)
    c = 1 if a.shape[2] <= 2 else 3
    has_alpha = a.shape[2] in (2, 4)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    if mode == "L" and bits > 8:
        mode = "I;16" if bits == 16 else "F"
    return Picture(
        color=_tensor(a[..., :c]),
        alpha=_tensor(a[..., c:]) if has_alpha else None,
        bits=bits,
        mode=mode,
        icc=icc,
        exif=exif,
    )


# --------------------------------------------------------------------------- output modes


def _icc_space(icc: bytes | None) -> bytes | None:
    """The colour-space signature of an ICC profile (b"RGB ", b"GRAY", b"CMYK"...)."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def output_mode(pic: Picture, format: str | None) -> str:
    """The mode ``pic`` is written in for ``format`` ("PNG", "JPEG", "WEBP", "TIFF"; None =
    an in-memory Pillow image, see :func:`to_pil`).

    Returns a Pillow mode ("L", "LA", "RGB", "RGBA", "I;16", "I", "F") or, for 16-bit colour
    that Pillow cannot hold, "LA;16", "RGB;16", "RGBA;16".
    """
    grey, alpha, deep = pic.channels == 1, pic.has_alpha, pic.bits > 8
    if format == "JPEG":
        return "L" if grey else "RGB"
    if format == "WEBP":
        return "RGBA" if alpha else "RGB"
    if grey and not alpha:
        if not deep:
            return "L"
        if format in (None, "TIFF") and pic.mode in ("I", "F"):
            return pic.mode
        return "F" if format is None and pic.bits == 32 else "I;16"
    base = ("LA" if grey else "RGB") + ("A" if alpha and not grey else "")
    if not deep or format is None:
        return base
    if format == "TIFF" and grey:  # Pillow reads no 16-bit grey+alpha TIFF: grey as RGB
        return "RGBA;16"
    return base + ";16"


def _quantise(x: np.ndarray, peak: int, dtype: type) -> np.ndarray:
    """``clip(x, 0, 1) * peak`` rounded half to even (as ``np.rint``), as C-contiguous ``dtype``.

    In torch, whose element-wise kernels use every core: 0.1 s instead of 0.5 s for numpy on a
    4000x4000 RGB output here."""
    q = torch.from_numpy(x).clamp(0.0, 1.0).mul_(peak).round_()
    return q.to(torch.uint8 if dtype is np.uint8 else torch.int32).contiguous().numpy().astype(dtype, copy=False)


def _hwc(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)


def _samples(pic: Picture, mode: str) -> np.ndarray:
    """``H x W x C`` samples of ``pic`` for an output ``mode`` (see :func:`output_mode`)."""
    color = _hwc(pic.color)
    alpha = None if pic.alpha is None else np.clip(_hwc(pic.alpha), 0.0, 1.0)
    if mode in ("L", "RGB") and alpha is not None:  # flatten onto white
        color = np.clip(color, 0.0, 1.0) * alpha + (1.0 - alpha)
        alpha = None
    if mode in ("RGB", "RGBA", "RGB;16", "RGBA;16") and color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    if mode == "F":
        return color
    if mode == "I":
        return np.rint(np.clip(color * 65535.0, -(2.0**31), 2.0**31 - 1)).astype(np.int32)
    planes = color if alpha is None or mode in ("L", "RGB", "I;16") else np.concatenate([color, alpha], 2)
    if mode.endswith("16"):
        return _quantise(planes, 65535, np.uint16)
    return _quantise(planes, 255, np.uint8)


def to_pil(pic: Picture) -> Image.Image:
    """A Pillow image of ``pic``, mode ``output_mode(pic, None)``: L, LA, RGB, RGBA (8 bits;
    16-bit colour is rounded to 8 bits, Pillow has no deeper colour mode), or I;16, I, F for
    deep grey.  ``info`` carries ``icc_profile`` and ``exif`` when present."""
    mode = output_mode(pic, None)
    a = _samples(pic, mode)
    img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)  # uint16 -> I;16, int32 -> I...
    if _icc_fits(pic.icc, a.shape[2]):
        img.info["icc_profile"] = pic.icc
    if pic.exif:
        img.info["exif"] = pic.exif
    return img


def to_numpy(pic: Picture, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``pic`` as an ``HxW`` (grey), ``HxWx2`` (grey+alpha), ``HxWx3`` or ``HxWx4`` array.

    ``dtype`` defaults to uint8 for 8-bit pictures, uint16 for 16-bit ones, float32 (0..1,
    not clipped) otherwise; integer outputs are clipped to 0..1 and rounded.
    """
    dt = np.dtype(dtype or {8: np.uint8, 16: np.uint16}.get(pic.bits, np.float32))
    planes = [_hwc(pic.color)] + ([] if pic.alpha is None else [_hwc(pic.alpha)])
    a = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    if dt == np.uint8:
        a = _quantise(a, 255, np.uint8)
    elif dt == np.uint16:
        a = _quantise(a, 65535, np.uint16)
    elif np.issubdtype(dt, np.floating):
        a = a.astype(dt)
    else:
        raise UsageError(f"unsupported output dtype {dt}: use uint8, uint16 or a float type")
    return a[..., 0] if a.shape[2] == 1 else a


# --------------------------------------------------------------------------- formats


def resolve_output_format(
    requested: str, input_path: str | os.PathLike[str] | None, has_alpha: bool
) -> tuple[str, str]:
    """``(format, extension)`` for an output: format is "PNG" | "JPEG" | "WEBP" | "TIFF",
    extension has its dot (".png").

    ``requested`` is ``auto|png|jpg|jpeg|webp|tif|tiff`` (any case).  ``auto`` keeps the
    input's format and extension spelling (".JPEG" stays ".JPEG") when it is one of the
    four and can hold alpha if there is alpha; otherwise PNG.  An explicit format gets its
    canonical extension (.png, .jpg, .webp, .tif); JPEG with alpha is honoured (flattened on
    write).

    Raises:
        UsageError: unknown format (the message names ``--format``).
    """
    req = requested.strip().lower().lstrip(".")
    if req != "auto":
        if req not in _ALIASES:
            raise UsageError(f"unknown --format {requested!r}: choose auto, png, jpg, webp or tiff")
        fmt = _ALIASES[req]
        return fmt, _CANONICAL_EXT[fmt]
    suffix = Path(input_path).suffix if input_path is not None else ""
    fmt = _SUFFIX_FORMAT.get(suffix.lower())
    if fmt is None or (has_alpha and not _HOLDS_ALPHA[fmt]):
        return "PNG", ".png"
    return fmt, suffix


def is_image_file(path: str | os.PathLike[str], *, sniff: bool = False) -> bool:
    """Whether ``path`` is a file to read as an image: by extension (:data:`IMAGE_EXTENSIONS`),
    or with ``sniff=True`` also by content (Pillow recognises its header)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if not sniff:
        return False
    try:
        with _own_pixel_limit(), Image.open(p):
            return True
    except Exception:
        return False


# --------------------------------------------------------------------------- encoders


def _icc_fits(icc: bytes | None, channels: int) -> bool:
    return _icc_space(icc) == (b"GRAY" if channels <= 2 else b"RGB ")


def _pillow_options(fmt: str, quality: int | None, icc: bytes | None, exif: bytes | None) -> dict:
    opts: dict = {}
    if icc:
        opts["icc_profile"] = icc
    if exif:
        opts["exif"] = exif
    if fmt in _DEFAULT_QUALITY:
        opts["quality"] = _DEFAULT_QUALITY[fmt] if quality is None else quality
        if fmt == "JPEG" and opts["quality"] >= 90:
            opts["subsampling"] = 0  # 4:4:4: keep the detail the upscaler made
    if fmt == "TIFF" and features.check("libtiff"):
        opts["compression"] = "tiff_deflate"
    return opts


def _encoder(pic: Picture, fmt: str, quality: int | None, path: Path) -> Callable[[BinaryIO], None]:
    """Validate and convert ``pic`` for ``fmt`` now; return the function that writes the bytes."""
    if quality is not None and not 1 <= quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {quality}")
    side = _MAX_SIDE.get(fmt)
    if side and max(pic.size) > side:
        raise InputError(f"{path}: {pic.width}x{pic.height} is too large for {fmt} (max {side} px a side); use --format png")
    mode = output_mode(pic, fmt)
    if pic.has_alpha and mode in ("L", "RGB"):
        warnings.warn(ImageIOWarning(f"{path}: {fmt} has no alpha channel, transparency flattened onto white"), stacklevel=3)
    a = _samples(pic, mode)
    icc = pic.icc if _icc_fits(pic.icc, a.shape[2]) else None
    exif = pic.exif
    if fmt == "PNG":  # every PNG mode, 8 and 16 bits: our parallel encoder (encoders.py)
        return lambda f: _write_png(f, a, icc, exif)
    if mode in ("LA;16", "RGB;16", "RGBA;16"):
        return lambda f: _write_tiff16(f, a, icc)
    img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    opts = _pillow_options(fmt, quality, icc, exif)
    return lambda f: img.save(f, format=fmt, **opts)


# --------------------------------------------------------------------------- atomic writes




def _same_file(a: Path, b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(path: Path, pic: Picture, overwrite: bool, protect: Iterable[str | os.PathLike[str]]) -> None:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, cannot write the image there")
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it, or --skip-existing)")
    guarded = [pic.source] if pic.source is not None else []
    if any(_same_file(path, p) for p in [*guarded, *protect]):
        raise InputError(f"{path}: refusing to write onto an input image")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path, overwrite: bool) -> None:
    """Move the finished temp file to ``path`` atomically; without ``overwrite``, never clobber."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with EEXIST if the target appeared meanwhile
    except FileExistsError:
        raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it, or --skip-existing)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links on this file system: check, then rename
            raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it, or --skip-existing)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None], overwrite: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def write_image(
    pic: Picture,
    path: str | os.PathLike[str],
    format: str = "auto",
    quality: int | None = None,
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Encode ``pic`` into ``path`` atomically and return the path.

    Args:
        pic: the picture; its output mode is :func:`output_mode` for the format.
        path: the target file; missing parent folders are created.
        format: ``auto`` (from the target's extension: .png, .jpg/.jpeg/.jpe/.jfif, .webp,
            .tif/.tiff) or png|jpg|jpeg|webp|tif|tiff.
        quality: 1..100 for JPEG (default 95, 4:4:4 chroma from 90 up) and WebP (default 90);
            ignored for PNG and TIFF (lossless; TIFF is deflate-compressed).
        overwrite: replace an existing file (never ``pic.source`` or one of ``protect``).
        protect: more paths never to write onto (e.g. all inputs of a run).

    Raises:
        OutputExistsError: the target exists and ``overwrite`` is False.
        InputError: the target is an input, a folder, too large for the format, or the write
            failed (disk full, permission...); one line naming the file.
        UsageError: unknown format or bad quality.

    Warns:
        ImageIOWarning: alpha flattened onto white (JPEG).
    """
    path = Path(path)
    if format.strip().lower() == "auto":
        fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise UsageError(f"{path}: cannot tell the output format from the extension; use --format png|jpg|webp|tiff")
    else:
        fmt = resolve_output_format(format, None, pic.has_alpha)[0]
    _check_target(path, pic, overwrite, protect)
    write = _encoder(pic, fmt, quality, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, write, overwrite)
    except (OSError, ValueError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(str(exc))
        raise InputError(f"{path}: cannot write it ({cause})") from exc
    return path
