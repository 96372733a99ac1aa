"""Image I/O: decode any Pillow image into a :class:`Picture`, encode it back atomically.

A :class:`Picture` is what the engine and the API work on: a float32 colour tensor (grey or
RGB, 0..1), an optional alpha plane, and what is needed to write the result back the way the
input was (sample depth, value range, ICC profile, EXIF, frames, source format and path).

Reading (:func:`read_image`, :func:`probe`)
    * Only a regular file is opened: a FIFO, socket, device or folder is refused from its
      ``stat`` before any ``open`` (and checked again on the open descriptor), so none blocks.
      A dangling symlink is named as such.
    * The file is read into memory once, and every decoder (Pillow's, the second pass for the
      low bytes of 16-bit samples, EXIF, ICC) works on those bytes: a file replaced during the
      read cannot give a picture made of two files.
    * The size is checked against ``max_pixels`` from the header, before any pixel is decoded
      (per frame); Pillow's own decompression-bomb check is replaced by this one while we read.
    * EXIF orientation is applied (the same transforms as ``ImageOps.exif_transpose``) and the
      tag is reset to 1 in the EXIF that is kept.
    * Modes: ``1`` and ``L`` -> grey; ``LA`` -> grey + alpha; ``P``/``PA`` -> RGB, + alpha when
      the palette has transparency; ``RGB``/``RGBX``, ``RGBA``/``RGBa``; ``CMYK``/``YCbCr`` ->
      RGB (a plain Pillow conversion: no colour management, the CMYK ICC profile is dropped);
      ``I;16*`` -> grey, 16 bits; ``I`` (int32, and signed 16-bit TIFF) -> grey, value/65535;
      ``F`` -> grey, as is.  A transparency key (PNG tRNS, GIF) becomes an alpha plane.
    * Value range: ``I`` samples outside 0..65535 and ``F`` samples outside 0..1 are mapped
      linearly onto 0..1 and their range is kept in :attr:`Picture.value_range`, which the
      writer restores (TIFF ``I``/``F`` hold it; a format that cannot is refused, see
      :func:`output_holds`).  NaN or infinite samples are refused.
    * 16-bit RGB, RGBA and grey+alpha PNG, and 16-bit RGB/RGBA TIFF, keep all 16 bits.  Pillow
      has no 16-bit colour mode: its decoder unpacks only the high byte of each sample.  A
      second Pillow decoder over the same bytes (it undoes PNG filtering, TIFF compression and
      interlacing) runs with the opposite-endian raw mode, which unpacks the low bytes, and the
      two are joined.  Premultiplied 16-bit TIFF cannot be split this way, nor can an APNG frame
      that is blended onto the ones before it: they are read at 8 bits with an
      :class:`ImageIOWarning`.
    * Frames: an animated GIF, APNG, WebP (or AVIF) and a multi-page TIFF give every frame,
      composited whole (Pillow's ``seek``), with its duration and disposal and the loop count
      (:class:`Animation`); ``first_frame=True`` reads the first only.  An MPO's extra
      pictures (previews, stereo pairs) are not frames: its first picture is the image.
    * Every failure (missing, empty, not a regular file, not an image, corrupt, truncated, too
      large) raises :class:`~upscale_cli.errors.InputError` whose message is one line:
      ``"<path>: <cause>"``.

Writing (:func:`write_image`)
    * Formats: PNG (APNG when animated), JPEG, WebP, GIF, TIFF (multi-page).  The output mode
      follows the input (:func:`output_mode`): grey stays grey (WebP has no grey mode: RGB),
      alpha is kept (JPEG: flattened onto white with an :class:`ImageIOWarning`; GIF: one
      transparent index below half opacity), ``1`` is written as ``L`` and ``P`` as RGB/RGBA
      (an upscaled image has too many colours for a palette; GIF quantises each frame to 256
      colours), more than 8 bits are written as 16 bits in PNG and TIFF (``I`` and ``F`` stay
      ``I``/``F`` in TIFF, value range restored), 8 bits in JPEG/WebP/GIF.  Pillow cannot
      encode 16-bit colour, so those files are encoded here (encoders.py), as is every PNG.
    * Animations are written with their durations, loop count and disposal; every frame is a
      whole composited frame.  JPEG holds one frame; :func:`output_holds` says so before any
      work, and the writer refuses rather than drop frames.
    * The ICC profile is written where the format allows it, when its colour space matches the
      output channels; EXIF (orientation 1) into PNG, JPEG, WebP and the TIFFs Pillow writes
      (not the 16-bit colour TIFFs encoded here).  From a TIFF source only the descriptive IFD0
      tags (make, model, date, artist...) are kept as EXIF.
    * The write is atomic: temp file ``.NAME.XXXXXXXX.tmp`` in the target folder, fsync, then an
      atomic rename (a hard link when the target must not be overwritten, so a file that
      appears meanwhile is not clobbered either).  The temp file is removed on any exception,
      Ctrl-C and SIGTERM included; one a SIGKILL left behind is swept by
      :func:`upscale_cli.files.sweep_stale_temps`.
    * An existing target is refused (:class:`OutputExistsError`) unless ``overwrite=True``; a
      target that is the picture's own source file (or one of ``protect``) is always refused.
      :func:`output_is_complete` tells a whole output from a 0-byte or truncated one.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError, features
from torch import Tensor

from .encoders import EXIF_HEADER as _EXIF_HEADER
from .encoders import write_apng as _write_apng
from .encoders import write_png as _write_png
from .encoders import write_tiff16 as _write_tiff16
from .errors import InputError, UsageError
from .files import UMASK as _UMASK
from .files import fresh_temp

__all__ = [
    "IMAGE_EXTENSIONS",
    "Animation",
    "ImageIOWarning",
    "ImageInfo",
    "OutputExistsError",
    "Picture",
    "can_hold_frames",
    "from_numpy",
    "from_pil",
    "image_size",
    "is_image_file",
    "map_frames",
    "output_holds",
    "output_is_complete",
    "output_mode",
    "probe",
    "read_image",
    "resolve_output_format",
    "to_numpy",
    "to_pil",
    "write_image",
]

Image.init()  # register every plugin so that extensions and formats below are known

_ORIENTATION = 0x0112  # EXIF / TIFF tag
_ALIASES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "tif": "TIFF", "tiff": "TIFF"}
_CANONICAL_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}
_SUFFIX_FORMAT = {".png": "PNG", ".apng": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
                  ".webp": "WEBP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}
_AUTO_KEEPS = ("PNG", "JPEG", "WEBP", "TIFF")  # auto writes a GIF input as PNG: lossless, APNG if animated
_HOLDS_ALPHA = {"PNG": True, "JPEG": False, "WEBP": True, "GIF": True, "TIFF": True}
_HOLDS_FRAMES = ("PNG", "WEBP", "GIF", "TIFF")
_CANVAS = ("PNG", "WEBP", "GIF")  # animations whose frames share one size (TIFF pages need not)
_MAX_SIDE = {"JPEG": 65535, "WEBP": 16383, "GIF": 65535}
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
_LA16 = "LA;16B"  # 16-bit grey+alpha PNG; decoded as "RGBA" = [L hi, L lo, A hi, A lo]
_SPLIT_16 = frozenset(_OTHER_BYTE) | {_LA16}  # raw modes whose samples a second decoder completes
# TIFF IFD0 tags carried over as EXIF: description, make, model, software, date, artist, copyright.
_TIFF_DESCRIPTIVE = (270, 271, 272, 305, 306, 315, 33432)
_RANGED_MODES = ("I", "F")  # the modes whose samples may lie outside the nominal 0..peak
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_DISPOSALS = ("none", "background", "previous")
_GIF_DISPOSAL = {0: "none", 1: "none", 2: "background", 3: "previous"}  # GIF89a's disposal methods
# The last bytes of a whole file: PNG's IEND chunk, JPEG's EOI marker, GIF's trailer.
_TRAILERS = {"PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82", "JPEG": b"\xff\xd9", "GIF": b";"}
_TIFF16 = ("RGB;16", "RGBA;16")  # the TIFF modes encoders.write_tiff16 writes
_FILE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"))


class ImageIOWarning(UserWarning):
    """A note about an image that was read or written in a lossy way (alpha flattened...)."""


class OutputExistsError(InputError):
    """The output file exists and ``overwrite`` was not given."""


class _Unusable(ValueError):
    """Pixels that cannot be upscaled as they are; the message is the cause shown."""


@dataclass
class Picture:
    """A decoded image (the first frame of an animation, which holds the others).

    Attributes:
        color: ``(C, H, W)`` float tensor, ``C`` = 1 (grey) or 3 (RGB), 0..1 (8-bit value/255,
            16-bit and ``I`` value/65535, ``F`` as stored; or mapped by ``value_range``).
        alpha: ``(1, H, W)`` float tensor in 0..1 (straight, not premultiplied), or None.
        bits: sample depth to write back: 8, 16, or 32 (``I``/``F`` modes, float arrays).
        mode: the source's mode ("RGB", "I;16", "P", ...; a 16-bit RGB PNG is "RGB" with
            ``bits=16``); informative, and ``I``/``F`` are kept when writing TIFF.
        icc: the ICC profile, or None.
        exif: EXIF block (``Exif\\0\\0`` + TIFF structure) with orientation 1, or None.
        format: Pillow's name of the source format ("PNG", "JPEG"...), or None.
        source: the file it was read from, or None; :func:`write_image` never writes onto it.
        value_range: ``(low, high)``: ``color`` 0 and 1 stand for these values (on the scale
            above: ``F`` as stored, ``I`` /65535) when the source's samples go outside 0..1;
            None when they do not.  Restored on writing.
        animation: the other frames and how they play (:class:`Animation`), or None for a still.

    Build a result with :meth:`with_pixels`, which keeps the metadata, and transform an
    animation frame by frame with :func:`map_frames`.
    """

    color: Tensor
    alpha: Tensor | None = None
    bits: int = 8
    mode: str = "RGB"
    icc: bytes | None = field(default=None, repr=False)
    exif: bytes | None = field(default=None, repr=False)
    format: str | None = None
    source: Path | None = None
    value_range: tuple[float, float] | None = None
    animation: Animation | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        c = self.color
        if c.ndim != 3 or c.shape[0] not in (1, 3) or not c.is_floating_point():
            raise ValueError(f"Picture.color must be a float (1|3, H, W) tensor, got {tuple(c.shape)} {c.dtype}")
        a = self.alpha
        if a is not None and (a.shape != (1, *c.shape[1:]) or not a.is_floating_point()):
            raise ValueError(
                f"Picture.alpha must be a float (1, {c.shape[1]}, {c.shape[2]}) tensor, got {tuple(a.shape)}")
        if self.bits not in (8, 16, 32):
            raise ValueError(f"Picture.bits must be 8, 16 or 32, got {self.bits}")
        r = self.value_range
        if r is not None and not (len(r) == 2 and all(math.isfinite(v) for v in r) and r[0] <= r[1]):
            raise ValueError(f"Picture.value_range must be (low, high), finite, low <= high; got {r!r}")

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

    @property
    def frames(self) -> tuple[Picture, ...]:
        """The frames after this one (empty for a still)."""
        return () if self.animation is None else self.animation.frames

    @property
    def frame_count(self) -> int:
        return 1 + len(self.frames)

    def with_pixels(self, color: Tensor, alpha: Tensor | None) -> Picture:
        """A copy with new pixels (e.g. the upscaled ones) and the same metadata, depth and range.

        Raises:
            ValueError: this is an animation: the new pixels would be one frame's; use
                :func:`map_frames`, which calls this on every frame.
        """
        if self.animation is not None:
            raise ValueError(f"an animation of {self.frame_count} frames: transform it with map_frames")
        return replace(self, color=color, alpha=alpha)


@dataclass(frozen=True)
class Animation:
    """The frames after the first of an animation or a multi-page TIFF, and how they play.

    Attributes:
        frames: the second and later frames, each a whole (composited) still :class:`Picture`.
        durations: milliseconds each frame shows, the first included (0 where the file says
            none, e.g. TIFF).
        plays: times the animation plays; 0 = forever (APNG's num_plays, WebP's loop count;
            a GIF's NETSCAPE loop count + 1, and 1 for a GIF without one).
        disposal: per frame, what the file said happens after it: "none", "background" or
            "previous" ("background" where the format says nothing).
    """

    frames: tuple[Picture, ...] = field(repr=False)
    durations: tuple[float, ...] = ()
    plays: int = 0
    disposal: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.frames) + 1
        disposal = self.disposal or ("background",) * n
        object.__setattr__(self, "disposal", tuple(disposal))
        if len(self.durations) != n or len(disposal) != n or any(d not in _DISPOSALS for d in disposal):
            raise ValueError(f"Animation: {n} frames need {n} durations and {n} of {_DISPOSALS}")
        if self.plays < 0:
            raise ValueError(f"Animation.plays must be >= 0, got {self.plays}")


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe` reads from an image file's header, without decoding its pixels.

    ``width``/``height`` are the first frame's, EXIF orientation applied; ``channels``,
    ``has_alpha`` and ``bits`` are what :func:`read_image` will give (``has_alpha`` from the
    mode and any transparency key).  The value range of ``I``/``F`` samples is known only
    once they are decoded (``range_known`` is False for them).
    """

    path: Path
    width: int
    height: int
    frames: int
    mode: str
    format: str | None
    channels: int
    has_alpha: bool
    bits: int

    @property
    def frame_count(self) -> int:
        return self.frames

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def range_known(self) -> bool:
        """False when the samples may lie outside 0..1 (``I``/``F``), which only decoding tells."""
        return self.mode not in _RANGED_MODES


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
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        cause = "no such file"
    elif isinstance(exc, IsADirectoryError):
        cause = "is a folder, not an image"
    elif isinstance(exc, PermissionError):
        cause = "permission denied"
    elif isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        cause = "symlink loop"
    elif isinstance(exc, UnidentifiedImageError):
        cause = "not an image (unrecognised format)"
    elif isinstance(exc, MemoryError):
        cause = "not enough memory to decode it"
    elif isinstance(exc, _Unusable):
        cause = str(exc)
    else:
        detail = _one_line(str(exc)) or type(exc).__name__
        cause = f"corrupt or truncated image ({detail})"
    return InputError(f"{path}: {cause}")


def _check_limit_arg(max_pixels: int | None) -> None:
    if max_pixels is not None and max_pixels < 0:
        raise UsageError(f"--max-pixels must be >= 0 (0 = no limit), got {max_pixels}")


def _check_pixels(path: Path, size: tuple[int, int], limit: int | None) -> None:
    pixels = size[0] * size[1]
    if limit and pixels > limit:
        raise InputError(
            f"{path}: {size[0]}x{size[1]} = {pixels} pixels is over the limit of {limit}"
            " (raise it with --max-pixels)"
        )


def _not_regular(path: Path, mode: int) -> InputError | None:
    """The refusal of anything but a regular file (whose ``open`` or read could block)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return InputError(f"{path}: is a folder, not an image")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
    return InputError(f"{path}: not a regular file ({kind})")


def _stat_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return InputError(f"{path}: broken symlink to {os.readlink(path)}")
    return _input_error(path, exc)


@contextmanager
def _regular_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading, once it is known to be a non-empty regular file.

    The type is checked with ``stat`` (symlinks followed) before the ``open``, so that a FIFO,
    socket or device is never opened, and again with ``fstat`` on the descriptor, opened
    non-blocking, in case the path changed in between.
    """
    try:
        refusal = _not_regular(path, os.stat(path).st_mode)
        if refusal is not None:
            raise refusal
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _stat_error(path, exc) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        refusal = _not_regular(path, st.st_mode)
        if refusal is not None:
            raise refusal
        if st.st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        yield f


def _read_bytes(path: Path) -> bytes:
    """The whole file, read once (see :func:`_regular_file`); errors -> InputError."""
    with _regular_file(path) as f:
        try:
            return f.read()
        except (OSError, MemoryError) as exc:
            raise _input_error(path, exc) from exc


@contextmanager
def _image(fp: BinaryIO, path: Path, max_pixels: int | None) -> Iterator[tuple[Image.Image, int | None]]:
    """Pillow's lazy image of ``fp`` (header only) with the size checked, and the pixel limit
    for the later frames; errors -> InputError."""
    with _own_pixel_limit() as pillow_limit:
        limit = pillow_limit if max_pixels is None else max_pixels
        try:
            img = Image.open(fp)
        except Exception as exc:
            raise _input_error(path, exc) from exc
        with img:
            _check_pixels(path, img.size, limit)
            yield img, limit


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


class _SecondDecoder:
    """A second Pillow decoder over the same bytes, for the samples the first one drops (the
    low bytes of 16-bit colour).  It follows the frames forward as they are read."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._img: Image.Image | None = None

    def samples(self, frame: int, rawmode: str) -> np.ndarray:
        """Frame ``frame`` decoded with the raw mode ``rawmode``."""
        if self._img is None or self._img.tell() > frame:
            self.close()
            self._img = Image.open(BytesIO(self._data))
        if self._img.tell() != frame:
            self._img.seek(frame)
        _with_rawmode(self._img, rawmode)
        self._img.load()
        return np.asarray(self._img)

    def close(self) -> None:
        if self._img is not None:
            self._img.close()
            self._img = None


def _splittable(img: Image.Image, frame: int) -> bool:
    """Whether a 16-bit frame can be decoded twice and joined: not an APNG frame that Pillow
    composites onto the ones before it (only part of the canvas, or blended over them)."""
    if frame == 0 or img.format != "PNG":
        return True
    return img.info.get("bbox") == (0, 0, *img.size) and img.info.get("blend") == 0


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
    img: Image.Image, second: _SecondDecoder | None, frame: int, notes: list[str], label: object
) -> tuple[np.ndarray, np.ndarray | None, int, float, str]:
    """Decode: (colour HxWxC float32, alpha HxWx1 float32 0..1 or None, bits, peak, mode).

    ``peak`` is the sample value that maps to 1.0.  ``second`` decodes the low bytes of 16-bit
    colour; without it they come out at 8 bits.  Lossy reads append to ``notes``.
    """
    mode = img.mode
    rawmode = _tile_rawmode(img) if second is not None else None  # gone once loaded
    img.load()
    if rawmode in _SPLIT_16 and not _splittable(img, frame):
        notes.append(f"{label}: frame {frame + 1} is a 16-bit APNG frame drawn over the ones before it, read at 8 bits")
    elif rawmode == _LA16 and second is not None:
        b = second.samples(frame, "RGBA").astype(np.uint16)
        la = (b[..., 0::2] << 8) | b[..., 1::2]
        return la[..., :1].astype(np.float32), la[..., 1:].astype(np.float32) / 65535, 16, 65535.0, "LA"
    elif rawmode in _OTHER_BYTE and second is not None:
        high = np.asarray(img).astype(np.uint16)
        samples = (high << 8) | second.samples(frame, _OTHER_BYTE[rawmode])
        alpha = samples[..., 3:].astype(np.float32) / 65535 if mode == "RGBA" else _apply_key(img, samples)
        return samples[..., :3].astype(np.float32), alpha, 16, 65535.0, mode
    elif rawmode and rawmode.startswith("RGBa;16"):
        notes.append(f"{label}: premultiplied 16-bit TIFF, read at 8 bits")

    if mode.startswith("I;16"):
        samples = np.asarray(img).astype(np.float32)[..., None]
        return samples, _apply_key(img, samples), 16, 65535.0, "I;16"
    if mode in _RANGED_MODES:
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
        raise _Unusable(f"unsupported image mode {mode}") from exc
    return rgb, None, 8, 255.0, mode


def _normalised(samples: np.ndarray, peak: float, ranged: bool) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``samples / peak`` and no range; or, for ``ranged`` samples (``I``, ``F``, float arrays)
    outside ``0..peak``, the samples mapped linearly onto 0..1 and their range on the 1/peak
    scale, so that nothing is clamped.  NaN and infinities are refused (:class:`_Unusable`)."""
    if not ranged:
        return (samples if peak == 1.0 else samples / np.float32(peak)), None
    low, high = float(samples.min()), float(samples.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise _Unusable("holds NaN or infinite sample values, which cannot be upscaled")
    if 0.0 <= low and high <= peak:
        return (samples if peak == 1.0 else samples / np.float32(peak)), None
    span = high - low
    mapped = (samples.astype(np.float64) - low) / span if span else np.zeros(samples.shape)
    return mapped.astype(np.float32), (low / peak, high / peak)


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


def _picture(
    img: Image.Image, second: _SecondDecoder | None, frame: int, path: Path | None, notes: list[str], *, orient: bool
) -> Picture:
    """The current frame of ``img`` as a still :class:`Picture`."""
    color, alpha, bits, peak, mode = _decoded(img, second, frame, notes, path)
    color, value_range = _normalised(color, peak, mode in _RANGED_MODES)
    exif, orientation = _exif(img)
    if orient:
        color = _orient(color, orientation)
        alpha = None if alpha is None else _orient(alpha, orientation)
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
        value_range=value_range,
    )


def _frame_count(img: Image.Image) -> int:
    """Frames of an animation, pages of a TIFF; 1 for an MPO (its extra pictures are previews
    or stereo views, not frames)."""
    return 1 if img.format == "MPO" else int(getattr(img, "n_frames", 1))


def _duration(img: Image.Image) -> float:
    """The current (loaded) frame's duration in ms; 0 when the format gives none."""
    return float(img.info.get("duration") or 0)


def _disposal(img: Image.Image) -> str:
    """What the current frame's file says follows it: GIF89a's disposal method, APNG's
    dispose_op; "background" where the format has none (WebP and TIFF give whole frames)."""
    if img.format == "GIF":
        return _GIF_DISPOSAL.get(getattr(img, "disposal_method", 0), "none")
    if img.format == "PNG":
        return _DISPOSALS[img.info.get("disposal", 0)]
    return "background"


def _plays(img: Image.Image) -> int:
    """Times the animation plays (0 = forever): a GIF's NETSCAPE loop count + 1 (1 without
    one: it plays once); APNG's num_plays and WebP's loop count as they are."""
    loop = img.info.get("loop")
    if img.format == "GIF":
        return 1 if loop is None else (0 if loop == 0 else int(loop) + 1)
    return 0 if loop is None else int(loop)


def _read_frames(img: Image.Image, data: bytes, path: Path, notes: list[str], limit: int | None,
                 first_frame: bool) -> Picture:
    """Every frame of ``img`` (or the first only), each checked against the pixel ``limit``."""
    second = _SecondDecoder(data)
    try:
        first = _picture(img, second, 0, path, notes, orient=True)
        count = 1 if first_frame else _frame_count(img)
        if count == 1:
            return first
        durations, disposal, rest = [_duration(img)], [_disposal(img)], []
        for i in range(1, count):
            img.seek(i)
            _check_pixels(path, img.size, limit)
            rest.append(_picture(img, second, i, path, notes, orient=True))
            durations.append(_duration(img))
            disposal.append(_disposal(img))
    finally:
        second.close()
    return replace(first, animation=Animation(tuple(rest), tuple(durations), _plays(img), tuple(disposal)))


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None, *, first_frame: bool = False) -> Picture:
    """Decode the image file at ``path``, every frame, EXIF orientation applied.

    The file is read into memory once and decoded from those bytes only.

    Args:
        path: the file; anything but a regular file is refused before it is opened.
        max_pixels: refuse images (frames) with more pixels than this (checked from the header
            before decoding); None = Pillow's ``Image.MAX_IMAGE_PIXELS``; 0 = no limit.
        first_frame: read the first frame only (a still), even of an animation.

    Raises:
        InputError: one line, ``"<path>: <cause>"``: missing, broken symlink, not a regular
            file, empty, not an image, corrupt or truncated, NaN samples, or over the pixel
            limit (the message names ``--max-pixels``).
        UsageError: ``max_pixels`` is negative.
    """
    path = Path(path)
    _check_limit_arg(max_pixels)
    data = _read_bytes(path)
    notes: list[str] = []
    with _image(BytesIO(data), path, max_pixels) as (img, limit):
        try:
            pic = _read_frames(img, data, path, notes, limit, first_frame)
        except InputError:
            raise
        except Exception as exc:
            raise _input_error(path, exc) from exc
    for note in notes:  # outside _image, which silences Pillow's own warnings
        warnings.warn(ImageIOWarning(note), stacklevel=2)
    return pic


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, from the header: 5-8 swap the two (for a
    PNG, only when its eXIf chunk comes before the pixels)."""
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


def _info(img: Image.Image, path: Path) -> ImageInfo:
    mode, rawmode = img.mode, _tile_rawmode(img)
    w, h = _oriented_size(img)
    bits = 32 if mode in _RANGED_MODES else 16 if rawmode in _SPLIT_16 or mode.startswith("I;16") else 8
    grey = mode in _GREY_MODES or mode.startswith("I;16")
    alpha = mode in _ALPHA_MODES or "transparency" in img.info
    return ImageInfo(path, w, h, _frame_count(img), mode, img.format, 1 if grey else 3, alpha, bits)


def probe(path: str | os.PathLike[str], max_pixels: int | None = None) -> ImageInfo:
    """What :func:`read_image` would give, from the header only (no pixel is decoded): size,
    frames, mode, channels, alpha, bits (see :class:`ImageInfo`).

    Same errors as :func:`read_image`; the pixels are not validated.
    """
    path = Path(path)
    _check_limit_arg(max_pixels)
    with _regular_file(path) as f, _image(f, path, max_pixels) as (img, _):
        try:
            return _info(img, path)
        except InputError:
            raise
        except Exception as exc:
            raise _input_error(path, exc) from exc


def image_size(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image` would return it, from the header only
    (:func:`probe`'s)."""
    return probe(path, max_pixels).size


