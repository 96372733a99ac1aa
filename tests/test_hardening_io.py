"""Image I/O hardening (issue 16): one read per input, only regular files, value ranges kept,
every frame kept, header probes, complete-output checks, stale temp files."""

from __future__ import annotations

import builtins
import os
import socket
import stat
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from upscale_cli import encoders, files
from upscale_cli import io as uio
from upscale_cli.api import upscale_image
from upscale_cli.errors import InputError, UsageError
from upscale_cli.reporting import Terminated

RNG = np.random.default_rng(16)


def _deep_png(path: Path, a: np.ndarray) -> Path:
    with open(path, "wb") as f:
        encoders.write_png(f, a, None, None)
    return path


def _nearest_x2(pic: uio.Picture) -> uio.Picture:
    """A stand-in for an upscaler: every pixel repeated 2x2."""

    def up(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat_interleave(2, 1).repeat_interleave(2, 2)

    return pic.with_pixels(up(pic.color), up(pic.alpha))


def _first(pic: uio.Picture) -> uio.Picture:
    """An animation's first frame, as a still."""
    return replace(pic, animation=None)


# --------------------------------------------------------------------------- one read per input


def test_16bit_png_is_decoded_from_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file replaced while it is decoded cannot give a picture mixing the two files."""
    a = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    src = _deep_png(tmp_path / "deep.png", a)
    other = _deep_png(tmp_path / "other.png", RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16))
    real_load = ImageFile.ImageFile.load

    def load_then_swap(self: ImageFile.ImageFile):
        result = real_load(self)
        if other.exists():
            os.replace(other, src)  # another process replaces the input mid-read
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_then_swap)
    np.testing.assert_array_equal(uio.to_numpy(uio.read_image(src)), a)


def test_an_input_is_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _deep_png(tmp_path / "deep.png", RNG.integers(0, 65536, (4, 4, 4), dtype=np.uint16))
    opens: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == src:
            opens.append("open")
        return real_open(file, *args, **kwargs)

    def counting_os_open(file, *args, **kwargs):
        if Path(file) == src:
            opens.append("os.open")
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    pic = uio.read_image(src)
    assert pic.bits == 16 and pic.has_alpha
    assert len(opens) == 1, opens


# --------------------------------------------------------------------------- regular files only


def _in_thread(fn, timeout: float = 10.0):
    """``fn()``'s result or exception; a call that blocks fails the test instead of hanging it."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked on a special file"
    return box


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    try:
        for name in ("read_image", "probe", "image_size"):
            box = _in_thread(lambda: getattr(uio, name)(fifo))
            assert isinstance(box.get("error"), InputError), box
            assert str(box["error"]) == f"{fifo}: not a regular file (FIFO)"
        assert _in_thread(lambda: uio.output_is_complete(fifo, None))["value"] is False
        assert _in_thread(lambda: uio.is_image_file(fifo, sniff=True))["value"] is False
    finally:
        try:  # release a reader that a regression left blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_sockets_devices_and_dangling_links_are_named(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # AF_UNIX paths are short
    try:
        sock_path = short / "s.png"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(sock_path))
            with pytest.raises(InputError, match=r"not a regular file \(socket\)$"):
                uio.read_image(sock_path)
    finally:
        for p in short.iterdir():
            p.unlink()
        short.rmdir()
    if stat.S_ISCHR(os.stat("/dev/null").st_mode):
        with pytest.raises(InputError, match=r"^/dev/null: not a regular file \(character device\)$"):
            uio.read_image("/dev/null")
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "deleted.png")
    with pytest.raises(InputError) as info:
        uio.read_image(link)
    assert str(info.value) == f"{link}: broken symlink to {tmp_path / 'deleted.png'}"
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="symlink loop"):
        uio.probe(loop)


# --------------------------------------------------------------------------- value ranges


def test_float_tiff_over_1_keeps_its_range_through_an_upscale(tmp_path: Path) -> None:
    a = np.linspace(0, 1000, 12 * 16, dtype=np.float32).reshape(12, 16)
    src = tmp_path / "height.tif"
    Image.fromarray(a).save(src)
    pic = uio.read_image(src)
    assert pic.mode == "F" and pic.value_range == (0.0, 1000.0)
    assert float(pic.color.min()) == 0.0 and float(pic.color.max()) == 1.0  # mapped onto 0..1, not clamped

    out = upscale_image(pic, "bicubic", scale=2)
    assert out.size == (32, 24) and out.value_range == (0.0, 1000.0)
    written = uio.write_image(out, tmp_path / "up.tif")
    with Image.open(written) as back:
        b = np.asarray(back)
        assert back.mode == "F" and b.shape == (24, 32)
    assert b.max() == pytest.approx(1000, abs=1) and b.min() == pytest.approx(0, abs=1)
    assert b.max() > 999  # not clamped to 1

    assert "0..1000" in uio.output_holds(out, "png") and "--format tiff" in uio.output_holds(out, "png")
    assert uio.output_holds(out, "tiff") is None
    with pytest.raises(InputError, match=r"up\.png: its values \(0\.\.1000\) go outside 0\.\.1"):
        uio.write_image(out, tmp_path / "up.png")
    assert not (tmp_path / "up.png").exists()


