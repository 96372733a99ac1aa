"""Image I/O: modes, EXIF orientation, ICC, alpha, 16 bits, atomic writes, input errors."""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageFile, ImageOps

from upscale_cli import encoders
from upscale_cli import io as uio
from upscale_cli.errors import InputError, UsageError

RNG = np.random.default_rng(1234)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _rgb(h: int = 5, w: int = 7) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _transparent(img: Image.Image) -> Image.Image:
    """``img`` with a real alpha ramp (fully opaque alpha may be dropped by WebP)."""
    a = np.linspace(0, 255, img.width * img.height).reshape(img.height, img.width).astype(np.uint8)
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(a))
    return out


def _palette_with_transparency() -> Image.Image:
    p = _rgb().convert("P")
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    return p


# Source mode -> (image factory, file extension it is stored in, Picture channels, has alpha,
# bits, the mode Pillow sees when the image is written back in the same format).
MODES = {
    "1": (lambda: _rgb().convert("1"), ".png", 1, False, 8, "L"),
    "L": (lambda: _rgb().convert("L"), ".png", 1, False, 8, "L"),
    "LA": (lambda: _transparent(_rgb()).convert("LA"), ".png", 1, True, 8, "LA"),
    "P": (lambda: _rgb().convert("P"), ".png", 3, False, 8, "RGB"),
    "P+transparency": (_palette_with_transparency, ".png", 3, True, 8, "RGBA"),
    "RGB": (_rgb, ".png", 3, False, 8, "RGB"),
    "RGBA": (lambda: _transparent(_rgb()), ".png", 3, True, 8, "RGBA"),
    "CMYK": (lambda: _rgb().convert("CMYK"), ".tif", 3, False, 8, "RGB"),
    "I;16": (lambda: Image.fromarray(RNG.integers(0, 65536, (5, 7), dtype=np.uint16)), ".png", 1, False, 16, "I;16"),
    "I": (lambda: Image.fromarray(RNG.integers(-5000, 300000, (5, 7), dtype=np.int32)), ".tif", 1, False, 32, "I"),
    "F": (lambda: Image.fromarray(RNG.random((5, 7), dtype=np.float32) * 3 - 1), ".tif", 1, False, 32, "F"),
}


def _expected_pixels(img: Image.Image, out_mode: str) -> np.ndarray:
    """What a lossless write of ``img`` must hold: Pillow's own conversion to the output mode."""
    if img.mode in ("I;16", "I", "F"):
        return np.asarray(img)
    return np.asarray(img.convert(out_mode))


def _assert_pixels(actual: np.ndarray, img: Image.Image, out_mode: str) -> None:
    """Equal, but for ``F`` samples outside 0..1, which are kept through a linear map onto 0..1
    in float32: within one rounding of that map."""
    expected = _expected_pixels(img, out_mode)
    if img.mode == "F":
        span = float(expected.max() - expected.min())
        np.testing.assert_allclose(actual, expected, rtol=0, atol=span * 2.0**-23)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_round_trips(name: str, tmp_path: Path) -> None:
    make, ext, channels, alpha, bits, out_mode = MODES[name]
    img = make()
    src = tmp_path / f"in{ext}"
    img.save(src)
    assert Image.open(src).mode == img.mode

    pic = uio.read_image(src)
    assert (pic.size, pic.channels, pic.has_alpha, pic.bits) == (img.size, channels, alpha, bits)
    assert pic.color.dtype == torch.float32 and pic.source == src

    out = uio.write_image(pic, tmp_path / "out" / f"x{ext}")
    with Image.open(out) as back:
        assert back.size == img.size and back.mode == out_mode
        _assert_pixels(np.asarray(back), img, out_mode)
    again = uio.read_image(out)
    assert (again.size, again.channels, again.has_alpha) == (img.size, channels, alpha)
    torch.testing.assert_close(again.color, pic.color, rtol=0, atol=1e-6)


# Output mode per format for a source mode; WebP has no grey mode, JPEG no alpha, only
# PNG/TIFF go past 8 bits, and only TIFF holds I and F.
OUTPUT_MODES = {
    "1": ("L", "L", "RGB", "L"),
    "LA": ("LA", "L", "RGBA", "LA"),
    "P+transparency": ("RGBA", "RGB", "RGBA", "RGBA"),
    "RGBA": ("RGBA", "RGB", "RGBA", "RGBA"),
    "CMYK": ("RGB", "RGB", "RGB", "RGB"),
    "I;16": ("I;16", "L", "RGB", "I;16"),
    "I": ("I;16", "L", "RGB", "I"),
    "F": ("I;16", "L", "RGB", "F"),
}


