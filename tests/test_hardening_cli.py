"""Issue 16, the main command: signals, --skip-existing, symbolic links and FIFOs, memory and
tile guards, animations, usage errors before any work, and one set of options (RunOptions)."""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import errors, make_png, run

import upscale_cli.commands.upscale as upscale_cmd
from upscale_cli import devices, upscale_image
from upscale_cli.options import DEFAULT_MODEL, MAX_OUTSCALE, RunOptions

REPO = Path(__file__).resolve().parents[1]


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decode fail the test: the checks under test come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr("upscale_cli.io.read_image", refuse)


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- signals: a real process ------------------------------------------------------------------


def _start(args: list[str]) -> subprocess.Popen:
    """``python -m upscale_cli ARGS`` with SIGINT at its default (a background shell ignores
    it, and Python then installs no KeyboardInterrupt handler)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "upscale_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to signal it: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the moment to signal it")
        time.sleep(0.002)


def test_sigterm_while_writing_removes_the_temp_and_exits_143(tmp_path: Path) -> None:
    """Signalled while the output's temp file is being written: one line, the documented code,
    no traceback, no temp, no partial output; the image done before it stays."""
    src = tmp_path / "in"
    src.mkdir()
    make_png(src / "a.png", (8, 8))
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 600, 3), dtype=np.uint8)  # slow to compress
    Image.fromarray(noise).save(src / "b.png", compress_level=0)
    out = tmp_path / "out"
    proc = _start([src, "-o", out, "--model", "bicubic", "--scale", "4", "-q"])
    _wait_for(lambda: any(out.glob(".b_x4.png.*.tmp")), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["terminated"] and "Traceback" not in err
    assert _listing(out) == ["a_x4.png"]


def test_ctrl_c_while_computing_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """The first image is done (its JSON line is out), the second is in the network: SIGINT."""
    src = tmp_path / "in"
    src.mkdir()
    make_png(src / "a.png", (8, 8))
    make_png(src / "b.png", (300, 300), seed=1)
    out = tmp_path / "out"
    proc = _start([src, "-o", out, "--model", "default", "--tile", "64", "--json", "-q"])
    first = proc.stdout.readline()
    assert json.loads(first)["status"] == "done"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted"]
    assert _listing(out) == ["a_x4.png"]


def test_stale_temps_in_an_output_folder_are_swept_at_the_start(tmp_path: Path, capfd) -> None:
    """A temp a SIGKILL left (older than the run) goes, with a note under -v; a newer one (a
    run beside this one is writing it) stays."""
    src = make_png(tmp_path / "a.png", (8, 8))
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh = out / ".a_x2.png.k1ll3d00.tmp", out / ".b_x2.png.l1v1ng00.tmp"
    stale.write_bytes(b"half an image")
    fresh.write_bytes(b"being written")
    hour_ago, later = time.time() - 3600, time.time() + 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(fresh, (later, later))
    code, _, err = run([src, "-o", out, "--model", "bicubic", "--scale", "2", "-v"], capfd)
    assert code == 0, err
    assert not stale.exists() and fresh.exists()
    assert str(stale.name) in err and "note:" in err
    assert (out / "a_x2.png").exists()


# --- --skip-existing ----------------------------------------------------------------------------


def test_skip_existing_redoes_empty_truncated_and_wrong_size_outputs(tmp_path: Path, capfd) -> None:
    for name in ("a", "b", "c", "d"):
        make_png(tmp_path / f"{name}.png", (20, 12), seed=ord(name))
    out = tmp_path / "out"
    args = [tmp_path, "-o", out, "--model", "bicubic", "--scale", "2", "--json"]
    code, _, _ = run([*args, "-q"], capfd)
    assert code == 0
    good = (out / "d_x2.png").read_bytes()
    (out / "a_x2.png").write_bytes(b"")
    full = (out / "b_x2.png").read_bytes()
    (out / "b_x2.png").write_bytes(full[: len(full) // 2])
    make_png(out / "c_x2.png", (20, 12))  # a valid image, but not this run's size
    code, res, err = run([*args, "--skip-existing"], capfd)
    assert code == 0, err
    status = {Path(r["input"]).name: r["status"] for r in map(json.loads, res.splitlines())}
    assert status == {"a.png": "done", "b.png": "done", "c.png": "done", "d.png": "skipped"}
    assert sum("redoing" in line for line in err.splitlines()) == 3
    for name in ("a", "b", "c", "d"):
        with Image.open(out / f"{name}_x2.png") as img:
            img.load()
            assert img.size == (40, 24)
    assert (out / "d_x2.png").read_bytes() == good
    assert not list(out.glob(".*.tmp"))


# --- what the inputs are ----------------------------------------------------------------------


def test_symlink_pair_keeps_the_real_files_name(tmp_path: Path, capfd) -> None:
    """``a.png`` and ``b.png -> a.png``: the file is upscaled once, under the real name, and the
    link gets a note."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_png(folder / "a.png")
    (folder / "b.png").symlink_to("a.png")
    code, _, err = run([folder, "-o", tmp_path / "out", "--model", "bicubic", "--scale", "2"], capfd)
    assert code == 0, err
    assert _listing(tmp_path / "out") == ["a_x2.png"]
    assert "b.png" in err and "same file" in err
    # the link named alone is an input like any other
    code, _, _ = run([folder / "b.png", "-o", tmp_path / "alone", "--model", "bicubic", "--scale", "2", "-q"], capfd)
    assert code == 0 and _listing(tmp_path / "alone") == ["b_x2.png"]