def _ends_whole(f: BinaryIO, fmt: str | None) -> bool:
    """Whether the file ends where its format says it does: PNG's IEND chunk, JPEG's EOI marker,
    GIF's trailer, WebP's RIFF length (decoders stop at the last pixel and look no further)."""
    size = f.seek(0, os.SEEK_END)
    if fmt == "WEBP":
        f.seek(4)
        return int.from_bytes(f.read(4), "little") + 8 == size
    trailer = _TRAILERS.get(fmt or "", b"")
    f.seek(size - len(trailer))
    return f.read() == trailer


def output_is_complete(path: str | os.PathLike[str], expected_size: tuple[int, int] | None) -> bool:
    """Whether ``path`` holds a whole image: a regular file that opens, of ``expected_size``
    ``(width, height)`` (None: any size), whose every frame decodes and which ends where its
    format says (:func:`_ends_whole`).  A 0-byte, truncated or corrupt file, or one of another
    size, is not (``--skip-existing`` redoes it)."""
    try:
        with _regular_file(Path(path)) as f, _own_pixel_limit(), Image.open(f) as img:
            if expected_size is not None and _oriented_size(img) != tuple(expected_size):
                return False
            for i in range(_frame_count(img)):
                img.seek(i)
                img.load()
            return _ends_whole(f, img.format)
    except Exception:
        return False