@pytest.mark.parametrize("name", list(OUTPUT_MODES))
def test_output_mode_per_format(name: str, tmp_path: Path) -> None:
    make, ext, *_ = MODES[name]
    src = tmp_path / f"in{ext}"
    make().save(src)
    pic = uio.read_image(src)
    exts = (".png", ".jpg", ".webp", ".tif")
    for fmt, ext_out, expected in zip(("png", "jpg", "webp", "tiff"), exts, OUTPUT_MODES[name]):
        assert uio.output_mode(pic, uio.resolve_output_format(fmt, None, pic.has_alpha)[0]) == expected
        if pic.value_range is not None and fmt != "tiff":  # I and F samples past 0..1: only TIFF holds them
            assert "use --format tiff" in uio.output_holds(pic, fmt)
            with pytest.raises(InputError, match="go outside"):
                uio.write_image(pic, tmp_path / f"o{ext_out}", format=fmt, overwrite=True)
            continue
        with pytest.warns(uio.ImageIOWarning) if pic.has_alpha and fmt == "jpg" else _no_warning():
            out = uio.write_image(pic, tmp_path / f"o{ext_out}", format=fmt, overwrite=True)
        with Image.open(out) as back:
            assert back.mode == expected, fmt
            assert back.size == pic.size


class _no_warning:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------- EXIF orientation


_TRANSPOSE = {  # EXIF orientation -> the transform that displays the stored pixels upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _asymmetric(h: int = 4, w: int = 6) -> Image.Image:
    return Image.fromarray(np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 3)


@pytest.mark.parametrize("ext", [".png", ".tif"])  # Pillow itself rotates TIFFs on load
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_exif_transpose(orientation: int, ext: str, tmp_path: Path) -> None:
    img = _asymmetric()
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "test-camera"  # Make: other tags survive
    src = tmp_path / f"o{ext}"
    img.save(src, exif=exif)
    upright = img.transpose(_TRANSPOSE[orientation]) if orientation > 1 else img
    expected = ImageOps.exif_transpose(Image.open(src))
    np.testing.assert_array_equal(np.asarray(expected), np.asarray(upright))

    pic = uio.read_image(src)
    assert pic.size == expected.size
    np.testing.assert_array_equal(uio.to_numpy(pic), np.asarray(expected))
    kept = Image.Exif()
    kept.load(pic.exif)
    assert kept.get(0x0112, 1) == 1 and kept[0x010F] == "test-camera"
    assert uio.image_size(src) == expected.size


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    # Upright scene: 32 wide, 16 tall, left half black, right half white.  Stored rotated
    # the way a camera held on its side stores it (orientation 6: rotate 90 cw to display).
    upright = np.zeros((16, 32, 3), dtype=np.uint8)
    upright[:, 16:] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 16 wide, 32 tall
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "camera.jpg"
    stored.save(src, exif=exif, quality=95)

    pic = uio.read_image(src)
    assert pic.size == (32, 16)
    arr = uio.to_numpy(pic).astype(int)
    assert arr[:, :14].max() < 40 and arr[:, 18:].min() > 215

    out = uio.write_image(pic, tmp_path / "out.jpg")
    with Image.open(out) as back:
        assert back.size == (32, 16)
        assert back.getexif().get(0x0112, 1) == 1  # viewers will not rotate it again
        assert np.asarray(back)[:, :14].max() < 40


# --------------------------------------------------------------------------- ICC, EXIF written back


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_and_exif_preserved(ext: str, tmp_path: Path) -> None:
    src = tmp_path / f"in{ext}"
    exif = Image.Exif()
    exif[0x010F] = "cam"
    _rgb().save(src, icc_profile=SRGB, exif=exif)
    pic = uio.read_image(src)
    assert pic.icc == SRGB

    out = uio.write_image(pic, tmp_path / f"out{ext}")
    with Image.open(out) as back:
        assert back.info.get("icc_profile") == SRGB
        assert back.getexif().get(0x010F) == "cam"


def test_icc_of_the_wrong_colour_space_is_not_written(tmp_path: Path) -> None:
    grey = uio.from_numpy(RNG.integers(0, 256, (4, 4), dtype=np.uint8), icc=SRGB)  # RGB profile
    with Image.open(uio.write_image(grey, tmp_path / "g.png")) as back:
        assert "icc_profile" not in back.info
    rgb = uio.from_numpy(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8), icc=SRGB)
    with Image.open(uio.write_image(rgb, tmp_path / "c.png")) as back:
        assert back.info["icc_profile"] == SRGB