def test_int32_tiff_outside_16_bits_round_trips_exactly(tmp_path: Path) -> None:
    a = np.array([[-5000, 0, 12], [70000, 300000, 65535]], np.int32)
    src = tmp_path / "i.tif"
    Image.fromarray(a).save(src)
    pic = uio.read_image(src)
    assert pic.mode == "I" and pic.value_range is not None
    with Image.open(uio.write_image(pic, tmp_path / "o.tif")) as back:
        assert back.mode == "I"
        np.testing.assert_array_equal(np.asarray(back), a)
    assert "-5000..300000" in uio.output_holds(pic, "png")
    in_range = tmp_path / "fits.tif"
    Image.fromarray(np.array([[0, 65535]], np.int32)).save(in_range)
    assert uio.read_image(in_range).value_range is None  # 0..65535: the usual scale, nothing to keep


def test_nan_samples_are_refused_with_one_line(tmp_path: Path) -> None:
    a = np.ones((3, 3), np.float32)
    a[1, 1] = np.nan
    src = tmp_path / "nan.tif"
    Image.fromarray(a).save(src)
    with pytest.raises(InputError, match=r"nan\.tif: holds NaN or infinite sample values"):
        uio.read_image(src)
    with pytest.raises(UsageError, match="NaN"):
        uio.from_numpy(a)


def test_float_arrays_outside_0_1_keep_their_range_in_the_api() -> None:
    arr = np.linspace(-2, 5, 8 * 8, dtype=np.float32).reshape(8, 8, 1).repeat(3, axis=2)
    out = upscale_image(arr, "bicubic", scale=2)
    assert out.dtype == np.float32 and out.shape == (16, 16, 3)
    assert out.min() == pytest.approx(-2, abs=0.05) and out.max() == pytest.approx(5, abs=0.05)
    with pytest.raises(UsageError, match="float dtype"):
        uio.to_numpy(uio.from_numpy(arr), np.uint8)


# --------------------------------------------------------------------------- frames


def _three_frame_gif(path: Path, transparent: bool = False) -> list[np.ndarray]:
    """A GIF whose frames 2 and 3 are partial (Pillow writes only what changed); returns the
    frames as they should be seen (composited, RGBA)."""
    frames = []
    for i in range(3):
        a = np.zeros((6, 8, 4), np.uint8)
        a[..., 3] = 0 if transparent else 255
        a[..., :3] = (10 * i, 20, 30) if not transparent else 0
        a[i : i + 3, i : i + 4] = (200, 60 * i, 10, 255)
        frames.append(a)
    imgs = [Image.fromarray(f if transparent else f[..., :3]) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=[50, 70, 90], loop=0, disposal=[1, 2, 1])
    with Image.open(path) as src:
        seen = []
        for i in range(3):
            src.seek(i)
            seen.append(np.asarray(src.convert("RGBA")))
    return seen


def _frames_of(path: Path) -> tuple[list[np.ndarray], list[float], object]:
    with Image.open(path) as im:
        out, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()
            out.append(np.asarray(im.convert("RGBA")))
            durations.append(im.info.get("duration"))
        return out, durations, im.info.get("loop")


@pytest.mark.parametrize("ext", ["gif", "png", "webp", "tif"])
def test_animated_gif_keeps_every_frame(ext: str, tmp_path: Path) -> None:
    seen = _three_frame_gif(tmp_path / "anim.gif")
    pic = uio.read_image(tmp_path / "anim.gif")
    assert pic.frame_count == 3 and pic.animation.durations == (50, 70, 90) and pic.animation.plays == 0
    assert pic.animation.disposal == ("none", "background", "none")

    up = uio.map_frames(pic, _nearest_x2)
    assert up.frame_count == 3 and all(f.size == (16, 12) for f in up.frames)
    out = uio.write_image(up, tmp_path / f"up.{ext}")
    frames, durations, loop = _frames_of(out)
    assert len(frames) == 3
    if ext != "tif":  # TIFF pages have no timing
        assert durations == [50, 70, 90] and loop == 0
    if ext != "webp":  # lossy
        for got, want in zip(frames, seen):
            np.testing.assert_array_equal(got, want.repeat(2, 0).repeat(2, 1))
    again = uio.read_image(out)
    assert again.frame_count == 3
    if ext in ("gif", "png"):
        assert again.animation.disposal == ("none", "background", "none")