def from_pil(img: Image.Image, *, apply_orientation: bool = False) -> Picture:
    """A :class:`Picture` of an in-memory Pillow image (any mode :func:`read_image` takes; its
    current frame only).

    EXIF orientation is applied only when asked (an in-memory image is usually upright
    already).  16-bit colour is not available here: Pillow holds such images at 8 bits.
    """
    try:
        return _picture(img, None, 0, None, [], orient=apply_orientation)
    except ValueError as exc:
        raise UsageError(f"cannot use this image: {_one_line(str(exc))}") from exc


def from_numpy(arr: np.ndarray, *, icc: bytes | None = None, exif: bytes | None = None) -> Picture:
    """A :class:`Picture` of an ``HxW``, ``HxWx1`` (grey), ``HxWx2`` (grey+alpha), ``HxWx3``
    (RGB) or ``HxWx4`` (RGBA) array: uint8 (0..255), uint16 (0..65535) or float (0..1; colour
    outside 0..1 is kept as :attr:`Picture.value_range`, and :func:`to_numpy` gives it back)."""
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
    c = 1 if a.shape[2] <= 2 else 3
    try:
        color, value_range = _normalised(a[..., :c].astype(np.float32), peak, bits == 32)
    except _Unusable as exc:
        raise UsageError(f"cannot use this array: it {exc}") from exc
    has_alpha = a.shape[2] in (2, 4)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    if mode == "L" and bits > 8:
        mode = "I;16" if bits == 16 else "F"
    return Picture(
        color=_tensor(color),
        alpha=_tensor(a[..., c:].astype(np.float32) / np.float32(peak)) if has_alpha else None,
        bits=bits,
        mode=mode,
        icc=icc,
        exif=exif,
        value_range=value_range,
    )


