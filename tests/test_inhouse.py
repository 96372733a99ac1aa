"""In-house weights (issue 20, section 3): the targets of ``recipes/inhouse/targets.toml`` are valid
training runs, the driver trains, resumes and publishes them, and every in-house file shipped in
the package gives its manifest table and stays within the package's size budget."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import REPO, SET5, SET14, TRAIN, need_shared

from upscale_cli.loader import load_model
from upscale_cli.models import get_arch, get_spec
from upscale_cli.train.config import build_config
from upscale_cli.weights import manifest_entries, read_checkpoint

_spec = importlib.util.spec_from_file_location("inhouse", REPO / "recipes" / "inhouse.py")
inhouse = importlib.util.module_from_spec(_spec)
sys.modules["inhouse"] = inhouse
_spec.loader.exec_module(inhouse)

_spec = importlib.util.spec_from_file_location("carn_branch", REPO / "recipes" / "carn_branch.py")
carn_branch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(carn_branch)

COMMON, TARGETS = inhouse.load_targets()
MANIFEST = json.loads((REPO / "weights_manifest.json").read_text(encoding="utf-8"))
SCHEMA = json.loads((REPO / "upscale_cli" / "manifest_schema.json").read_text(encoding="utf-8"))
SHIPPED = sorted(
    (name, int(scale))
    for name, scales in MANIFEST["models"].items()
    for scale, entry in scales.items()
    if name != "default" and any("package" in s for s in entry["sources"])
)
ISSUE_FAMILIES = {"memnet", "drcn", "mdsr", "rcan", "densesr", "cmsc", "selnet", "btsrn", "srresnet", "carn"}


def test_the_targets_cover_the_families_the_issue_lists() -> None:
    families = {get_spec(t["model"]).arch for t in TARGETS.values()}
    assert ISSUE_FAMILIES <= families
    assert {inhouse.scales_of(t)[0] for t in TARGETS.values() if t["model"].startswith("carn")} == {3, 4}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_target_is_a_valid_training_run_in_each_budget(name: str) -> None:
    target = TARGETS[name]
    spec = get_spec(target["model"])
    scales = inhouse.scales_of(target)
    assert set(scales) <= set(spec.scales)
    if get_arch(spec.arch).multiscale:
        assert set(scales) == set(spec.scales), "a multi-scale net ships one file for all its scales"
    assert "gpu" in target
    for budget in ("cpu", "gpu"):
        if budget in target:
            opts = inhouse.options(COMMON, target, budget)
            cfg = build_config({k.replace("-", "_"): v for k, v in opts.items()})
            assert cfg.scale == tuple(scales) and cfg.steps == target[budget]["steps"]
            assert cfg.recipe is not None, f"{name} trains with its family's recipe"


def test_the_carn_x3_and_x4_branches_start_from_the_x2_one() -> None:
    """x3 sub-pixels copy the nearest x2 sub-pixel (the mean of two halfway); x4's two stages are x2's conv."""
    torch.manual_seed(0)
    w2, b2 = torch.randn(16, 4, 3, 3), torch.randn(16)
    sd = {"upsample.up2.body.0.weight": w2, "upsample.up2.body.0.bias": b2}
    x4 = carn_branch.branch_from_x2(sd, 4)
    assert all(torch.equal(x4[f"upsample.up4.body.{i}.weight"], w2) for i in (0, 3))
    assert torch.equal(x4["upsample.up4.body.3.bias"], b2)
    x3 = carn_branch.branch_from_x2(sd, 3)
    feats = torch.randn(1, 4, 5, 6)
    conv = torch.nn.functional.conv2d
    y2 = torch.nn.functional.pixel_shuffle(conv(feats, w2, b2, padding=1), 2)
    w3, b3 = x3["upsample.up3.body.0.weight"], x3["upsample.up3.body.0.bias"]
    y3 = torch.nn.functional.pixel_shuffle(conv(feats, w3, b3, padding=1), 3)
    assert y3.shape == (1, 4, 15, 18)
    torch.testing.assert_close(y3[..., 0::3, 0::3], y2[..., 0::2, 0::2])
    torch.testing.assert_close(y3[..., 2::3, 2::3], y2[..., 1::2, 1::2])
    torch.testing.assert_close(y3[..., 0::3, 1::3], (y2[..., 0::2, 0::2] + y2[..., 0::2, 1::2]) / 2)
    torch.testing.assert_close(y3[..., 1::3, 2::3], (y2[..., 0::2, 1::2] + y2[..., 1::2, 1::2]) / 2)


def test_the_train_command_resumes_and_stops_where_told(tmp_path: Path) -> None:
    opts = {"model": "espcn", "scale": 2, "data": ["a", "b"], "steps": 10}
    fresh = inhouse.train_command(opts, tmp_path, tmp_path / "init.safetensors", False, None)
    assert fresh[1:4] == ["-m", "upscale_cli", "train"]
    assert fresh[fresh.index("--init") + 1] == str(tmp_path / "init.safetensors")
    assert [fresh[i + 1] for i, a in enumerate(fresh) if a == "--data"] == ["a", "b"]
    again = inhouse.train_command(opts, tmp_path, tmp_path / "init.safetensors", True, 5)
    assert "--resume" in again and "--init" not in again
    assert again[again.index("--stop-at") + 1] == "5"


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The driver pointed at a one-target list, a scratch package folder and a manifest copy."""
    need_shared(TRAIN)
    need_shared(SET5)
    need_shared(SET14)
    (tmp_path / "targets.toml").write_text(
        f'[common]\ndata = ["{TRAIN / "T91"}"]\ndata-dir = "{SET5.parent}"\nseed = 0\nval-every = 1000\n'
        '[targets.tiny]\nmodel = "espcn"\nscale = 2\n'
        "cpu = { steps = 6, batch-size = 4, patch-size = 16, save-every = 3 }\ngpu = { steps = 6 }\n",
        encoding="utf-8",
    )
    (tmp_path / "weights").mkdir()
    manifest = tmp_path / "manifest.json"
    manifest.write_text((REPO / "weights_manifest.json").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(inhouse, "TARGETS", tmp_path / "targets.toml")
    monkeypatch.setattr(inhouse, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(inhouse, "MANIFEST", manifest)
    return tmp_path


def test_train_then_publish_ships_an_fp16_file_with_its_measured_entry(sandbox: Path) -> None:
    runs = sandbox / "runs"
    assert inhouse.main(["train", "--budget", "cpu", "--runs", str(runs), "--jobs", "1", "--stop-at", "3"]) == 0
    assert not inhouse.finished(runs / "tiny")
    assert inhouse.main(["train", "--budget", "cpu", "--runs", str(runs), "--jobs", "1"]) == 0
    assert inhouse.finished(runs / "tiny")
    assert "--resume" in (runs / "tiny.log").read_text(encoding="utf-8")
    spent = json.loads((runs / "tiny.budget.json").read_text(encoding="utf-8"))
    assert spent["budget"] == "cpu" and spent["device"] == "cpu" and spent["seconds"] > 0

    assert inhouse.main(["publish", "tiny", "--budget", "cpu", "--runs", str(runs)]) == 0
    shipped = sandbox / "weights" / "tiny.safetensors"
    sd, _ = read_checkpoint(shipped)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    doc = json.loads((sandbox / "manifest.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    entry = doc["models"]["espcn"]["2"]
    assert entry["sources"] == [{"package": "weights/tiny.safetensors"}]
    assert entry["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert entry["size"] == shipped.stat().st_size and entry["kwargs"] == dict(get_spec("espcn").kwargs)
    assert set(entry["measured"]) == {"source", "Set5", "Set14"}
    assert "6 steps" in entry["notes"] and "fp16" in entry["notes"]
    x = torch.rand(1, 1, 20, 20)
    full = load_model(weights=str(runs / "tiny" / "model.safetensors")).module(x)
    half = load_model(weights=str(shipped)).module(x)
    assert (full - half).abs().max() < 1e-2


def test_publish_refuses_a_file_over_the_package_budget(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = sandbox / "runs"
    assert inhouse.main(["train", "--budget", "gpu", "--runs", str(runs), "--jobs", "1"]) == 0
    before = (sandbox / "manifest.json").read_bytes()
    monkeypatch.setattr(inhouse, "MAX_FILE", 1000)
    with pytest.raises(SystemExit, match="over the package's budget"):
        inhouse.main(["publish", "tiny", "--runs", str(runs)])
    assert not list((sandbox / "weights").iterdir())
    assert (sandbox / "manifest.json").read_bytes() == before


def test_shipped_inhouse_files_fit_the_package_budget() -> None:
    files = {e["sources"][0]["package"]: e for n, s in SHIPPED for e in [MANIFEST["models"][n][str(s)]]}
    assert files, "no in-house weights in the package"
    for rel, entry in files.items():
        path = REPO / "upscale_cli" / rel
        assert path.stat().st_size == entry["size"] <= inhouse.MAX_FILE, rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel
    assert sum(e["size"] for e in files.values()) <= inhouse.MAX_TOTAL


@pytest.mark.parametrize("name,scale", SHIPPED)
def test_shipped_inhouse_weights_reproduce_their_manifest_table(name: str, scale: int) -> None:
    """Scored by name (the package file, verified) on Set5: the entry's figures, and above
    bicubic.  Set5 pins the file and the network's code; the entry's Set14 figures were measured
    by ``publish`` from this same file (its sha256 is checked above), and Set14 would cost MemNet,
    which runs at HR size, six minutes of the suite."""
    from test_bench import BICUBIC, bench_json, by_key, off_reference

    entry = manifest_entries(name)[scale]
    rows = bench_json("--set", str(need_shared(SET5)), "--model", name, "--scale", str(scale))
    measured = entry["measured"]["Set5"]
    reference = {("Set5", scale): (measured["psnr"], measured["ssim"])}
    assert off_reference(rows, name, reference, 0.01, 0.0001) == []
    assert measured["psnr"] > by_key(rows, "bicubic")["Set5", scale]["psnr"] + 0.3
    assert entry["measured"]["Set14"]["psnr"] > BICUBIC["Set14", scale][0] + 0.3