@pytest.mark.parametrize("ext", ["gif", "png"])
def test_transparent_partial_gif_frames_are_composited_whole(ext: str, tmp_path: Path) -> None:
    seen = _three_frame_gif(tmp_path / "sprite.gif", transparent=True)
    pic = uio.read_image(tmp_path / "sprite.gif")
    assert pic.has_alpha and all(f.has_alpha for f in pic.frames)
    out = uio.write_image(uio.map_frames(pic, _nearest_x2), tmp_path / f"up.{ext}")
    frames, _, _ = _frames_of(out)
    for got, want in zip(frames, seen):
        want = want.repeat(2, 0).repeat(2, 1)
        visible = want[..., 3] > 0
        np.testing.assert_array_equal(got[..., 3] > 0, visible)
        np.testing.assert_array_equal(got[visible], want[visible])


def test_frames_refused_where_the_format_holds_one(tmp_path: Path) -> None:
    _three_frame_gif(tmp_path / "anim.gif")
    info = uio.probe(tmp_path / "anim.gif")
    assert info.frames == 3 and info.size == (8, 6)
    reason = uio.output_holds(info, "jpg")
    assert reason.startswith("3 frames") and "--first-frame" in reason
    assert uio.output_holds(info, "png") is None and not uio.can_hold_frames("jpeg") and uio.can_hold_frames("tif")
    pic = uio.read_image(tmp_path / "anim.gif")
    with pytest.raises(InputError, match="3 frames.*--first-frame"):
        uio.write_image(pic, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    still = uio.read_image(tmp_path / "anim.gif", first_frame=True)
    assert still.frame_count == 1 and still.animation is None
    uio.write_image(still, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="map_frames"):
        pic.with_pixels(pic.color, None)  # one frame's pixels cannot replace an animation's
    with pytest.raises(UsageError, match="animation"):
        uio.to_pil(pic)


def test_apng_durations_loop_and_disposal_round_trip(tmp_path: Path) -> None:
    imgs = [Image.fromarray(RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)) for _ in range(3)]
    imgs[0].save(tmp_path / "a.png", save_all=True, append_images=imgs[1:], duration=[40, 80, 120], loop=3,
                 disposal=[0, 1, 2], blend=0)
    pic = uio.read_image(tmp_path / "a.png")
    anim = pic.animation
    assert (anim.durations, anim.plays, anim.disposal) == ((40, 80, 120), 3, ("none", "background", "previous"))
    out = uio.write_image(pic, tmp_path / "b.png")
    with Image.open(out) as back:
        assert back.n_frames == 3 and back.info["loop"] == 3
        for i, img in enumerate(imgs):
            back.seek(i)
            back.load()
            assert back.info["duration"] == anim.durations[i] and back.info["disposal"] == i
            np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


def test_16bit_animation_keeps_16_bits_in_apng_and_tiff(tmp_path: Path) -> None:
    frames = [RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16) for _ in range(3)]
    src = tmp_path / "deep.png"
    with open(src, "wb") as f:
        encoders.write_apng(f, frames, None, None, durations=[10, 20, 30], plays=0, dispose=[0, 0, 0])
    pic = uio.read_image(src)
    assert pic.frame_count == 3 and all(f.bits == 16 for f in (pic, *pic.frames))
    for got, want in zip((_first(pic), *pic.frames), frames):
        np.testing.assert_array_equal(uio.to_numpy(got), want)
    assert uio.write_image(pic, tmp_path / "again.png").read_bytes() == src.read_bytes()
    tiff = uio.read_image(uio.write_image(pic, tmp_path / "pages.tif"))
    for got, want in zip((_first(tiff), *tiff.frames), frames):
        np.testing.assert_array_equal(uio.to_numpy(got), want)


def test_multipage_tiff_pages_of_other_sizes(tmp_path: Path) -> None:
    pages = [Image.fromarray(RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)), Image.new("L", (3, 2), 77)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    pic = uio.read_image(tmp_path / "m.tif")
    assert pic.frame_count == 2 and pic.frames[0].size == (3, 2) and pic.frames[0].channels == 1
    assert "different sizes" in uio.output_holds(pic, "png") and uio.output_holds(pic, "tiff") is None
    with Image.open(uio.write_image(uio.map_frames(pic, _nearest_x2), tmp_path / "o.tif")) as back:
        assert back.n_frames == 2 and back.size == (12, 8)
        back.seek(1)
        assert back.mode == "L" and back.size == (6, 4)


def test_gif_output_is_explicit_and_auto_keeps_gif_lossless() -> None:
    assert uio.resolve_output_format("gif", "x.png", False) == ("GIF", ".gif")
    assert uio.resolve_output_format("auto", "anim.gif", True) == ("PNG", ".png")
    assert uio.resolve_output_format("auto", "anim.apng", True) == ("PNG", ".apng")