# --------------------------------------------------------------------------- output modes


def _icc_space(icc: bytes | None) -> bytes | None:
    """The colour-space signature of an ICC profile (b"RGB ", b"GRAY", b"CMYK"...)."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def _mode_for(grey: bool, alpha: bool, bits: int, source_mode: str, format: str | None) -> str:
    """:func:`output_mode` of a picture with these properties."""
    deep = bits > 8
    if format == "JPEG":
        return "L" if grey else "RGB"
    if format == "GIF" and grey and not alpha:
        return "L"
    if format in ("WEBP", "GIF"):
        return "RGBA" if alpha else "RGB"
    if grey and not alpha:
        if not deep:
            return "L"
        if format in (None, "TIFF") and source_mode in _RANGED_MODES:
            return source_mode
        return "F" if format is None and bits == 32 else "I;16"
    base = ("LA" if grey else "RGB") + ("A" if alpha and not grey else "")
    if not deep or format is None:
        return base
    if format == "TIFF" and grey:  # Pillow reads no 16-bit grey+alpha TIFF: grey as RGB
        return "RGBA;16"
    return base + ";16"


def output_mode(pic: Picture, format: str | None) -> str:
    """The mode ``pic`` is written in for ``format`` ("PNG", "JPEG", "WEBP", "GIF", "TIFF";
    None = an in-memory Pillow image, see :func:`to_pil`).

    Returns a Pillow mode ("L", "LA", "RGB", "RGBA", "I;16", "I", "F"; GIF's palette is made
    from "L", "RGB", "RGBA") or, for 16-bit colour that Pillow cannot hold, "LA;16", "RGB;16",
    "RGBA;16".
    """
    return _mode_for(pic.channels == 1, pic.has_alpha, pic.bits, pic.mode, format)


def _quantise(x: np.ndarray, peak: int, dtype: type) -> np.ndarray:
    """``clip(x, 0, 1) * peak`` rounded half to even (as ``np.rint``), as C-contiguous ``dtype``.

    In torch, whose element-wise kernels use every core: 0.1 s instead of 0.5 s for numpy on a
    4000x4000 RGB output here."""
    q = torch.from_numpy(x).clamp(0.0, 1.0).mul_(peak).round_()
    return q.to(torch.uint8 if dtype is np.uint8 else torch.int32).contiguous().numpy().astype(dtype, copy=False)


def _hwc(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)


def _restored(color: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """``color`` on its source's scale again: 0..1 mapped back onto ``value_range``."""
    if value_range is None:
        return color
    low, high = value_range
    return low + color.astype(np.float64) * (high - low)


