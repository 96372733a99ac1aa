"""``upscale compare``: the grid's layout and pixels, the auto crop, the scale/HR checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from upscale_cli import compare as cmp
from upscale_cli.commands import compare as compare_cmd
from upscale_cli.errors import UsageError
from upscale_cli.metrics import evaluate, quantize
from upscale_cli.resize import imresize


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    compare_cmd.register(app)
    return app


def invoke(*args: str):
    return CliRunner().invoke(_app(), ["compare", *args, "--device", "cpu"])


def _save(path: Path, chw: torch.Tensor) -> None:
    Image.fromarray(quantize(chw).to(torch.uint8).permute(1, 2, 0).numpy()).save(path)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    """A 40x32 input and its 80x64 ground truth (x2); returns the paths and the HR tensor."""
    torch.manual_seed(0)
    hr = quantize(imresize(torch.rand(3, 17, 21, dtype=torch.float64), size=(64, 80)).clamp(0, 1)) / 255
    lr = quantize(imresize(hr, size=(32, 40))) / 255
    _save(tmp_path / "hr.png", hr)
    _save(tmp_path / "lr.png", lr)
    return tmp_path / "lr.png", tmp_path / "hr.png", hr.float()


def _grid(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_grid_has_one_panel_per_model_plus_bicubic_and_hr(pair, tmp_path: Path) -> None:
    lr, hr, truth = pair
    out = invoke(str(lr), "--hr", str(hr), "-m", "nearest", "--crop", "4,6,20,16", "--zoom", "3", "-o",
                 str(tmp_path / "g.png"))  # fmt: skip
    assert out.exit_code == 0, out.output
    grid = _grid(tmp_path / "g.png")
    w, h = 20 * 2 * 3, 16 * 2 * 3  # the window at x2, zoomed 3 times
    assert grid.shape[1] == cmp.GAP + 3 * (w + cmp.GAP)  # bicubic, nearest, HR in one row
    assert grid.shape[0] > cmp.GAP + h  # the labels below
    left = [cmp.GAP + i * (w + cmp.GAP) for i in range(3)]
    top = cmp.GAP
    hr_crop = (truth[:, 12:44, 8:48] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected_hr = hr_crop.repeat(3, 0).repeat(3, 1)
    assert np.array_equal(grid[top : top + h, left[2] : left[2] + w], expected_hr)
    lr_t = torch.from_numpy(np.array(Image.open(lr))).permute(2, 0, 1).float() / 255
    near = lr_t[:, 6:22, 4:24].repeat_interleave(2, -1).repeat_interleave(2, -2)
    expected_near = quantize(near).to(torch.uint8).permute(1, 2, 0).numpy().repeat(3, 0).repeat(3, 1)
    assert np.array_equal(grid[top : top + h, left[1] : left[1] + w], expected_near)
    assert not np.array_equal(grid[top : top + h, left[0] : left[0] + w], expected_near)  # bicubic differs


def test_without_hr_the_reference_is_the_input_by_nearest(pair, tmp_path: Path) -> None:
    lr, _, _ = pair
    out = invoke(str(lr), "--crop", "0,0,10,8", "--scale", "3", "--zoom", "2", "-o", str(tmp_path / "g.png"))
    assert out.exit_code == 0, out.output
    grid = _grid(tmp_path / "g.png")
    w, h = 10 * 3 * 2, 8 * 3 * 2
    assert grid.shape[1] == cmp.GAP + 2 * (w + cmp.GAP)  # bicubic and the input
    lr_t = np.asarray(Image.open(lr))[0:8, 0:10]
    x = cmp.GAP + w + cmp.GAP
    assert np.array_equal(grid[cmp.GAP : cmp.GAP + h, x : x + w], lr_t.repeat(6, 0).repeat(6, 1))


def test_default_output_name_and_auto_zoom(pair) -> None:
    lr, hr, _ = pair
    out = invoke(str(lr), "--hr", str(hr), "--crop", "0,0,16,16")
    assert out.exit_code == 0, out.output
    grid = _grid(lr.with_name("lr_compare.png"))
    side = 16 * 2 * cmp.auto_zoom(32)
    assert side >= cmp.MIN_PANEL and grid.shape[1] == cmp.GAP + 2 * (side + cmp.GAP)


def test_auto_crop_picks_the_textured_half() -> None:
    torch.manual_seed(1)
    image = torch.full((3, 40, 80), 0.5)
    image[:, :, 44:] = torch.rand(3, 40, 36)
    box = cmp.auto_crop(image, 24, 24)
    assert box.x >= 44 and box.x + box.w <= 80 and (box.w, box.h) == (24, 24)
    flat = torch.full((1, 30, 30), 0.2)
    flat[:, 20:, 20:] = torch.rand(1, 10, 10)
    box = cmp.auto_crop(flat, 10, 10)
    assert box.x in (19, 20) and box.y in (19, 20)  # 19: the step into the texture is detail too


def test_command_auto_crop_lands_in_the_textured_half(tmp_path: Path) -> None:
    torch.manual_seed(2)
    image = torch.full((3, 48, 96), 0.5, dtype=torch.float64)
    image[:, :, :48] = torch.rand(3, 48, 48, dtype=torch.float64)
    _save(tmp_path / "half.png", image)
    out = invoke(str(tmp_path / "half.png"), "--scale", "4", "-o", str(tmp_path / "g.png"))
    assert out.exit_code == 0, out.output
    assert "48x48 window at (0, 0)" in out.stdout  # auto side 192/4 = 48: the textured left half exactly


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crop", "1,2,3"], "--crop"),
        (["--crop", "30,0,20,10"], "leaves the 40x32 input"),
        (["--zoom", "-1"], "--zoom"),
        (["--metric", "lpips"], "needs --hr"),
        (["--model", "no-such-model"], "unknown model"),
    ],
)
def test_usage_errors(pair, extra: list[str], message: str, tmp_path: Path) -> None:
    lr, _, _ = pair
    out = invoke(str(lr), *extra, "-o", str(tmp_path / "g.png"))
    assert out.exit_code == 2 and message in out.stderr
    assert not (tmp_path / "g.png").exists()


def test_hr_of_the_wrong_size_is_refused_in_one_line(pair, tmp_path: Path) -> None:
    lr, hr, truth = pair
    _save(tmp_path / "odd.png", truth[:, :63, :].double())
    out = invoke(str(lr), "--hr", str(tmp_path / "odd.png"))
    assert out.exit_code == 2 and "odd.png: 80x63" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = invoke(str(lr), "--hr", str(hr), "--scale", "3")
    assert out.exit_code == 2 and "expected 120x96 (x3 of the 40x32 input)" in out.stderr


def test_labels_carry_the_protocol_figures_and_the_scorer() -> None:
    torch.manual_seed(3)
    hr = torch.rand(3, 40, 40)
    sr = (hr + 0.05 * torch.randn(3, 40, 40)).clamp(0, 1)
    lr = torch.rand(3, 20, 20)
    panels = cmp.make_panels(lr, [("model-a", sr)], cmp.Box(0, 0, 10, 10), 2, hr, lambda a, b: {"lpips": 0.25})
    p, s = evaluate(sr, hr, 2)
    assert panels[0].lines == ("model-a", f"PSNR {float(p):.2f} dB", f"SSIM {float(s):.4f}", "LPIPS 0.2500")
    assert panels[1].lines == ("HR",) and panels[1].image.shape == (3, 20, 20)


def test_parse_crop_and_infer_scale() -> None:
    assert cmp.parse_crop("auto") is None and cmp.parse_crop(" 1, 2,3,4") == cmp.Box(1, 2, 3, 4)
    with pytest.raises(UsageError):
        cmp.parse_crop("1,2,0,4")
    assert compare_cmd.infer_scale((40, 32), (120, 96), None, Path("hr.png")) == 3
    with pytest.raises(UsageError, match="integer multiple"):
        compare_cmd.infer_scale((40, 32), (100, 96), None, Path("hr.png"))


def test_metric_lpips_uses_the_weights_lookup(pair, tmp_path: Path) -> None:
    from upscale_cli.perceptual import TAP_CHANNELS, AlexMetrics

    lr, hr, _ = pair
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in AlexMetrics().features.state_dict().items()}, tmp_path / "a.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)},
               tmp_path / "alex.pth")  # fmt: skip
    args = [str(lr), "--hr", str(hr), "--crop", "0,0,16,16", "--metric", "psnr,ssim,lpips", "-o", str(tmp_path / "g.png")]
    with_lpips = invoke(*args, "--alexnet-weights", str(tmp_path / "a.pth"), "--lpips-weights", str(tmp_path / "alex.pth"))
    assert with_lpips.exit_code == 0, with_lpips.output
    assert invoke(*args[:-4], "-o", str(tmp_path / "p.png")).exit_code == 0
    assert _grid(tmp_path / "g.png").shape[0] > _grid(tmp_path / "p.png").shape[0]  # one label line more
    missing = invoke(*args, "--alexnet-weights", str(tmp_path / "none.pth"), "--lpips-weights", str(tmp_path / "alex.pth"))
    assert missing.exit_code == 3 and "none.pth" in missing.stderr