# --------------------------------------------------------------------------- probe


def test_probe_reads_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = _deep_png(tmp_path / "deep.png", RNG.integers(0, 65536, (3, 5, 4), dtype=np.uint16))
    Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp_path / "f.tif")
    _three_frame_gif(tmp_path / "anim.gif", transparent=True)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels decoded by probe")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    d = uio.probe(deep)
    assert (d.size, d.frames, d.channels, d.has_alpha, d.bits, d.range_known) == ((5, 3), 1, 3, True, 16, True)
    f = uio.probe(tmp_path / "f.tif")
    assert (f.size, f.channels, f.has_alpha, f.bits, f.range_known) == ((3, 2), 1, False, 32, False)
    g = uio.probe(tmp_path / "anim.gif")
    assert (g.frames, g.has_alpha, g.bits, g.format) == (3, True, 8, "GIF")
    with pytest.raises(InputError, match="--max-pixels"):
        uio.probe(deep, max_pixels=14)
    assert uio.image_size(deep) == (5, 3)


# --------------------------------------------------------------------------- complete outputs


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "gif", "tif"])
def test_only_whole_outputs_count_as_complete(ext: str, tmp_path: Path) -> None:
    pic = uio.from_numpy(RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = uio.write_image(pic, tmp_path / f"o.{ext}")
    assert uio.output_is_complete(out, (30, 40)) and uio.output_is_complete(out, None)
    assert not uio.output_is_complete(out, (30, 41))
    data = out.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    for size in (0, 1, 20, len(data) // 2, len(data) - 9, len(data) - 1):
        cut.write_bytes(data[:size])
        assert not uio.output_is_complete(cut, (30, 40)), size
    assert not uio.output_is_complete(tmp_path / "missing.png", None)


def test_an_animation_is_complete_only_with_every_frame(tmp_path: Path) -> None:
    _three_frame_gif(tmp_path / "anim.gif")
    out = uio.write_image(uio.read_image(tmp_path / "anim.gif"), tmp_path / "o.png")
    assert uio.output_is_complete(out, (8, 6))
    data = out.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 3 // 4])  # the last frame's data is cut
    assert not uio.output_is_complete(tmp_path / "cut.png", (8, 6))


# --------------------------------------------------------------------------- temp files


def test_stale_temps_from_a_killed_run_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_open = os.open

    def recording_open(name, *args, **kwargs):
        if str(name).endswith(".tmp"):
            made.append(str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    uio.write_image(uio.from_numpy(np.zeros((2, 2), np.uint8)), tmp_path / "a.png")
    with files.atomic_path(tmp_path / "w.pt") as tmp:
        tmp.write_bytes(b"weights")
    monkeypatch.undo()
    assert len(made) == 2 and all(files.TEMP_NAME.fullmatch(Path(n).name) for n in made)

    start = time.time()
    stale = [tmp_path / Path(n).name for n in made]  # what a kill -9 mid-write leaves
    for p in stale:
        p.write_bytes(b"partial")
        os.utime(p, (start - 60, start - 60))
    fresh = tmp_path / ".b.png.k2j4h5g6.tmp"  # another run writing now
    fresh.write_bytes(b"in progress")
    kept = [tmp_path / ".notes.tmp", tmp_path / "x.png.abcdefgh.tmp", tmp_path / "a.png"]
    for p in kept[:2]:
        p.write_bytes(b"mine")
        os.utime(p, (start - 60, start - 60))
    (tmp_path / ".dir.png.abcdefgh.tmp").mkdir()
    (tmp_path / ".link.png.abcdefgh.tmp").symlink_to(tmp_path / "a.png")

    # a run that writes only a.png leaves the other names' temps (another shard's) alone
    assert files.sweep_stale_temps(tmp_path, start, names={"a.png"}) == [tmp_path / Path(made[0]).name]
    removed = files.sweep_stale_temps(tmp_path, start)
    assert sorted(removed) == sorted(stale[1:])
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in kept)
    assert (tmp_path / ".link.png.abcdefgh.tmp").is_symlink() and (tmp_path / ".dir.png.abcdefgh.tmp").is_dir()
    assert files.sweep_stale_temps(tmp_path / "absent", start) == []


def test_sigterm_mid_write_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def terminated(f, *args) -> None:
        f.write(b"half a png")
        raise Terminated()

    monkeypatch.setattr(uio, "_write_png", terminated)
    with pytest.raises(Terminated):
        uio.write_image(uio.from_numpy(np.zeros((2, 2), np.uint8)), tmp_path / "a.png")
    with pytest.raises(Terminated):
        with files.atomic_path(tmp_path / "w.pt") as tmp:
            tmp.write_bytes(b"half")
            raise Terminated()
    assert os.listdir(tmp_path) == []
