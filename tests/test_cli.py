"""The main ``upscale INPUT...`` command end to end (in-process, through ``cli.main``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upscale_cli.cli import main
from upscale_cli.devices import resolve_device


def run(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``upscale ARGS`` in-process and return (exit code, stdout, stderr)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    code = exc.value.code
    return (0 if code is None else int(code)), out, err


def make_png(path: Path, size: tuple[int, int] = (24, 16), mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)
    return path


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_default_output_beside_input_with_suffix(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png")
    code, _, _ = run([src, "--model", "bicubic", "--scale", "2", "-q"], capfd)
    assert code == 0
    out = tmp_path / "a_x2.png"
    assert Image.open(out).size == (48, 32)


def test_output_file_for_single_input_and_custom_suffix(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png")
    code, _, _ = run([src, "--scale", "3", "-o", tmp_path / "big.png", "-q"], capfd)
    assert code == 0 and Image.open(tmp_path / "big.png").size == (72, 48)
    code, _, _ = run([src, "--scale", "2", "--suffix", "-{model}-{scale}x", "-q"], capfd)
    assert code == 0 and (tmp_path / "a-default-2x.png").exists()


def test_folder_recursive_mirrors_tree_and_skips_non_images(tmp_path: Path, capfd) -> None:
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    make_png(src / "one.png")
    make_png(src / "sub" / "two.png")
    make_png(src / "sub" / "deeper" / "three.png")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, _, err = run([src, "-r", "-o", out, "--scale", "2"], capfd)
    assert code == 0, err
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert made == ["one_x2.png", "sub/deeper/three_x2.png", "sub/two_x2.png"]
    assert "notes.txt" in err and "skipping" in err
    # without --recursive only the top level is taken
    out2 = tmp_path / "out2"
    code, _, _ = run([src, "-o", out2, "--scale", "2", "-q"], capfd)
    assert code == 0 and sorted(p.name for p in out2.rglob("*.png")) == ["one_x2.png"]


def test_glob_patterns(tmp_path: Path, capfd) -> None:
    for name in ("x1.png", "x2.png", "y.png"):
        make_png(tmp_path / name)
    code, out, _ = run([str(tmp_path / "x*.png"), "-o", tmp_path / "o", "--scale", "2", "--json", "-q"], capfd)
    assert code == 0
    inputs = sorted(Path(json.loads(line)["input"]).name for line in out.splitlines())
    assert inputs == ["x1.png", "x2.png"]


def test_json_lines_have_the_documented_fields(tmp_path: Path, capfd) -> None:
    make_png(tmp_path / "a.png", (20, 10))
    make_png(tmp_path / "b.png", (8, 8))
    code, out, _ = run([tmp_path, "-o", tmp_path / "o", "--scale", "4", "--json"], capfd)
    assert code == 0
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 2
    auto = resolve_device("auto")  # no --device: the CLI's own choice
    keys = {"input", "output", "width", "height", "out_width", "out_height", "model", "scale", "device",
            "precision", "tile", "seconds", "status", "error"}
    for rec in recs:
        assert keys <= rec.keys()
        assert rec["status"] == "done" and rec["error"] is None
        assert (rec["out_width"], rec["out_height"]) == (rec["width"] * 4, rec["height"] * 4)
        assert Path(rec["output"]).exists()
        assert rec["model"] == "default" and rec["device"] == str(auto)
        assert rec["precision"] in ({"fp32", "bf16"} if auto.type == "cpu" else {"fp32", "fp16", "bf16"})


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "empty"), (b"this is not an image at all", "image"), (None, "truncated")],
    ids=["zero-byte", "non-image", "truncated"],
)
def test_bad_inputs_one_line_error_exit_1(tmp_path: Path, capfd, content: bytes | None, cause: str) -> None:
    bad = tmp_path / "bad.png"
    if content is None:
        good = make_png(tmp_path / "full.png", (64, 64)).read_bytes()
        content = good[: len(good) // 2]
        (tmp_path / "full.png").unlink()
    bad.write_bytes(content)
    code, _, err = run([bad, "--scale", "2"], capfd)
    assert code == 1
    lines = errors(err)
    assert len(lines) == 1 and "bad.png" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "bad_x2.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]  # no partial output, no temp litter


def test_traceback_only_with_verbose(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    _, _, err = run([bad, "--scale", "2", "-v"], capfd)
    assert "Traceback" in err


def test_stop_at_first_failure_unless_continue_on_error(tmp_path: Path, capfd) -> None:
    (tmp_path / "a_bad.png").write_bytes(b"junk")
    make_png(tmp_path / "b.png")
    make_png(tmp_path / "c.png")
    code, _, err = run([tmp_path, "--scale", "2"], capfd)
    assert code == 1 and not (tmp_path / "b_x2.png").exists()
    assert "not run" in err
    code, out, err = run([tmp_path, "--scale", "2", "--continue-on-error", "--json", "-q"], capfd)
    assert code == 1
    status = {Path(json.loads(line)["input"]).name: json.loads(line)["status"] for line in out.splitlines()}
    assert status == {"a_bad.png": "failed", "b.png": "done", "c.png": "done"}


def test_refuses_to_overwrite_then_skip_existing_resumes(tmp_path: Path, capfd) -> None:
    make_png(tmp_path / "a.png")
    make_png(tmp_path / "b.png")
    out = tmp_path / "o"
    out.mkdir()
    (out / "a_x2.png").write_bytes(b"precious")
    both = [tmp_path / "a.png", tmp_path / "b.png", "-o", out, "--scale", "2"]
    code, _, err = run([*both, "--continue-on-error"], capfd)
    assert code == 1 and "--overwrite" in err
    assert (out / "a_x2.png").read_bytes() == b"precious"
    assert (out / "b_x2.png").exists()
    code, res, err = run([*both, "--skip-existing", "--json"], capfd)  # a_x2.png is no image: redone, with a note
    assert code == 0
    assert [json.loads(line)["status"] for line in res.splitlines()] == ["done", "skipped"]
    assert "redoing" in err and Image.open(out / "a_x2.png").size == (48, 32)
    code, res, _ = run([*both, "--skip-existing", "--json"], capfd)
    assert code == 0
    assert [json.loads(line)["status"] for line in res.splitlines()] == ["skipped", "skipped"]
    code, _, _ = run([tmp_path / "a.png", "-o", out, "--scale", "2", "--overwrite", "-q"], capfd)
    assert code == 0 and Image.open(out / "a_x2.png").size == (48, 32)


def test_input_is_never_overwritten(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png")
    before = src.read_bytes()
    code, _, err = run([src, "--scale", "2", "-o", src, "--overwrite"], capfd)
    assert code == 1 and src.read_bytes() == before
    assert "input" in errors(err)[0]
    # an empty suffix would write onto the input as well
    code, _, err = run([src, "--scale", "2", "--suffix", "", "--overwrite"], capfd)
    assert code == 1 and src.read_bytes() == before


def test_dry_run_writes_nothing(tmp_path: Path, capfd) -> None:
    make_png(tmp_path / "a.png")
    make_png(tmp_path / "b.png")
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run([tmp_path, "-o", tmp_path / "out", "--scale", "4", "--dry-run", "--json"], capfd)
    assert code == 0
    assert sorted(tmp_path.rglob("*")) == before
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in recs] == ["planned", "planned"]
    assert recs[0]["out_width"] == 96 and "a.png" in err


def test_shards_are_disjoint_and_cover_everything(tmp_path: Path, capfd) -> None:
    for i in range(7):
        make_png(tmp_path / f"img{i}.png", (8, 8), seed=i)
    seen: list[str] = []
    for k in (1, 2, 3):
        code, out, _ = run([tmp_path, "--scale", "2", "--dry-run", "--json", "--shard", f"{k}/3"], capfd)
        assert code == 0
        seen += [json.loads(line)["input"] for line in out.splitlines()]
    assert len(seen) == len(set(seen)) == 7


@pytest.mark.parametrize(
    "args",
    [["--model", "no-such-model"], ["--shard", "4/3"], ["--shard", "x"], ["--overwrite", "--skip-existing"],
     ["--format", "bmp"], ["--quality", "0"], ["--tile", "huge"], ["--outscale", "2", "--width", "10"]],
)
def test_usage_errors_exit_2(tmp_path: Path, capfd, args: list[str]) -> None:
    src = make_png(tmp_path / "a.png")
    code, _, err = run([src, "--scale", "2", *args], capfd)
    assert code == 2, err
    assert len(errors(err)) == 1 or "Usage" in err or "Invalid" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_missing_input_is_a_failure_naming_it(tmp_path: Path, capfd) -> None:
    code, _, err = run([tmp_path / "nope.png", "--scale", "2"], capfd)
    assert code == 1 and "nope.png" in errors(err)[0]


def test_outscale_width_height(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png", (40, 20))
    run([src, "--scale", "4", "--outscale", "2.5", "-o", tmp_path / "o1.png", "-q"], capfd)
    assert Image.open(tmp_path / "o1.png").size == (100, 50)
    run([src, "--scale", "4", "--width", "60", "-o", tmp_path / "o2.png", "-q"], capfd)
    assert Image.open(tmp_path / "o2.png").size == (60, 30)
    run([src, "--scale", "4", "--width", "50", "--height", "70", "-o", tmp_path / "o3.png", "-q"], capfd)
    assert Image.open(tmp_path / "o3.png").size == (50, 70)


def test_alpha_and_grey_are_kept(tmp_path: Path, capfd) -> None:
    rgba = make_png(tmp_path / "rgba.png", (12, 10), "RGBA")
    grey = make_png(tmp_path / "grey.png", (12, 10), "L")
    code, _, _ = run([rgba, grey, "--scale", "2", "-o", tmp_path / "o", "-q"], capfd)
    assert code == 0
    assert Image.open(tmp_path / "o" / "rgba_x2.png").mode == "RGBA"
    assert Image.open(tmp_path / "o" / "grey_x2.png").mode == "L"


def test_weights_file_alone_decides_the_model(tmp_path: Path, capfd) -> None:
    """A safetensors export (arch, kwargs, scale in its metadata) runs with no other flag."""
    import torch

    from upscale_cli.models import create_model
    from upscale_cli.weights import save_weights

    torch.manual_seed(0)
    net = create_model("espcn", 3)
    path = tmp_path / "tiny.safetensors"
    spec_kwargs: dict = {}
    save_weights(path, net.state_dict(), name="my-espcn", arch="espcn", kwargs=spec_kwargs, scales=[3], scale=3,
                 convention="y")
    src = make_png(tmp_path / "a.png", (16, 16))
    code, out, err = run([src, "--weights", path, "--json", "-o", tmp_path / "o.png"], capfd)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["scale"] == 3 and Image.open(tmp_path / "o.png").size == (48, 48)


def test_subcommand_dispatch_and_python_m(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "upscale_cli", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "--model" in res.stdout and "bench" in res.stdout
    res = subprocess.run([sys.executable, "-m", "upscale_cli", "models", "--json"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    names = {m["name"] for m in json.loads(res.stdout)}
    assert {"default", "bicubic", "edsr", "carn-m"} <= names
    assert json.loads(res.stdout)[0]["name"] == "default"  # the default model is listed first


def test_help_keeps_the_extras_brackets_in_install_hints() -> None:
    """Rich markup would eat ``[plot]`` in ``pip install 'upscale-cli[plot]'`` and leave a wrong command."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "240"}
    res = subprocess.run([sys.executable, "-m", "upscale_cli", "bench", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pip install 'upscale-cli[plot]'" in res.stdout


def test_unavailable_weights_exit_3_with_one_line(tmp_path: Path, capfd) -> None:
    """Offline (conftest sets HF_HUB_OFFLINE) with nothing cached: exit 3, one line naming the file."""
    src = make_png(tmp_path / "a.png")
    code, _, err = run([src, "--model", "carn-m", "--scale", "2"], capfd)
    assert code == 3
    lines = errors(err)
    assert len(lines) == 1 and "carn_m.pth" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_jpeg_output_of_alpha_image_flattens_with_a_warning(tmp_path: Path, capfd) -> None:
    src = make_png(tmp_path / "a.png", (8, 8), "RGBA")
    code, _, err = run([src, "--scale", "2", "--format", "jpg"], capfd)
    assert code == 0 and "warning:" in err and "white" in err
    assert Image.open(tmp_path / "a_x2.jpg").mode == "RGB"