# --------------------------------------------------------------------------- alpha


@pytest.mark.parametrize("ext", [".png", ".webp", ".tif"])
def test_alpha_kept(ext: str, tmp_path: Path) -> None:
    img = _transparent(_rgb())
    src = tmp_path / "a.png"
    img.save(src)
    pic = uio.read_image(src)
    np.testing.assert_array_equal(uio.to_numpy(pic)[..., 3], np.asarray(img)[..., 3])
    with Image.open(uio.write_image(pic, tmp_path / f"out{ext}")) as back:
        assert back.mode == "RGBA"
        if ext != ".webp":  # lossless
            np.testing.assert_array_equal(np.asarray(back), np.asarray(img))
        else:
            assert np.abs(np.asarray(back)[..., 3].astype(int) - np.asarray(img)[..., 3]).max() <= 2


def test_jpeg_output_flattens_alpha_onto_white_with_a_warning(tmp_path: Path) -> None:
    color = np.zeros((8, 8, 3), dtype=np.uint8)  # black...
    alpha = np.zeros((8, 8), dtype=np.uint8)
    alpha[:, 4:] = 255  # ...transparent on the left, opaque on the right
    pic = uio.from_numpy(np.dstack([color, alpha]))
    with pytest.warns(uio.ImageIOWarning, match="flattened onto white"):
        out = uio.write_image(pic, tmp_path / "flat.jpg")
    with Image.open(out) as back:
        assert back.mode == "RGB"
        arr = np.asarray(back).astype(int)
    assert arr[:, :3].min() > 240 and arr[:, 5:].max() < 15


@pytest.mark.parametrize("mode,key", [("L", 7), ("RGB", (7, 8, 9))])
def test_transparency_key_becomes_alpha(mode: str, key: int | tuple[int, ...], tmp_path: Path) -> None:
    img = _rgb().convert(mode)
    img.putpixel((2, 1), key)
    src = tmp_path / "k.png"
    img.save(src, transparency=key)
    pic = uio.read_image(src)
    assert pic.has_alpha
    key_image = Image.new("RGB", img.size, key if mode == "RGB" else (key,) * 3)
    expected = np.where(np.asarray(img.convert("RGB")) == np.asarray(key_image), 1, 0).all(2)
    np.testing.assert_array_equal(pic.alpha[0].numpy(), 1 - expected)
    assert pic.alpha[0, 1, 2] == 0


# --------------------------------------------------------------------------- 16 bits