def test_dangling_symlink_and_words_that_name_nothing_get_a_line_each(tmp_path: Path, capfd) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make_png(folder / "a.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no image")
    words = [folder, tmp_path / "empty", tmp_path / "texts", tmp_path / "nope.png", str(tmp_path / "z*.png")]
    code, out, err = run([*words, "-o", tmp_path / "out", "--model", "bicubic", "--scale", "2",
                          "--continue-on-error", "--json"], capfd)
    assert code == 1
    lines = errors(err)
    assert len(lines) == 5, err
    for needle in ("gone.png", "broken symbolic link", "empty", "texts", "nope.png", "z*.png"):
        assert any(needle in line for line in lines), (needle, lines)
    assert "Traceback" not in err
    assert _listing(tmp_path / "out") == ["a_x2.png"]  # the good input still done


def test_an_empty_folder_alone_exits_1_with_one_line(tmp_path: Path, capfd) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run([tmp_path / "empty", "--model", "bicubic"], capfd)
    assert code == 1 and len(errors(err)) == 1 and "no images" in errors(err)[0]


class _Hung(BaseException):
    """Not an Exception: nothing on the way may turn it into an input error."""


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path, capfd) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "in"
    folder.mkdir()
    make_png(folder / "a.png")
    os.mkfifo(folder / "b.png")

    def hung(signum, frame):
        raise _Hung()

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        code, _, err = run([fifo, "--model", "bicubic", "--scale", "2"], capfd)
        assert code == 1 and len(errors(err)) == 1
        assert "pipe.png" in errors(err)[0] and "not a regular file" in errors(err)[0]
        # in a folder a FIFO is skipped with a note, like any other non-image entry
        code, _, err = run([folder, "-o", tmp_path / "out", "--model", "bicubic", "--scale", "2"], capfd)
        assert code == 0 and "b.png" in err and "FIFO" in err
        assert _listing(tmp_path / "out") == ["a_x2.png"]
    except _Hung:
        pytest.fail("the run blocked on a FIFO")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_an_unreadable_folder_is_one_line(tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    make_png(folder / "a.png")
    folder.chmod(0)
    try:
        if os.access(folder, os.R_OK):  # root reads it anyway: refuse the listing as the kernel would
            real = os.scandir

            def scandir(path="."):
                if Path(path) == folder:
                    raise PermissionError(13, "Permission denied", str(path))
                return real(path)

            monkeypatch.setattr(os, "scandir", scandir)
        code, _, err = run([folder, "-r", "--model", "bicubic", "--scale", "2"], capfd)
    finally:
        folder.chmod(0o755)
    assert code == 1 and "Traceback" not in err
    lines = errors(err)
    assert len(lines) == 1 and "locked" in lines[0] and "cannot read the folder" in lines[0]


# --- resources ----------------------------------------------------------------------------------


def _jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A few hundred bytes of JPEG whose header (SOF0) declares ``width`` x ``height``."""
    Image.new("RGB", (8, 8), (90, 120, 150)).save(path, "JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_output_memory_is_checked_from_the_header_before_decoding(tmp_path: Path, capfd,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _jpeg_declaring(tmp_path / "bomb.jpg", 9000, 9000)
    assert bomb.stat().st_size < 1000 and Image.open(bomb).size == (9000, 9000)
    monkeypatch.setattr(devices, "available_ram", lambda *a: 8 << 30)
    _no_decoding(monkeypatch)
    for extra in ([], ["--dry-run"]):
        code, _, err = run([bomb, "--model", "bicubic", "--scale", "4", *extra], capfd)
        assert code == 1 and "Traceback" not in err
        lines = errors(err)
        assert len(lines) == 1 and "bomb.jpg" in lines[0], err
        assert "36000x36000" in lines[0] and "GiB" in lines[0] and "--max-pixels" in lines[0]
    # the final size counts too: a small image asked to become huge
    small = make_png(tmp_path / "small.png", (10, 10))
    code, _, err = run([small, "--model", "bicubic", "--scale", "2", "--width", "200000"], capfd)
    assert code == 1 and "--width" in errors(err)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.jpg", "small.png"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_a_tile_below_the_models_context_is_raised_and_matches_the_whole_image(tmp_path: Path, capfd) -> None:
    """Noise is the worst case for context: before, --tile 3 gave 18.6 dB and --tile 8 29.8 dB
    against the whole image."""
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    src = tmp_path / "noise.png"
    Image.fromarray(noise).save(src)
    outputs = {}
    for tile in ("0", "3", "8"):
        dst = tmp_path / f"t{tile}.png"
        code, _, err = run([src, "--model", DEFAULT_MODEL, "--tile", tile, "--device", "cpu", "--precision", "fp32",
                            "-o", dst], capfd)
        assert code == 0, err
        if tile != "0":
            assert f"--tile {tile} is below" in err and "using" in err
        outputs[tile] = np.asarray(Image.open(dst))
    for tile in ("3", "8"):
        assert _psnr(outputs[tile], outputs["0"]) >= 45.0


# --- animations ---------------------------------------------------------------------------------


def _gif(path: Path, frames: int = 3) -> Path:
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)).convert("P")
              for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=[50, 80, 120][:frames], loop=0)
    return path


def test_every_frame_of_an_animation_is_upscaled(tmp_path: Path, capfd) -> None:
    src = _gif(tmp_path / "anim.gif")
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "-o", tmp_path / "out"], capfd)
    assert code == 0, err
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--format", "gif", "-o", tmp_path / "gif"], capfd)
    assert code == 0, err
    for folder in ("out", "gif"):
        [made] = (tmp_path / folder).iterdir()
        with Image.open(made) as img:
            assert getattr(img, "n_frames", 1) == 3 and img.size == (24, 20)
    assert made.suffix == ".gif"


def test_an_output_format_without_frames_needs_first_frame(tmp_path: Path, capfd,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = _gif(tmp_path / "anim.gif")
    with monkeypatch.context() as m:
        _no_decoding(m)  # refused from the header, before the work
        code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--format", "jpg"], capfd)
    assert code == 1
    lines = errors(err)
    assert len(lines) == 1 and "anim.gif" in lines[0] and "3" in lines[0] and "--first-frame" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--format", "jpg", "--first-frame"], capfd)
    assert code == 0, err
    assert Image.open(tmp_path / "anim_x2.jpg").size == (24, 20)


# --- usage errors, before any work ---------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [(["--outscale", "nan"], "--outscale"), (["--outscale", "inf"], "--outscale"),
     (["--outscale", "1e9"], "--outscale"), (["--max-pixels", "-1"], "--max-pixels"), (["-o", "{tmp}/x.bmpx"], "bmpx"),
     (["-o", "{tmp}/existing.png", "{tmp}/b.png"], "existing.png"),
     (["-o", "{tmp}/new.png", "{tmp}/b.png"], "new.png")],
    ids=["nan", "inf", "1e9", "max-pixels", "bmpx", "existing-file", "file-for-two"],
)
def test_bad_flags_are_usage_errors_before_any_work(tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch,
                                                    extra: list[str], needle: str) -> None:
    make_png(tmp_path / "a.png")
    make_png(tmp_path / "b.png")
    (tmp_path / "existing.png").write_bytes(b"keep me")
    before = _listing(tmp_path)
    _no_decoding(monkeypatch)
    args = [word.format(tmp=tmp_path) for word in extra]
    code, _, err = run([tmp_path / "a.png", "--model", "bicubic", "--scale", "2", *args], capfd)
    assert code == 2, err
    lines = errors(err)
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert _listing(tmp_path) == before and (tmp_path / "existing.png").read_bytes() == b"keep me"


def test_outscale_bound_is_inclusive(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png", (2, 1))
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--outscale", f"{MAX_OUTSCALE:g}", "-q"], capfd)
    assert code == 0, err
    assert Image.open(tmp_path / f"a_x{MAX_OUTSCALE:g}.png").size == (200, 100)


# --- one set of options ------------------------------------------------------------------------


def test_every_option_is_a_flag_with_the_same_default() -> None:
    """The command's parameters are exactly RunOptions' fields, with RunOptions' defaults."""
    params = inspect.signature(upscale_cmd.upscale).parameters
    defaults = RunOptions()
    flat = {f: getattr(getattr(defaults, g), f) for g in vars(defaults) for f in vars(getattr(defaults, g))}
    assert set(params) - {"inputs", "version"} == set(flat)
    for name, value in flat.items():
        assert params[name].default == value, name


def test_the_api_uses_the_commands_defaults(tmp_path: Path, capfd) -> None:
    arr = np.random.default_rng(3).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    code, _, err = run([tmp_path / "a.png", "-q"], capfd)
    assert code == 0, err
    cli = np.asarray(Image.open(tmp_path / "a_x4.png"))
    api = upscale_image(arr)
    assert api.shape == (48, 40, 3) and np.array_equal(api, cli)
    with pytest.raises(TypeError, match="recursive"):
        upscale_image(arr, "bicubic", recursive=True)
