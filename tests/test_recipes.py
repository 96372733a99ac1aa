"""Each family's training recipe (issue 20): one per family, parsed, used as the defaults of
``upscale train``, overridden by ``--config`` and flags, printed with where each value came from;
and a short ESPCN run with its defaults beats bicubic on Set5."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SET5, TRAIN, need_shared
from rich.console import Console

from upscale_cli.errors import UsageError
from upscale_cli.models import Arch, list_archs
from upscale_cli.train.config import build_config
from upscale_cli.train.loop import train
from upscale_cli.train.optim import LRSchedule
from upscale_cli.train.recipes import RECIPE_KEYS, available, load_recipe, parse_recipe, recipe_for

TRAINABLE = [a for a in list_archs() if a.test_configs]
"""Every family with parameters (the registry requires their test configs)."""


@pytest.mark.parametrize("arch", TRAINABLE, ids=lambda a: a.name)
def test_every_trainable_family_has_a_recipe_that_cites_its_paper(arch: Arch) -> None:
    recipe = load_recipe(arch.recipe or arch.name)
    assert recipe is not None, f"{arch.name}: no recipe in upscale_cli/train/recipes/"
    assert "Sec." in recipe.source or recipe.source.startswith(("this project", "first seed paper"))
    assert recipe.data and {"optimizer", "lr", "loss", "patch_size", "batch_size"} <= recipe.values.keys()
    build_config({"model": arch.name, "data": ["x"]})  # its values pass the options' checks


def test_every_recipe_belongs_to_a_family() -> None:
    used = {a.recipe or a.name for a in list_archs()}
    assert set(available()) <= used


def test_recipes_are_the_defaults_with_their_origins() -> None:
    cfg = build_config({"model": "vdsr", "data": ["x"]})
    assert (cfg.optimizer, cfg.lr, cfg.grad_clip_mode, cfg.recipe) == ("sgd", 0.1, "adjustable", "vdsr")
    assert [t.name for t in cfg.loss] == ["mse"]
    assert cfg.origins["lr"] == "paper" and cfg.origins["grad_clip"] == "ours"  # theta is ours (see [paper])
    assert "warmup" not in cfg.origins and cfg.warmup == 0  # not in the recipe: the built-in default
    other = build_config({"model": "edsr-baseline", "data": ["x"]})  # a named model: its family's recipe
    assert (other.optimizer, other.lr, other.recipe, other.schedule) == ("adam", 1e-4, "edsr", "step")


def test_config_file_and_flags_override_the_recipe(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('model = "vdsr"\ndata = ["x"]\nlr = 0.05\npatch-size = 24\n')
    cfg = build_config({"patch_size": 30, "optimizer": None}, toml)
    assert (cfg.lr, cfg.patch_size, cfg.optimizer) == (0.05, 30, "sgd")
    assert cfg.origins["lr"] == f"config {toml}" and cfg.origins["patch_size"] == "flag"
    assert cfg.origins["optimizer"] == "paper"


@pytest.mark.parametrize(
    ("model", "recipe"),
    [("compact-relu", "srvgg"), ("compact:act=lrelu", "srvgg"), ("espcn-ycbcr", "espcn"), ("default", "msvgg")],
)
def test_variants_aliases_and_pointed_families_find_their_recipe(model: str, recipe: str) -> None:
    found = recipe_for(model)
    assert found is not None and found.name == recipe


def test_a_recipe_with_unknown_or_unsourced_keys_is_refused() -> None:
    good = 'source = "X, Sec. 1"\npaper-data = "T91"\nlr = 1e-3\n'
    assert parse_recipe("x", good).values == {"lr": 1e-3}
    for bad in (
        good + "data = 'somewhere'\n",  # what to train on is not a recipe's
        good + "[paper]\nbatch-size = 'not set above'\n",  # a note for a value the recipe does not set
        'paper-data = "T91"\nlr = 1e-3\n',  # no source
    ):
        with pytest.raises(ValueError):
            parse_recipe("x", bad)
    assert set(RECIPE_KEYS) >= {k for name in available() for k in load_recipe(name).values}


def test_the_header_prints_the_recipe_and_where_each_value_came_from(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 60, 30)).save(tmp_path / "a.png")
    buf = io.StringIO()
    flags = {"model": "vdsr:depth=3,feats=8", "scale": "2", "data": [str(tmp_path)], "steps": 2, "batch_size": 2,
             "patch_size": 12, "val_every": 0, "ema": 0.0, "workers": 0, "precision": "fp32", "seed": 0,
             "device": "cpu", "out": str(tmp_path / "run")}  # fmt: skip
    train(build_config(flags), console=Console(file=buf, width=400))
    text = buf.getvalue()
    assert "recipe: vdsr (Kim et al., VDSR, CVPR 2016, Sec. 3.3 and 4.1)" in text
    for part in ("optimizer sgd (paper)", "lr 0.1 (paper)", "steps 2 (flag)", "grad-clip 0.001 (ours)",
                 "warmup 0 (default)", "ours, not the paper's: grad-clip: theta"):  # fmt: skip
        assert part in text, part
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["recipe"] == "vdsr" and meta["training"]["origins"]["lr"] == "paper"


def test_a_short_espcn_run_with_its_recipe_beats_bicubic_on_set5(tmp_path: Path) -> None:
    """The issue's example: with the global defaults ESPCN x2 ended below bicubic; its recipe alone
    (no --lr, --loss, --patch-size) must beat it after the same 1500 steps on T91."""
    t91, bench = need_shared(TRAIN / "T91"), need_shared(SET5).parent
    env = {**os.environ, "UPSCALE_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "upscale_cli", "train", "--model", "espcn", "--scale", "2",
                    "--data", str(t91), "--seed", "0", "--steps", "1500",
                    "--val-every", "0", "--device", "cpu", "--out", str(out)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    scores = {}
    for flags in (["--weights", str(out / "model.safetensors")], ["--model", "bicubic"]):
        res = subprocess.run([sys.executable, "-m", "upscale_cli", "bench", *flags, "--scale", "2", "--set", "Set5",
                              "--data-dir", str(bench), "--device", "cpu", "--no-baseline",
                              "--precision", "fp32", "--format", "json"], env=env, check=True, capture_output=True,
                             text=True)  # fmt: skip
        scores[flags[0]] = json.loads(res.stdout)["rows"][0]["psnr"]
    assert scores["--weights"] > scores["--model"] + MARGIN_ESPCN, scores


MARGIN_ESPCN = 0.5
"""dB over bicubic the ESPCN recipe must reach in 1500 steps (it reaches more, see the README)."""


def test_step_schedule_halves_at_the_recipes_milestones() -> None:
    schedule = LRSchedule("step", steps=100, milestones=(0.5, 0.8))
    assert [schedule(t) for t in (0, 49, 50, 79, 80, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert LRSchedule("step", steps=100)(99) == 0.5**4  # the default: 20/40/60/80 %
    cfg = build_config({"model": "swinir", "data": ["x"]})
    assert (cfg.schedule, cfg.milestones, cfg.origins["milestones"]) == ("step", (0.5, 0.8, 0.9, 0.95), "paper")
    assert build_config({"model": "swinir", "data": ["x"], "milestones": "0.3"}).milestones == (0.3,)
    for bad in ("0.8,0.5", "1.5", "x"):
        with pytest.raises(UsageError, match="--milestones"):
            build_config({"model": "swinir", "data": ["x"], "milestones": bad})