def _samples(pic: Picture, mode: str) -> np.ndarray:
    """``H x W x C`` samples of a still ``pic`` for an output ``mode`` (see :func:`output_mode`;
    grey is repeated into RGB modes, a missing alpha made opaque for modes with one)."""
    color = _restored(_hwc(pic.color), pic.value_range)
    alpha = None if pic.alpha is None else np.clip(_hwc(pic.alpha), 0.0, 1.0)
    if mode in ("L", "RGB") and alpha is not None:  # flatten onto white
        color = np.clip(color, 0.0, 1.0) * alpha + (1.0 - alpha)
        alpha = None
    if mode.startswith("RGB") and color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    if mode == "F":
        return color.astype(np.float32, copy=False)
    if mode == "I":
        return np.rint(np.clip(color * 65535.0, -(2.0**31), 2.0**31 - 1)).astype(np.int32)
    color = color.astype(np.float32, copy=False)
    if mode in ("LA", "RGBA", "LA;16", "RGBA;16"):
        opaque = np.ones((*color.shape[:2], 1), np.float32)
        color = np.concatenate([color, opaque if alpha is None else alpha], 2)
    if mode.endswith("16"):
        return _quantise(color, 65535, np.uint16)
    return _quantise(color, 255, np.uint8)


def _range_problem(pic: Picture, mode: str) -> str | None:
    """Why ``pic``'s value range cannot be written in ``mode``, or None (only ``I`` and ``F``
    hold values outside 0..1)."""
    if pic.value_range is None or mode in _RANGED_MODES:
        return None
    peak = 65535 if pic.mode == "I" else 1
    low, high = (v * peak for v in pic.value_range)
    return f"its values ({low:.6g}..{high:.6g}) go outside 0..{peak}"


