"""``upscale bench``: the reference figures of ../shared/README.md, and the command's behaviour."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import CHECKPOINTS, SET5, SET14, need_shared
from PIL import Image
from typer.testing import CliRunner

from upscale_cli import bench as bench_mod
from upscale_cli.commands import bench as bench_cmd
from upscale_cli.metrics import evaluate, quantize
from upscale_cli.resize import imresize

# ../shared/README.md, "Reference figures (standard protocol)": (PSNR, SSIM) per set and scale.
BICUBIC = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}  # fmt: skip
CARN_M = {
    ("Set5", 2): (37.69, 0.9596), ("Set5", 3): (34.07, 0.9249), ("Set5", 4): (31.88, 0.8910),
    ("Set14", 2): (33.22, 0.9148), ("Set14", 3): (30.01, 0.8367), ("Set14", 4): (28.32, 0.7756),
}  # fmt: skip
FSRCNN = {("Set5", 2): (37.11, 0.9563), ("Set5", 4): (30.51, 0.8593)}

def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    bench_cmd.register(app)
    return app


def invoke(*args: str):
    return CliRunner().invoke(_app(), ["bench", *args])


def bench_json(*args: str) -> list[dict]:
    result = invoke(*args, "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["rows"]


def by_key(rows: list[dict], model: str) -> dict[tuple[str, int], dict]:
    return {(r["set"], r["scale"]): r for r in rows if r["model"] == model}


# --- the reference figures ---------------------------------------------------------------------


def off_reference(rows: list[dict], model: str, reference: dict, dpsnr: float, dssim: float) -> list[str]:
    """Every (set, scale) of ``reference`` that ``rows`` miss or get wrong, described."""
    got = by_key(rows, model)
    bad = []
    for key, (psnr, ssim) in reference.items():
        row = got.get(key)
        if row is None or abs(row["psnr"] - psnr) > dpsnr or abs(row["ssim"] - ssim) > dssim:
            have = "missing" if row is None else f"{row['psnr']:.4f} / {row['ssim']:.5f}"
            bad.append(f"{model} {key}: {have}, reference {psnr} / {ssim}")
    return bad


def test_bicubic_reproduces_published_figures_on_set5_and_set14() -> None:
    rows = bench_json("--set", str(need_shared(SET5)), "--set", str(need_shared(SET14)), "--scale", "2,3,4")
    assert [r["images"] for r in rows] == [5, 14] * 3
    assert off_reference(rows, "bicubic", BICUBIC, 0.05, 0.002) == []


def carn_m(set_dir: Path, scales: str = "2,3,4") -> list[dict]:
    weights = need_shared(CHECKPOINTS / "carn_m.pth")
    return bench_json("--set", str(need_shared(set_dir)), "--model", "carn-m", "--weights", str(weights),
                      "--no-baseline", "--scale", scales)  # fmt: skip


def test_carn_m_reproduces_reference_on_set5() -> None:
    reference = {k: v for k, v in CARN_M.items() if k[0] == "Set5"}
    assert off_reference(carn_m(SET5), "carn-m", reference, 0.03, 0.001) == []


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_carn_m_reproduces_reference_on_set14(scale: int) -> None:
    """One scale per test so that the ~40 s of CPU spread over the xdist workers."""
    reference = {("Set14", scale): CARN_M[("Set14", scale)]}
    rows = carn_m(SET14, str(scale))
    assert [r["images"] for r in rows] == [14]  # bridge.png (grey) included
    assert off_reference(rows, "carn-m", reference, 0.03, 0.001) == []


@pytest.mark.parametrize("scale", [2, 4])
def test_fsrcnn_reproduces_reference_on_set5(scale: int) -> None:
    weights = need_shared(CHECKPOINTS / f"fsrcnn_x{scale}.pth")
    rows = bench_json("--set", str(need_shared(SET5)), "--model", "fsrcnn", "--weights", str(weights),
                      "--no-baseline", "--scale", str(scale))  # fmt: skip
    assert off_reference(rows, "fsrcnn", {("Set5", scale): FSRCNN[("Set5", scale)]}, 0.05, 0.002) == []


# --- the command on small sets written here -----------------------------------------------------


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _smooth(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((channels, h // 4 + 1, w // 4 + 1)))
    big = imresize(small, size=(h, w)).clamp(0, 1)
    arr = quantize(big).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[..., 0] if channels == 1 else arr


@pytest.fixture
def tiny_set(tmp_path: Path) -> Path:
    """Three images, sizes not multiples of 3 or 4, one of them grey."""
    folder = tmp_path / "Tiny"
    _write(folder / "a.png", _smooth(50, 46, 3, 0))
    _write(folder / "b.png", _smooth(47, 61, 3, 1))
    _write(folder / "c.png", _smooth(52, 49, 1, 2))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_custom_folder_set_json_means_and_per_image(tiny_set: Path) -> None:
    rows = bench_json("--set", str(tiny_set), "--model", "nearest", "--scale", "2,3")
    assert [(r["model"], r["scale"]) for r in rows] == [("bicubic", 2), ("nearest", 2), ("bicubic", 3), ("nearest", 3)]
    for r in rows:
        assert r["set"] == "Tiny" and r["images"] == 3
        assert set(r["per_image"]) == {"a.png", "b.png", "c.png"}
        assert r["psnr"] == pytest.approx(np.mean([v["psnr"] for v in r["per_image"].values()]))
        assert r["ssim"] == pytest.approx(np.mean([v["ssim"] for v in r["per_image"].values()]))
        assert r["seconds"] > 0 and r["params"] == 0
    # the bicubic row is exactly the protocol computed here by hand
    hr = torch.from_numpy(np.array(Image.open(tiny_set / "b.png"))).permute(2, 0, 1).double()[:, :45, :60] / 255
    lr = (quantize(imresize(hr, size=(15, 20))) / 255).float()
    p, s = evaluate(imresize(lr, scale=3), hr, 3)
    assert rows[2]["per_image"]["b.png"]["psnr"] == pytest.approx(float(p), abs=1e-6)
    assert rows[2]["per_image"]["b.png"]["ssim"] == pytest.approx(float(s), abs=1e-8)


def test_csv_and_markdown_parse(tiny_set: Path) -> None:
    out = invoke("--set", str(tiny_set), "--scale", "2,4", "--format", "csv")
    assert out.exit_code == 0, out.output
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    got = [(r["model"], r["scale"], r["set"], r["images"]) for r in table]
    assert got == [("bicubic", "2", "Tiny", "3"), ("bicubic", "4", "Tiny", "3")]
    assert all(float(r["psnr"]) > 20 and 0 < float(r["ssim"]) <= 1 for r in table)
    other = tiny_set.parent / "Other"
    _write(other / "d.png", _smooth(40, 40, 3, 3))
    sets = ["--set", str(tiny_set), "--set", str(other), "--set", str(tiny_set)]
    md = invoke(*sets, "--scale", "2", "--format", "markdown")
    assert md.exit_code == 0, md.output
    lines = md.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Model", "Scale", "Tiny PSNR / SSIM", "Other PSNR / SSIM", "Params", "s / image", "MP/s"]
    assert set(lines[1]) <= set("|-") and len(lines) == 3  # the same folder twice is one set
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:2] == ["bicubic", "x2"] and " / " in cells[2] and " / " in cells[3]


def test_table_goes_to_stdout_and_json_to_file(tiny_set: Path, tmp_path: Path) -> None:
    out = invoke("--set", str(tiny_set), "--scale", "2")
    assert out.exit_code == 0, out.output
    assert "bicubic" in out.stdout and "Tiny" in out.stdout and "MP/s" in out.stdout
    target = tmp_path / "res" / "bench.json"
    done = invoke("--set", str(tiny_set), "--scale", "2", "--format", "json", "-o", str(target))
    assert done.exit_code == 0 and done.stdout == ""
    assert json.loads(target.read_text())["rows"][0]["model"] == "bicubic"


def test_missing_named_set_says_where_to_put_it(tmp_path: Path) -> None:
    out = invoke("--set", "urban100", "--data-dir", str(tmp_path))
    assert out.exit_code == 2
    assert str(tmp_path / "Urban100") in out.stderr and "--data-dir" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_named_set_found_under_data_dir_or_env(tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "BSD100").mkdir(parents=True)
    for p in tiny_set.glob("*.png"):
        (data / "BSD100" / p.name).write_bytes(p.read_bytes())
    assert bench_json("--set", "B100", "--data-dir", str(data), "--scale", "2")[0]["set"] == "B100"
    monkeypatch.setenv("UPSCALE_DATA", str(data))
    assert bench_json("--set", "bsd100", "--scale", "2")[0]["images"] == 3


def test_unknown_set_name(tmp_path: Path) -> None:
    out = invoke("--set", "Set99", "--data-dir", str(tmp_path))
    assert out.exit_code == 2 and "not a known set" in out.stderr


def test_edsr_layout_uses_its_own_lr_images(tmp_path: Path) -> None:
    root = tmp_path / "Mine"
    hr = _smooth(50, 44, 3, 5)
    _write(root / "HR" / "0801.png", hr)
    lr = np.ascontiguousarray(hr[:50:2, :44:2][:25, :22])  # nearest-neighbour LR, not the bicubic
    _write(root / "LR_bicubic" / "X2" / "0801x2.png", lr)
    rows = bench_json("--set", str(root), "--scale", "2,3")
    hr_t = torch.from_numpy(hr).permute(2, 0, 1).double() / 255
    lr_t = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
    p2, _ = evaluate(imresize(lr_t, scale=2), hr_t, 2)
    assert rows[0]["set"] == "Mine" and rows[0]["psnr"] == pytest.approx(float(p2), abs=1e-6)
    # no LR_bicubic/X3: the LR is made from HR by the protocol's bicubic
    crop = hr_t[:, :48, :42]
    p3, _ = evaluate(imresize((quantize(imresize(crop, size=(16, 14))) / 255).float(), scale=3), crop, 3)
    assert rows[1]["psnr"] == pytest.approx(float(p3), abs=1e-6)


def test_each_model_loaded_once_per_scale(tiny_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.loader as loader

    calls: list[tuple[str, int]] = []
    real = loader.load_model

    def counting(name, scale, **kw):
        calls.append((name, scale))
        return real(name, scale, **kw)

    monkeypatch.setattr(loader, "load_model", counting)
    other = tiny_set.parent / "sub" / "Tiny"  # same name, another folder: told apart by its path
    _write(other / "d.png", _smooth(40, 40, 3, 3))
    rows = bench_json("--set", str(tiny_set), "--set", str(other), "--model", "lanczos", "--scale", "2,3")
    assert sorted(calls) == [("bicubic", 2), ("bicubic", 3), ("lanczos", 2), ("lanczos", 3)]
    assert len(rows) == 2 * 2 * 2
    assert {r["set"] for r in rows} == {"Tiny", str(other)}


def test_no_baseline_and_save_images(tiny_set: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    rows = bench_json("--set", str(tiny_set), "--model", "nearest", "--no-baseline", "--scale", "2",
                      "--save-images", str(out_dir))  # fmt: skip
    assert [r["model"] for r in rows] == ["nearest"]
    saved = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert saved == ["Tiny/x2/nearest/a.png", "Tiny/x2/nearest/b.png", "Tiny/x2/nearest/c.png"]
    with Image.open(out_dir / "Tiny/x2/nearest/c.png") as im:
        assert im.mode == "L" and im.size == (48, 52)
    with Image.open(out_dir / "Tiny/x2/nearest/b.png") as im:
        assert im.mode == "RGB" and im.size == (60, 46)


def test_plot_without_matplotlib_is_a_clear_usage_error(
    tiny_set: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = invoke("--set", str(tiny_set), "--plot", str(tmp_path / "p.png"))
    assert out.exit_code == 2 and "matplotlib" in out.stderr and "upscale-cli[plot]" in out.stderr
    assert not (tmp_path / "p.png").exists()


def test_plot_is_written(tiny_set: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the optional 'plot' extra) is not installed")
    out = invoke("--set", str(tiny_set), "--model", "nearest", "--scale", "2,3", "--plot", str(tmp_path / "p.png"))
    assert out.exit_code == 0, out.output
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "2,x"], "--scale"),
        (["--format", "yaml"], "--format"),
        (["--no-baseline"], "nothing to benchmark"),
        (["--model", "no-such-model"], "unknown model"),
    ],
)
def test_usage_errors(tiny_set: Path, args: list[str], message: str) -> None:
    out = invoke("--set", str(tiny_set), *args)
    assert out.exit_code == 2 and message in out.stderr


# --- pieces -------------------------------------------------------------------------------------


def test_grey_goes_through_as_three_equal_channels_and_back_as_their_mean() -> None:
    seen: list[torch.Tensor] = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        up = x.repeat_interleave(2, -1).repeat_interleave(2, -2)
        return up * torch.tensor([0.5, 1.0, 1.5]).view(3, 1, 1)

    grey = torch.rand(1, 5, 6)
    out = bench_mod.super_resolve(runner, grey)
    assert seen[0].shape == (3, 5, 6) and torch.equal(seen[0][0], seen[0][2])
    torch.testing.assert_close(out, grey.repeat_interleave(2, -1).repeat_interleave(2, -2))
    rgb = torch.rand(3, 5, 6)
    assert bench_mod.super_resolve(runner, rgb).shape == (3, 10, 12)


def test_parse_scales_and_pair_weights() -> None:
    assert bench_cmd.parse_scales("4, 2,4") == [4, 2]
    assert bench_cmd.pair_weights(["a", "b"], ["w1"]) == [("a", "w1"), ("b", None)]
    assert bench_cmd.pair_weights(["a", "b"], ["b=wb", "w1"]) == [("a", "w1"), ("b", "wb")]
    assert bench_cmd.pair_weights([], ["x.pth"]) == [(None, "x.pth")]


def test_shipped_default_model_reproduces_its_manifest_table() -> None:
    """The in-house default weights (in the package) give the figures their manifest entry
    states, on Set5 and Set14 at x2/x3/x4 - and beat bicubic by far at every one."""
    from upscale_cli.weights import manifest_entries

    entries = manifest_entries("default")
    rows = bench_json("--set", str(need_shared(SET5)), "--set", str(need_shared(SET14)), "--model", "default",
                      "--scale", "2,3,4")  # fmt: skip
    reference = {(name, s): (e["measured"][name]["psnr"], e["measured"][name]["ssim"])
                 for s, e in entries.items() for name in ("Set5", "Set14")}  # fmt: skip
    assert off_reference(rows, "default", reference, 0.01, 0.0001) == []
    for (name, s), (psnr, _) in reference.items():
        assert psnr > by_key(rows, "bicubic")[(name, s)]["psnr"] + 1.5


def test_bench_json_and_csv_carry_alexsim_and_lpips(tmp_path: Path) -> None:
    from upscale_cli.perceptual import TAP_CHANNELS, AlexMetrics

    rng = np.random.default_rng(0)
    folder = tmp_path / "Big"
    _write(folder / "a.png", rng.integers(0, 256, (72, 80, 3), dtype=np.uint8))
    _write(folder / "small.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in AlexMetrics().features.state_dict().items()}, tmp_path / "a.pth")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
    torch.save(heads, tmp_path / "alex.pth")
    base = ["--set", str(folder), "--scale", "2", "--no-baseline", "--model", "nearest"]
    extra = ["--metric", "psnr,ssim,alexsim,lpips", "--alexnet-weights", str(tmp_path / "a.pth"),
             "--lpips-weights", str(tmp_path / "alex.pth")]
    row = bench_json(*base, *extra)[0]
    assert row["per_image"]["small.png"]["alexsim"] is None  # under the AlexNet's minimum side: undefined
    big = row["per_image"]["a.png"]
    assert 0 < big["alexsim"] <= 1 and big["lpips"] > 0
    assert row["alexsim"] is None and row["lpips"] is None  # a mean over an undefined image is undefined
    assert "alexsim" not in bench_json(*base)[0]
    out = invoke(*base, *extra, "--format", "csv")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0].split(",")[4:8] == ["psnr", "ssim", "alexsim", "lpips"]
    bad = invoke(*base, "--metric", "psnr,fid")
    assert bad.exit_code == 2 and "--metric fid" in bad.output


# --- perceptual columns in table and markdown, the plot ------------------------------------------


def _perceptual_rows() -> list[bench_mod.Row]:
    rows = []
    for model, lp in (("bicubic", 0.31), ("a-rather-long-model-name", 0.12)):
        for set_name in ("Set5", "Set14"):
            row = bench_mod.Row(model, 4, set_name, 1234567, output_pixels=10**6)
            row.per_image["x.png"] = {"psnr": 28.4217, "ssim": 0.81041, "seconds": 0.5, "alexsim": 0.97531, "lpips": lp}
            rows.append(row)
    return rows


def test_markdown_and_table_carry_alexsim_and_lpips() -> None:
    rows = _perceptual_rows()
    md = bench_cmd.render(rows, "markdown").splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[2:4] == ["Set5 PSNR / SSIM / AlexSim / LPIPS", "Set14 PSNR / SSIM / AlexSim / LPIPS"]
    cells = [c.strip() for c in md[3].strip("|").split("|")]
    assert cells[2] == "28.42 / 0.8104 / 0.9753 / 0.1200"
    table = rich_at(rows, 80)
    assert max(len(line) for line in table.splitlines()) <= 80
    for figure in ("28.42 / 0.8104", "0.9753 / 0.1200", "0.9753 / 0.3100", "1,234,567"):
        assert figure in table  # each on one line, unbroken, at 80 columns
    assert "LPIPS: lower is better" in bench_cmd.render(rows, "table")
    plain = [bench_mod.Row("bicubic", 4, "Set5", 0, {"x.png": {"psnr": 28.0, "ssim": 0.8, "seconds": 0.1}}, 10)]
    assert "AlexSim" not in bench_cmd.render(plain, "markdown") and "LPIPS" not in bench_cmd.render(plain, "table")


def rich_at(rows: list[bench_mod.Row], width: int) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(bench_cmd.text_table(rows))
    return console.file.getvalue()


def test_plot_labels_do_not_overlap_and_lpips_flips_its_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib (the optional 'plot' extra) is not installed")
    rows = []
    for i in range(6):  # six models crowded into one corner
        row = bench_mod.Row(f"model-{i}", 2, "Set5", 0, output_pixels=int((1 + 0.02 * i) * 1e6))
        row.per_image["x.png"] = {"psnr": 30 + 0.01 * i, "ssim": 0.9, "seconds": 1.0, "lpips": 0.2 + 0.001 * i}
        rows.append(row)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    bench_cmd.plot(rows, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"
    ax = figures[0].axes[0]
    assert ax.yaxis_inverted() and "LPIPS" in ax.get_ylabel() and "lower is better" in ax.get_ylabel()
    renderer = figures[0].canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == [f"model-{i}" for i in range(6)]
    assert not any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1 :])