def _png_bytes(w: int, h: int, depth: int, color_type: int, raw: bytes, trns: bytes = b"") -> bytes:
    """A PNG written independently of upscale_cli (filter type 0 on every row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = len(raw) // h
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    extra = chunk(b"tRNS", trns) if trns else b""
    idat = chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + idat + chunk(b"IEND", b"")


def _decode_png_independently(data: bytes) -> np.ndarray:
    """Decode an 8- or 16-bit non-interlaced PNG with a plain-Python unfilter (PNG spec 9.2-9.4);
    ``zlib.decompress`` checks the stream's Adler-32."""
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        ihdr = body if kind == b"IHDR" else ihdr
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    w, h, depth, color_type = struct.unpack(">IIBB", ihdr[:10])
    assert depth in (8, 16)
    c = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    bpp, stride = depth // 8 * c, depth // 8 * c * w
    raw, prev, out = zlib.decompress(idat), bytearray(stride), bytearray()
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, cc = prev[x], (prev[x - bpp] if x >= bpp else 0)
            p = a + b - cc
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            pred = [0, a, b, (a + b) // 2, paeth][ftype]
            line[x] = (line[x] + pred) & 0xFF
        out += line
        prev = line
    return np.frombuffer(bytes(out), dtype=">u2" if depth == 16 else np.uint8).reshape(h, w, c).astype(f"uint{depth}")


@pytest.mark.parametrize("channels,color_type", [(2, 4), (3, 2), (4, 6)])
def test_16bit_colour_png_read_keeps_16_bits(channels: int, color_type: int, tmp_path: Path) -> None:
    a = RNG.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    src = tmp_path / "deep.png"
    src.write_bytes(_png_bytes(7, 5, 16, color_type, a.astype(">u2").tobytes()))
    pic = uio.read_image(src)
    assert pic.bits == 16 and pic.has_alpha == (channels != 3) and pic.channels == (1 if channels == 2 else 3)
    np.testing.assert_array_equal(uio.to_numpy(pic), a)


@FAST
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    channels=st.sampled_from([2, 3, 4]),
    data=st.data(),
)
def test_16bit_png_write_is_exact(tmp_path: Path, h: int, w: int, channels: int, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    a = np.random.default_rng(seed).integers(0, 65536, (h, w, channels), dtype=np.uint16)
    a[0, 0] = 65535  # extremes: Up differences wrap
    out = uio.write_image(uio.from_numpy(a), tmp_path / "deep.png", overwrite=True)
    np.testing.assert_array_equal(_decode_png_independently(out.read_bytes()), a)
    np.testing.assert_array_equal(uio.to_numpy(uio.read_image(out)), a)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_deflated_in_blocks_on_threads_is_exact_and_thread_independent(
    channels: int, dtype: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak = np.iinfo(dtype).max
    a = RNG.integers(0, peak + 1, (23, 9, channels), dtype=dtype)
    a[5:9] = peak  # runs that deflate well next to noise that does not
    monkeypatch.setattr(encoders, "BLOCK_BYTES", 50)  # a block every 1-2 rows: many joins
    written = []
    for threads in (1, 3):
        buf = io.BytesIO()
        encoders.write_png(buf, a, None, None, threads=threads)
        written.append(buf.getvalue())
    assert written[0] == written[1]
    np.testing.assert_array_equal(_decode_png_independently(written[0]), a)
    path = tmp_path / "p.png"
    path.write_bytes(written[0])
    np.testing.assert_array_equal(uio.to_numpy(uio.read_image(path)).reshape(a.shape), a)


def test_adler32_of_a_concatenation_from_its_parts() -> None:
    for n_a, n_b in [(0, 7), (7, 0), (1, 1), (5552, 5553), (70000, 131071)]:
        x, y = RNG.bytes(n_a), RNG.bytes(n_b)
        assert encoders._adler32_cat(zlib.adler32(x), zlib.adler32(y), n_b) == zlib.adler32(x + y)


def test_16bit_rgb_png_transparency_key_uses_all_16_bits(tmp_path: Path) -> None:
    a = np.full((3, 4, 3), 1000, dtype=np.uint16)
    a[0, 0] = (0x1234, 0x5678, 0x9ABC)  # the key colour
    a[0, 1] = (0x1200, 0x5600, 0x9A00)  # same high bytes: transparent only if 8-bit compared
    src = tmp_path / "trns16.png"
    trns = struct.pack(">HHH", 0x1234, 0x5678, 0x9ABC)
    src.write_bytes(_png_bytes(4, 3, 16, 2, a.astype(">u2").tobytes(), trns=trns))
    pic = uio.read_image(src)
    assert pic.has_alpha and pic.bits == 16
    expected = np.ones((3, 4), np.float32)
    expected[0, 0] = 0
    np.testing.assert_array_equal(pic.alpha[0].numpy(), expected)


def test_i16_png_kept_16_bit(tmp_path: Path) -> None:
    a = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    src = tmp_path / "grey16.png"
    Image.fromarray(a).save(src)
    pic = uio.read_image(src)
    assert pic.bits == 16 and pic.mode == "I;16"
    out = uio.write_image(pic, tmp_path / "o.png")
    with Image.open(out) as back:
        assert back.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(back), a)


@pytest.mark.parametrize("compression", [None, "adobe_deflate"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16bit_rgba_tiff_both_ways(compression: str | None, byteorder: str, tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = RNG.integers(0, 65536, (6, 9, 4), dtype=np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, a, photometric="rgb", extrasamples=[2], compression=compression, byteorder=byteorder)
    pic = uio.read_image(src)
    assert pic.bits == 16 and pic.has_alpha
    np.testing.assert_array_equal(uio.to_numpy(pic), a)

    out = uio.write_image(pic.with_pixels(pic.color, pic.alpha), tmp_path / "out.tif")
    np.testing.assert_array_equal(tifffile.imread(out), a)
    rgb = uio.write_image(uio.from_numpy(a[..., :3], icc=SRGB), tmp_path / "rgb.tif")
    np.testing.assert_array_equal(tifffile.imread(rgb), a[..., :3])
    assert uio.read_image(rgb).icc == SRGB


def test_premultiplied_16bit_tiff_is_read_at_8_bits_with_a_note(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = np.full((2, 3, 4), 0x8000, dtype=np.uint16)
    src = tmp_path / "assoc.tif"
    tifffile.imwrite(src, a, photometric="rgb", extrasamples=[1])  # associated alpha
    with pytest.warns(uio.ImageIOWarning, match="8 bits"):
        pic = uio.read_image(src)
    assert pic.bits == 8 and pic.has_alpha and pic.size == (3, 2)


def test_16bit_png_carries_icc_and_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "cam"
    pic = uio.from_numpy(RNG.integers(0, 65536, (3, 4, 3), dtype=np.uint16), icc=SRGB, exif=exif.tobytes())
    back = uio.read_image(uio.write_image(pic, tmp_path / "d.png"))
    assert back.icc == SRGB
    kept = Image.Exif()
    kept.load(back.exif)
    assert kept[0x010F] == "cam"


# --------------------------------------------------------------------------- atomic writes


def _crash_after_some_bytes(exc: BaseException):
    def save(self: Image.Image, fp, *args, **kwargs) -> None:
        fp.write(b"\x89PNG partial data" * 10)
        raise exc

    return save


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_crash_mid_write_leaves_nothing(exc: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pic = uio.from_numpy(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    folder = tmp_path / "out"
    folder.mkdir()
    existing = folder / "kept.png"
    existing.write_bytes(b"previous result")
    crash = _crash_after_some_bytes(exc)
    monkeypatch.setattr(Image.Image, "save", crash)  # Pillow's encoders
    monkeypatch.setattr(uio, "_write_png", lambda fp, *args: crash(None, fp))  # our PNG encoder

    expected = InputError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        uio.write_image(pic, folder / "new.png")
    if expected is InputError:
        assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(expected):
        uio.write_image(pic, existing, overwrite=True)
    assert sorted(os.listdir(folder)) == ["kept.png"]  # no partial file, no temp litter
    assert existing.read_bytes() == b"previous result"


def test_crash_in_png_encoder_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(f, *args) -> None:
        f.write(b"half")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(uio, "_write_png", broken)
    with pytest.raises(InputError, match="Input/output error"):
        uio.write_image(uio.from_numpy(np.zeros((2, 2, 3), np.uint16)), tmp_path / "d.png")
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"mine")
    pic = uio.from_numpy(np.zeros((2, 2), np.uint8))
    with pytest.raises(uio.OutputExistsError, match="--overwrite") as info:
        uio.write_image(pic, target)
    assert isinstance(info.value, InputError) and str(target) in str(info.value)
    assert target.read_bytes() == b"mine"
    uio.write_image(pic, target, overwrite=True)
    assert Image.open(target).size == (2, 2)
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_target_appearing_during_the_write_is_not_clobbered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "race.png"
    real_write = uio._write_png

    def write_while_someone_else_writes(fp, *args) -> None:
        target.write_bytes(b"other process")
        real_write(fp, *args)

    monkeypatch.setattr(uio, "_write_png", write_while_someone_else_writes)
    with pytest.raises(uio.OutputExistsError):
        uio.write_image(uio.from_numpy(np.zeros((2, 2), np.uint8)), target)
    assert target.read_bytes() == b"other process"
    assert os.listdir(tmp_path) == ["race.png"]


def test_never_writes_onto_an_input(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    _rgb().save(src)
    before = src.read_bytes()
    pic = uio.read_image(src)
    with pytest.raises(InputError, match="input"):
        uio.write_image(pic, src, overwrite=True)
    other = tmp_path / "other.png"
    _rgb().save(other)
    link = tmp_path / "alias.png"
    os.link(other, link)  # a hard link is the same file under another name
    with pytest.raises(InputError, match="input"):
        uio.write_image(pic, link, overwrite=True, protect=[other])
    assert src.read_bytes() == before


def test_written_file_has_normal_permissions(tmp_path: Path) -> None:
    out = uio.write_image(uio.from_numpy(np.zeros((2, 2), np.uint8)), tmp_path / "p.png")
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_file_systems_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    pic = uio.from_numpy(np.zeros((2, 3), np.uint8))
    out = uio.write_image(pic, tmp_path / "a.png")
    assert Image.open(out).size == (3, 2)
    real_write = uio._write_png

    def write_while_someone_else_writes(fp, *args) -> None:
        (tmp_path / "b.png").write_bytes(b"other process")
        real_write(fp, *args)

    monkeypatch.setattr(uio, "_write_png", write_while_someone_else_writes)
    with pytest.raises(uio.OutputExistsError):
        uio.write_image(pic, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == b"other process"
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]


# --------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    png = tmp / "good.png"
    _rgb(40, 40).save(png)
    data = png.read_bytes()
    jpg = tmp / "good.jpg"
    _rgb(40, 40).save(jpg)
    cases = {
        "zero-byte": ("empty.png", b"", "empty file"),
        "non-image": ("notes.png", b"just some text\nnot pixels\n", "not an image"),
        "truncated png": ("cut.png", data[: len(data) // 2], "corrupt or truncated"),
        "truncated jpeg": ("cut.jpg", jpg.read_bytes()[:300], "corrupt or truncated"),
        "corrupt png": ("bad.png", data[:60] + bytes(b ^ 0x5A for b in data[60:]), "corrupt or truncated"),
    }
    out = {}
    for name, (fname, content, cause) in cases.items():
        (tmp / fname).write_bytes(content)
        out[name] = (tmp / fname, cause)
    out["missing"] = (tmp / "nope.png", "no such file")
    (tmp / "dir.png").mkdir()
    out["folder"] = (tmp / "dir.png", "folder")
    return out


def test_bad_inputs_give_one_line_naming_the_file(tmp_path: Path) -> None:
    for name, (path, cause) in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            uio.read_image(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and cause in msg, (name, msg)
        assert "\n" not in msg and "Traceback" not in msg, name
        assert info.value.exit_code == 1


# --------------------------------------------------------------------------- pixel limit


def test_max_pixels_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big.png"
    _rgb(20, 30).save(src)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match="--max-pixels") as info:
        uio.read_image(src, max_pixels=599)
    assert str(src) in str(info.value) and "600" in str(info.value)
    with pytest.raises(InputError, match="--max-pixels"):
        uio.image_size(src, max_pixels=599)


def test_max_pixels_replaces_pillows_bomb_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big.png"
    _rgb(20, 30).save(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 px > 2x: Pillow alone would raise
    with _no_warning():
        with pytest.raises(InputError, match="--max-pixels") as info:
            uio.read_image(src)  # default: Pillow's limit
        assert "limit of 100" in str(info.value)
        assert uio.read_image(src, max_pixels=600).size == (30, 20)
        assert uio.read_image(src, max_pixels=0).size == (30, 20)  # 0 = no limit
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with pytest.raises(UsageError):
        uio.read_image(src, max_pixels=-1)


# --------------------------------------------------------------------------- numpy / PIL


@FAST
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    layout=st.sampled_from([(), (1,), (2,), (3,), (4,)]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    data=st.data(),
)
def test_numpy_round_trip(h: int, w: int, layout: tuple[int, ...], dtype: type, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if dtype is np.float32:
        arr = rng.random((h, w, *layout), dtype=np.float32)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, *layout), dtype=dtype)
    pic = uio.from_numpy(arr)
    assert pic.size == (w, h)
    assert pic.channels == (1 if layout in ((), (1,), (2,)) else 3)
    assert pic.has_alpha == (layout in ((2,), (4,)))
    back = uio.to_numpy(pic)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, arr[..., 0] if layout == (1,) else arr)


@pytest.mark.parametrize("name", ["1", "L", "LA", "P+transparency", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_pil_round_trip(name: str) -> None:
    img = MODES[name][0]()
    pic = uio.from_pil(img)
    back = uio.to_pil(pic)
    out_mode = MODES[name][5]
    assert back.size == img.size and back.mode == out_mode
    _assert_pixels(np.asarray(back), img, out_mode)


def test_pil_conversions_carry_metadata_and_orientation() -> None:
    img = _asymmetric()
    img.info["icc_profile"] = SRGB
    exif = Image.Exif()
    exif[0x0112] = 8
    img.info["exif"] = exif.tobytes()
    assert uio.from_pil(img).size == img.size  # not rotated unless asked
    pic = uio.from_pil(img, apply_orientation=True)
    np.testing.assert_array_equal(uio.to_numpy(pic), np.asarray(img.transpose(Image.Transpose.ROTATE_90)))
    out = uio.to_pil(pic)
    assert out.info["icc_profile"] == SRGB
    assert Image.Exif().load(out.info["exif"]) is None and out.getexif()[0x0112] == 1


def test_to_numpy_clips_integers_and_keeps_floats() -> None:
    pic = uio.from_numpy(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    over = pic.with_pixels(pic.color * 1.5 - 0.25, None)  # an unclamped network output
    np.testing.assert_array_equal(uio.to_numpy(over, np.uint8), [[0, 128, 255]])
    np.testing.assert_allclose(uio.to_numpy(over), [[-0.25, 0.5, 1.25]])
    with pytest.raises(UsageError):
        uio.from_numpy(np.zeros((2, 2), np.int64))
    with pytest.raises(UsageError):
        uio.from_numpy(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError):
        uio.Picture(color=torch.zeros(2, 3, 3))


# --------------------------------------------------------------------------- formats and names


@pytest.mark.parametrize(
    "requested,input_path,alpha,expected",
    [
        ("auto", "a/photo.JPG", False, ("JPEG", ".JPG")),
        ("auto", "photo.jpeg", True, ("PNG", ".png")),
        ("auto", "scan.tiff", True, ("TIFF", ".tiff")),
        ("auto", "anim.webp", True, ("WEBP", ".webp")),
        ("auto", "old.bmp", False, ("PNG", ".png")),
        ("auto", None, False, ("PNG", ".png")),
        ("JPG", "x.png", True, ("JPEG", ".jpg")),
        ("tif", "x.png", False, ("TIFF", ".tif")),
        ("webp", "x.png", False, ("WEBP", ".webp")),
    ],
)
def test_resolve_output_format(requested: str, input_path: str | None, alpha: bool, expected: tuple[str, str]) -> None:
    assert uio.resolve_output_format(requested, input_path, alpha) == expected


def test_unknown_formats_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--format"):
        uio.resolve_output_format("bmp", "x.png", False)
    pic = uio.from_numpy(np.zeros((2, 2), np.uint8))
    with pytest.raises(UsageError, match="--format"):
        uio.write_image(pic, tmp_path / "x.bmp")
    with pytest.raises(UsageError, match="--quality"):
        uio.write_image(pic, tmp_path / "x.jpg", quality=0)


def test_format_size_limits_are_checked_before_encoding(tmp_path: Path) -> None:
    wide = uio.Picture(color=torch.zeros(3, 1, 16384))
    with pytest.raises(InputError, match="too large for WEBP"):
        uio.write_image(wide, tmp_path / "w.webp")
    assert os.listdir(tmp_path) == []


def test_quality_is_used(tmp_path: Path) -> None:
    pic = uio.from_numpy(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    low = uio.write_image(pic, tmp_path / "low.jpg", quality=10).stat().st_size
    high = uio.write_image(pic, tmp_path / "high.jpg", quality=95).stat().st_size
    assert low < high / 2


def test_is_image_file(tmp_path: Path) -> None:
    png = tmp_path / "a.PNG"
    _rgb().save(png, format="PNG")
    hidden = tmp_path / "no_extension"
    hidden.write_bytes(png.read_bytes())
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    assert uio.is_image_file(png)
    assert not uio.is_image_file(hidden) and uio.is_image_file(hidden, sniff=True)
    assert not uio.is_image_file(text) and not uio.is_image_file(text, sniff=True)
    assert not uio.is_image_file(tmp_path)
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"} <= uio.IMAGE_EXTENSIONS