def _still(pic: Picture, what: str) -> Picture:
    if pic.animation is not None:
        raise UsageError(f"{what} takes a still picture, not an animation of {pic.frame_count} frames")
    return pic


def to_pil(pic: Picture) -> Image.Image:
    """A Pillow image of a still ``pic``, mode ``output_mode(pic, None)``: L, LA, RGB, RGBA
    (8 bits; 16-bit colour is rounded to 8 bits, Pillow has no deeper colour mode), or I;16, I,
    F for deep grey (value range restored).  ``info`` carries ``icc_profile`` and ``exif``.

    Raises:
        UsageError: an animation, or a value range that the mode cannot hold.
    """
    mode = output_mode(_still(pic, "to_pil"), None)
    problem = _range_problem(pic, mode)
    if problem:
        raise UsageError(f"cannot make a {mode} Pillow image of this picture: {problem}")
    a = _samples(pic, mode)
    img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)  # uint16 -> I;16, int32 -> I...
    if _icc_fits(pic.icc, a.shape[2]):
        img.info["icc_profile"] = pic.icc
    if pic.exif:
        img.info["exif"] = pic.exif
    return img


def to_numpy(pic: Picture, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A still ``pic`` as an ``HxW`` (grey), ``HxWx2`` (grey+alpha), ``HxWx3`` or ``HxWx4`` array.

    ``dtype`` defaults to uint8 for 8-bit pictures, uint16 for 16-bit ones, float32 (not
    clipped, value range restored) otherwise; integer outputs are clipped to 0..1 and rounded.

    Raises:
        UsageError: an animation; an integer dtype for a picture with a value range.
    """
    dt = np.dtype(dtype or {8: np.uint8, 16: np.uint16}.get(_still(pic, "to_numpy").bits, np.float32))
    color = _hwc(pic.color)
    if np.issubdtype(dt, np.floating):
        color = _restored(color, pic.value_range).astype(dt, copy=False)
    elif pic.value_range is not None:
        raise UsageError(f"cannot give this picture as {dt}: {_range_problem(pic, '')}; use a float dtype")
    planes = [color] + ([] if pic.alpha is None else [_hwc(pic.alpha).astype(color.dtype)])
    a = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    if dt == np.uint8:
        a = _quantise(a, 255, np.uint8)
    elif dt == np.uint16:
        a = _quantise(a, 65535, np.uint16)
    elif not np.issubdtype(dt, np.floating):
        raise UsageError(f"unsupported output dtype {dt}: use uint8, uint16 or a float type")
    return a[..., 0] if a.shape[2] == 1 else a


# --------------------------------------------------------------------------- frames


def map_frames(pic: Picture, fn: Callable[[Picture], Picture]) -> Picture:
    """``fn`` applied to every frame of ``pic`` (to ``pic`` itself for a still), as an animation
    with the same durations, loop count and disposal around the results."""
    if pic.animation is None:
        return fn(pic)
    first = fn(replace(pic, animation=None))
    rest = tuple(fn(frame) for frame in pic.animation.frames)
    return replace(first, animation=replace(pic.animation, frames=rest))


def _format_name(fmt: str) -> str:
    """Pillow's name ("PNG", "JPEG", "WEBP", "GIF", "TIFF") of a format or its alias."""
    name = _ALIASES.get(fmt.strip().lower().lstrip("."))
    if name is None:
        raise UsageError(f"unknown --format {fmt!r}: choose auto, png, jpg, webp, gif or tiff")
    return name


def can_hold_frames(fmt: str) -> bool:
    """Whether the output format ``fmt`` (a name or alias: png, jpg, webp, gif, tiff) holds
    more than one frame: all but JPEG (PNG as APNG, TIFF as pages)."""
    return _format_name(fmt) in _HOLDS_FRAMES


def _frame_modes(frames: Sequence[Picture], fmt: str) -> list[str]:
    """The output mode of each frame.  The frames of a PNG, WebP or GIF animation share one mode
    (the widest: RGB if any is, alpha if any has it, the deepest); TIFF pages keep their own,
    except that all become 16-bit colour when one is (encoders.write_tiff16 writes them)."""
    if len(frames) == 1 or fmt == "TIFF":
        modes = [output_mode(p, fmt) for p in frames]
        if len(frames) > 1 and any(m in _TIFF16 for m in modes):
            return ["RGBA;16" if p.has_alpha else "RGB;16" for p in frames]
        return modes
    sources = {p.mode for p in frames}
    mode = _mode_for(all(p.channels == 1 for p in frames), any(p.has_alpha for p in frames),
                     max(p.bits for p in frames), sources.pop() if len(sources) == 1 else "", fmt)
    return [mode] * len(frames)


def _all_frames(pic: Picture) -> list[Picture]:
    return [replace(pic, animation=None), *pic.frames]


def _range_refusal(pic: Picture, fmt: str) -> str | None:
    frames = _all_frames(pic)
    return next(filter(None, (_range_problem(p, m) for p, m in zip(frames, _frame_modes(frames, fmt)))), None)


def output_holds(pic_or_info: Picture | ImageInfo, fmt: str) -> str | None:
    """Why the output format ``fmt`` cannot hold what the input has, in one line (to follow
    ``"<path>: "``), or None when it can.  Checked before any work; :func:`write_image`
    refuses the same.

    * frames: more than one, and ``fmt`` holds one (JPEG); the line names ``--first-frame``;
    * frame sizes (a :class:`Picture` only): they differ, and ``fmt`` is not TIFF;
    * value range (a :class:`Picture` only: an :class:`ImageInfo` does not know it): samples
      outside 0..1 (``F``) or 0..65535 (``I``) and a format or mode that cannot keep them
      (all but TIFF ``I``/``F``).
    """
    name = _format_name(fmt)
    count = pic_or_info.frame_count
    if count > 1 and name not in _HOLDS_FRAMES:
        return (f"{count} frames, and {name} holds one: use --format png, webp, gif or tiff,"
                " or --first-frame to keep only the first")
    if not isinstance(pic_or_info, Picture):
        return None
    sizes = sorted({p.size for p in _all_frames(pic_or_info)})
    if name in _CANVAS and len(sizes) > 1:
        (w0, h0), (w1, h1) = sizes[:2]
        return (f"its frames have different sizes ({w0}x{h0}, {w1}x{h1}...), which a {name} animation cannot hold:"
                " use --format tiff, or --first-frame to keep only the first")
    problem = _range_refusal(pic_or_info, name)
    if problem is None:
        return None
    hint = ": use --format tiff" if name != "TIFF" and _range_refusal(pic_or_info, "TIFF") is None else ""
    return f"{problem}, which {name} cannot hold{hint}"


# --------------------------------------------------------------------------- formats


def resolve_output_format(
    requested: str, input_path: str | os.PathLike[str] | None, has_alpha: bool
) -> tuple[str, str]:
    """``(format, extension)`` for an output: format is "PNG" | "JPEG" | "WEBP" | "GIF" |
    "TIFF", extension has its dot (".png").

    ``requested`` is ``auto|png|jpg|jpeg|webp|gif|tif|tiff`` (any case).  ``auto`` keeps the
    input's format and extension spelling (".JPEG" stays ".JPEG") when it is PNG, JPEG, WebP or
    TIFF and can hold alpha if there is alpha; otherwise PNG (a GIF too: PNG keeps every colour,
    and its frames as APNG).  An explicit format gets its canonical extension (.png, .jpg,
    .webp, .gif, .tif); JPEG with alpha is honoured (flattened on write).

    Raises:
        UsageError: unknown format (the message names ``--format``).
    """
    req = requested.strip().lower().lstrip(".")
    if req != "auto":
        fmt = _format_name(requested)
        return fmt, _CANONICAL_EXT[fmt]
    suffix = Path(input_path).suffix if input_path is not None else ""
    fmt = _SUFFIX_FORMAT.get(suffix.lower())
    if fmt not in _AUTO_KEEPS or (has_alpha and not _HOLDS_ALPHA[fmt]):
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
        with _regular_file(p) as f, _own_pixel_limit(), Image.open(f):
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
    if exif and fmt != "GIF":
        opts["exif"] = exif
    if fmt in _DEFAULT_QUALITY:
        opts["quality"] = _DEFAULT_QUALITY[fmt] if quality is None else quality
        if fmt == "JPEG" and opts["quality"] >= 90:
            opts["subsampling"] = 0  # 4:4:4: keep the detail the upscaler made
    if fmt == "TIFF" and features.check("libtiff"):
        opts["compression"] = "tiff_deflate"
    return opts


def _gif_frame(a: np.ndarray) -> Image.Image:
    """An 8-bit ``L``/``RGB``/``RGBA`` frame as GIF holds it: grey as is; colour quantised to a
    palette by median cut (no dithering); alpha as one transparent index, below half opacity."""
    if a.shape[2] == 1:
        return Image.fromarray(a[..., 0])
    rgb = Image.fromarray(np.ascontiguousarray(a[..., :3]))
    if a.shape[2] == 3:
        return rgb.quantize(256, method=Image.Quantize.MEDIANCUT)
    frame = rgb.quantize(255, method=Image.Quantize.MEDIANCUT)
    palette = (frame.getpalette() or [])[: 255 * 3]
    frame.putpalette(palette + [0] * (768 - len(palette)))
    frame.paste(255, mask=Image.fromarray(np.where(a[..., 3] < 128, 255, 0).astype(np.uint8)))
    frame.info["transparency"] = 255
    return frame


def _gif_disposal(arrays: Sequence[np.ndarray], disposal: Sequence[str]) -> list[int]:
    """GIF89a disposal codes for whole composited frames.  Pillow's writer crops each frame to
    what changed, and a frame with transparent pixels shows what lies under them: with any
    transparency, every frame is 2 (restore to background), so that each is drawn on a cleared
    canvas.  Otherwise as read (1 = leave, 2 = background), "previous" as 2 (Pillow's delta
    frames assume the frame before stays, and a whole frame follows a 2)."""
    if any(a.shape[2] == 4 and bool(np.any(a[..., 3] < 128)) for a in arrays):
        return [2] * len(arrays)
    return [1 if kind == "none" else 2 for kind in disposal]


def _animation_options(fmt: str, anim: Animation | None, arrays: Sequence[np.ndarray]) -> dict:
    """Pillow's save options for the frames after the first, their durations, loop and disposal."""
    if anim is None or fmt not in ("GIF", "WEBP"):
        return {}
    opts: dict = {"duration": [round(d) for d in anim.durations]}
    if fmt == "WEBP":
        opts["loop"] = anim.plays
    else:
        opts["disposal"] = _gif_disposal(arrays, anim.disposal)
        if anim.plays != 1:  # a GIF without a loop count plays once
            opts["loop"] = max(0, anim.plays - 1)
    return opts


def _check_sides(frames: Sequence[Picture], fmt: str, path: Path) -> None:
    side = _MAX_SIDE.get(fmt)
    for p in frames:
        if side and max(p.size) > side:
            raise InputError(
                f"{path}: {p.width}x{p.height} is too large for {fmt} (max {side} px a side); use --format png")


def _encoder(pic: Picture, fmt: str, quality: int | None, path: Path) -> Callable[[BinaryIO], None]:
    """Validate and convert ``pic`` (every frame) for ``fmt`` now; return the function that
    writes the bytes."""
    if quality is not None and not 1 <= quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {quality}")
    frames = _all_frames(pic)
    _check_sides(frames, fmt, path)
    modes = _frame_modes(frames, fmt)
    if pic.has_alpha and modes[0] in ("L", "RGB"):
        note = f"{path}: {fmt} has no alpha channel, transparency flattened onto white"
        warnings.warn(ImageIOWarning(note), stacklevel=3)
    arrays = [_samples(p, m) for p, m in zip(frames, modes)]
    icc = pic.icc if _icc_fits(pic.icc, arrays[0].shape[2]) else None
    exif, anim = pic.exif, pic.animation
    if fmt == "PNG" and anim is not None:
        dispose = [_DISPOSALS.index(d) for d in anim.disposal]  # APNG's dispose_op numbers
        return lambda f: _write_apng(f, arrays, icc, exif, durations=anim.durations, plays=anim.plays, dispose=dispose)
    if fmt == "PNG":  # every PNG mode, 8 and 16 bits: our parallel encoder (encoders.py)
        return lambda f: _write_png(f, arrays[0], icc, exif)
    if modes[0] in _TIFF16:
        return lambda f: _write_tiff16(f, arrays, icc)
    make = _gif_frame if fmt == "GIF" else (lambda a: Image.fromarray(a[..., 0] if a.shape[2] == 1 else a))
    images = [make(a) for a in arrays]
    opts = {**_pillow_options(fmt, quality, icc, exif), **_animation_options(fmt, anim, arrays)}
    if len(images) > 1:
        opts.update(save_all=True, append_images=images[1:])
    return lambda f: images[0].save(f, format=fmt, **opts)


# --------------------------------------------------------------------------- atomic writes


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path}: output exists (use --overwrite to replace it, or --skip-existing)")


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
        raise _exists(path)
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
        raise _exists(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links on this file system: check, then rename
            raise _exists(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None], overwrite: bool) -> None:
    """Write through ``.NAME.XXXXXXXX.tmp`` beside ``path`` (the pattern that
    :func:`upscale_cli.files.sweep_stale_temps` removes), removed on any exception, Ctrl-C and
    SIGTERM (:class:`~upscale_cli.reporting.Terminated`) included."""
    with fresh_temp(path) as (fd, tmp):
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)  # the temp is 0600; give the usual permissions
        with os.fdopen(fd, "w+b") as f:  # readable too: Pillow's multi-page TIFF writer reads back
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(str(tmp), path, overwrite)
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
    """Encode ``pic`` (every frame) into ``path`` atomically and return the path.

    Args:
        pic: the picture; its output mode is :func:`output_mode` for the format.
        path: the target file; missing parent folders are created.
        format: ``auto`` (from the target's extension: .png/.apng, .jpg/.jpeg/.jpe/.jfif,
            .webp, .gif, .tif/.tiff) or png|jpg|jpeg|webp|gif|tif|tiff.
        quality: 1..100 for JPEG (default 95, 4:4:4 chroma from 90 up) and WebP (default 90);
            ignored for PNG, GIF and TIFF (lossless but for GIF's palette; TIFF is deflated).
        overwrite: replace an existing file (never ``pic.source`` or one of ``protect``).
        protect: more paths never to write onto (e.g. all inputs of a run).

    Raises:
        OutputExistsError: the target exists and ``overwrite`` is False.
        InputError: the target is an input, a folder, too large for the format; the format
            cannot hold the frames or the value range (:func:`output_holds`); or the write
            failed (disk full, permission...); one line naming the file.
        UsageError: unknown format or bad quality.

    Warns:
        ImageIOWarning: alpha flattened onto white (JPEG).
    """
    path = Path(path)
    if format.strip().lower() == "auto":
        fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise UsageError(
                f"{path}: cannot tell the output format from the extension; use --format png|jpg|webp|gif|tiff")
    else:
        fmt = _format_name(format)
    _check_target(path, pic, overwrite, protect)
    refusal = output_holds(pic, fmt)
    if refusal is not None:
        raise InputError(f"{path}: {refusal}")
    write = _encoder(pic, fmt, quality, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, write, overwrite)
    except (OSError, ValueError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(str(exc))
        raise InputError(f"{path}: cannot write it ({cause})") from exc
    return path
