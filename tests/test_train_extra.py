"""``upscale train`` with the issue-7 papers' training specifics: deep supervision (DRCN, MemNet,
CMSC, LapSRN), VDSR's adjustable gradient clipping, SRGAN's discriminator and loss, the recipes.

Everything runs on the CPU with one thread, tiny networks and synthetic images.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from PIL import Image
from rich.console import Console
from torch import Tensor
from train_helpers import cli_app, cli_flags, run_train
from typer.testing import CliRunner

from upscale_cli.color import rgb_to_y
from upscale_cli.errors import UsageError
from upscale_cli.loader import load_model
from upscale_cli.models import LoadedModel, create_model, get_arch
from upscale_cli.models.drcn import multi_supervision_loss
from upscale_cli.models.lapsrn import pyramid_loss
from upscale_cli.models.loaded import in_convention
from upscale_cli.models.srgan import SRGANDiscriminator
from upscale_cli.resize import imresize
from upscale_cli.train.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from upscale_cli.train.config import build_config, parse_losses
from upscale_cli.train.ddp import DistContext
from upscale_cli.train.discriminator import make_discriminator
from upscale_cli.train.loop import Trainer, TrainResult
from upscale_cli.train.losses import Objective, gan_discriminator_loss, gan_generator_loss
from upscale_cli.train.report import read_log
from upscale_cli.train.supervision import TrainingOutputs, supervised_terms


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    """Three 96x96 RGB images with edges and gradients (synthetic, so no ../shared needed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    paths = []
    for i in range(3):
        img = np.stack([(xx * (c + 1) + yy * (3 - c)) % 256 for c in range(3)], axis=-1).astype(np.float64)
        for _ in range(4):
            y0, x0 = rng.integers(0, 72, 2)
            img[y0 : y0 + 24, x0 : x0 + 24] = rng.integers(0, 256, 3)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _train(out: Path, data: list[str], **options: Any) -> TrainResult:
    """The shared in-process run with smaller patches, batches and fewer steps."""
    return run_train(out, **{"data": data, "patch_size": 8, "batch_size": 2, "steps": 2, **options})


def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(cli_app(), ["train", *args])


def _cli_args(out: Path, data: list[str], **options: str) -> list[str]:
    """The shared tiny-run flags with smaller patches, batches and fewer steps."""
    return cli_flags(out, data, **{"--patch-size": "8", "--batch-size": "2", "--steps": "2", **options})


# --- the deep-supervision hook --------------------------------------------------------------

# (model, scale, tiny kwargs, number of supervised outputs)
HOOKED = [
    ("drcn", 2, {"recursions": 3, "feats": 4}, 4),
    ("memnet", 2, {"blocks": 2, "recursions": 1, "feats": 4, "multi_supervised": True}, 3),
    ("cmsc", 2, {"stages": 2, "modules": 1, "feats": 4}, 3),
    ("lapsrn", 4, {"depth": 1, "feats": 4}, 2),
    ("ms-lapsrn", 4, {"depth": 1, "recursions": 1, "feats": 4}, 2),
]


@pytest.mark.parametrize(("name", "scale", "kwargs", "count"), HOOKED, ids=[h[0] for h in HOOKED])
def test_every_supervised_output_gets_a_finite_gradient(
    name: str, scale: int, kwargs: dict[str, Any], count: int
) -> None:
    """The trainer's deep-supervision step: every output the paper supervises receives gradient,
    every weight gets a finite one, and the logged terms are the paper's combination of the
    per-output losses on the Y channel (what a Y-only network controls)."""
    torch.manual_seed(0)
    net = create_model(name, scale, **kwargs)
    raw: list[Tensor] = []

    def forward(x: Tensor) -> list[Tensor]:
        outs = TrainingOutputs(net)(x)
        for out in outs:
            out.retain_grad()
        raw.extend(outs)
        return outs

    objective = Objective(parse_losses("l1=1,charbonnier=0.5"), luma=True)
    lr, hr = torch.rand(2, 3, 6, 7), torch.rand(2, 3, 6 * scale, 7 * scale)
    terms = supervised_terms(forward, net, objective, lr, hr, "y", progress=0.25)
    assert list(terms) == ["l1", "charbonnier"]
    sum(terms.values()).backward()

    assert len(raw) == count
    torch.testing.assert_close(raw[-1], net(rgb_to_y(lr)))  # the last output is the network's output
    for i, out in enumerate(raw):
        assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0, f"output {i}"
    for key, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert sum(p.grad.abs().sum() for p in net.parameters()) > 0

    y_hr = rgb_to_y(hr)
    with torch.no_grad():
        if name.endswith("lapsrn"):
            expected = pyramid_loss(raw, y_hr, F.l1_loss)
        else:
            alpha = net.supervision_alpha(count - 1, 0.25)
            expected = multi_supervision_loss(raw[-1], raw[:-1], y_hr, alpha, F.l1_loss)
    torch.testing.assert_close(terms["l1"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_supervision_weights_follow_the_papers() -> None:
    drcn = create_model("drcn", 2, recursions=3, feats=4)
    # DRCN: alpha from 1 (intermediate outputs only) to 0 (final output only) at half of training
    assert [drcn.supervision_alpha(3, p) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.5, 0.0, 0.0]
    # MemNet: the M block predictions and the final output weigh alike, 1 / (M + 1) each
    memnet = create_model("memnet", 2, blocks=3, recursions=1, feats=4, multi_supervised=True)
    assert memnet.supervision_alpha(3, 0.0) == pytest.approx(0.75)
    # the plain MemNet is trained on its output alone
    plain = create_model("memnet", 2, blocks=2, recursions=1, feats=4)
    x = torch.rand(1, 1, 5, 5)
    outs = plain.training_outputs(x)
    assert len(outs) == 1
    target = torch.rand(1, 1, 10, 10)
    torch.testing.assert_close(plain.supervision_loss(outs, target, F.mse_loss, 0.0), F.mse_loss(outs[0], target))


def test_pyramid_loss_compares_each_level_with_the_hr_downscaled_to_its_size() -> None:
    torch.manual_seed(0)
    net = create_model("lapsrn", 8, depth=1, feats=4)
    objective = Objective(parse_losses("charbonnier=1"), luma=True)
    seen: list[tuple[Tensor, Tensor]] = []

    class Spy(Objective):
        def forward(
            self, sr: Tensor, hr: Tensor, lr: Tensor | None = None, discriminator: Any = None
        ) -> dict[str, Tensor]:
            seen.append((sr.detach(), hr))
            return super().forward(sr, hr, lr, discriminator)

    spy = Spy(objective.terms, luma=True)
    lr, hr = torch.rand(1, 3, 5, 6), torch.rand(1, 3, 40, 48)
    terms = supervised_terms(TrainingOutputs(net), net, spy, lr, hr, "y", progress=0.0)
    assert [tuple(out.shape[-2:]) for out, _ in seen] == [(10, 12), (20, 24), (40, 48)]
    for out, target in seen:
        assert target.shape == out.shape
        want = hr if target.shape == hr.shape else imresize(hr, size=tuple(out.shape[-2:]))
        assert torch.equal(target, want)
    # the same number as the model's own pyramid loss on the Y channel
    with torch.no_grad():
        y = net.forward_pyramid(rgb_to_y(lr))

        def charb(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.sqrt((a - b) ** 2 + 1e-6).mean()

        torch.testing.assert_close(terms["charbonnier"], pyramid_loss(y, rgb_to_y(hr), charb), rtol=1e-5, atol=1e-6)


def test_outputs_are_converted_to_rgb_as_at_inference() -> None:
    """Each output of a Y-only network becomes RGB exactly as :class:`LoadedModel` makes the
    final one (chroma: the bicubic at that output's size)."""
    torch.manual_seed(0)
    net = create_model("lapsrn", 4, depth=1, feats=4).eval()
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        outs = in_convention(TrainingOutputs(net), x, "y")
        assert [o.shape for o in outs] == [(1, 3, 12, 10), (1, 3, 24, 20)]
        view = LoadedModel("lapsrn", get_arch("lapsrn"), net, 4, {"depth": 1, "feats": 4})
        torch.testing.assert_close(outs[-1], view(x))
        edsr = create_model("edsr", 2, n_resblocks=1, n_feats=4).eval()
        (out255,) = in_convention(lambda t: [edsr(t)], x, "rgb255")
        torch.testing.assert_close(out255, LoadedModel("edsr", get_arch("edsr"), edsr, 2, {})(x))


def test_deep_supervision_option(tmp_path: Path, images: list[str]) -> None:
    base = {
        "data": images,
        "scale": "4",
        "patch_size": 8,
        "out": str(tmp_path / "r"),
        "model_kwargs": {"depth": 1, "feats": 4},
    }
    trainer = Trainer(build_config({**base, "model": "lapsrn"}), DistContext(), Console(file=io.StringIO()))
    trainer.close()
    assert trainer.deep  # auto: on for a network with the hook
    trainer = Trainer(
        build_config({**base, "model": "lapsrn", "deep_supervision": False}), DistContext(), Console(file=io.StringIO())
    )
    trainer.close()
    assert not trainer.deep
    with pytest.raises(UsageError, match="no intermediate outputs"):
        Trainer(build_config({**base, "model": "vdsr", "model_kwargs": {}, "deep_supervision": True}), DistContext())
    with pytest.raises(UsageError, match="--no-deep-supervision"):
        Trainer(build_config({**base, "model": "lapsrn", "loss": "l1=1,adversarial=0.01"}), DistContext())


def test_deep_supervision_under_ddp_matches_one_process(tmp_path: Path, images: list[str]) -> None:
    """DDP wraps the module that runs ``training_outputs``: two gloo processes log the losses of
    one (DRCN: every recursion supervised, alpha decaying, the ensemble weights trained)."""
    (tmp_path / "drcn.toml").write_text('model_kwargs = {recursions = 3, feats = 8}\nloss = "charbonnier=1"\n')
    options = {
        "--model": "drcn",
        "--scale": "2",
        "--batch-size": "4",
        "--steps": "3",
        "--config": str(tmp_path / "drcn.toml"),
    }
    # --standalone: torchrun binds a free port itself (no race with other tests' processes)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "upscale_cli"]
    run += ["train", *_cli_args(tmp_path / "ddp", images, **options)]
    done = subprocess.run(
        run,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _cli(_cli_args(tmp_path / "one", images, **options)).exit_code == 0
    ddp, one = (read_log(tmp_path / name / "log.jsonl") for name in ("ddp", "one"))
    pairs = list(zip([r for r in ddp if "loss" in r], [r for r in one if "loss" in r], strict=True))
    assert len(pairs) == 3
    for a, b in pairs:
        assert a["charbonnier"] == pytest.approx(b["charbonnier"], rel=1e-5)


# --- VDSR's adjustable gradient clipping ---------------------------------------------------


def test_adjustable_clipping_bounds_every_gradient_component_in_a_train_step(
    tmp_path: Path, images: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float]] = []
    step = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        grads = [p.grad.abs().max() for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append((float(torch.stack(grads).max()), self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    (tmp_path / "vdsr.toml").write_text('model_kwargs = {depth = 3, feats = 8}\nschedule = "none"\n')
    theta, lr = 1e-4, 0.1
    args = _cli_args(
        tmp_path / "run", images, **{"--model": "vdsr", "--scale": "2", "--optimizer": "sgd", "--lr": str(lr)}
    )
    args += ["--grad-clip", str(theta), "--grad-clip-mode", "adjustable", "--config", str(tmp_path / "vdsr.toml")]
    result = _cli(args)
    assert result.exit_code == 0, result.output
    assert len(seen) == 2
    for biggest, used_lr in seen:
        assert used_lr == lr
        assert biggest == pytest.approx(theta / lr, rel=1e-6)  # clipped exactly at theta / lr, never above
    # adjustable mode needs theta (VDSR's recipe has one: take it away)
    result = _cli(
        _cli_args(tmp_path / "bad", images,
                  **{"--model": "vdsr", "--scale": "2", "--grad-clip-mode": "adjustable", "--grad-clip": "0"})
    )  # fmt: skip
    assert result.exit_code == 2 and "--grad-clip" in result.output


# --- SRGAN's discriminator and losses -------------------------------------------------------


def test_standard_gan_losses_follow_srgan_equations() -> None:
    real, fake = torch.tensor([[1.5], [-0.5]]), torch.tensor([[0.3], [-2.0]])
    d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    torch.testing.assert_close(gan_discriminator_loss(real, fake), d)
    torch.testing.assert_close(gan_generator_loss(fake), -torch.log(torch.sigmoid(fake)).mean())
    with pytest.raises(UsageError, match="adversarial variant"):
        Objective(parse_losses("adversarial:wgan=1"))
    with pytest.raises(UsageError, match="one adversarial"):
        Objective(parse_losses("adversarial=1,adversarial:gan=1"))


def test_srgan_discriminator_trains_in_gan_mode(tmp_path: Path, images: list[str]) -> None:
    with pytest.raises(UsageError, match="96x96"):
        make_discriminator("srgan", [64])
    options = {"model": "srgan", "scale": "4", "patch_size": 24, "model_kwargs": {"blocks": 1, "feats": 8}}
    result = _train(tmp_path / "gan", images, loss="l1=1,adversarial:srgan=0.001", discriminator="srgan", **options)
    assert result.step == 2
    steps = [r for r in read_log(result.out_dir / "log.jsonl") if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["d_loss"]) and np.isfinite(r["adversarial:srgan"]) for r in steps)
    saved = load_checkpoint(result.out_dir / FILENAME)
    reference = SRGANDiscriminator().state_dict()
    assert saved["disc"].keys() == reference.keys()
    assert all(saved["disc"][k].shape == t.shape for k, t in reference.items())
    assert saved["config"]["discriminator"] == "srgan"


# --- resume, recipes, export ----------------------------------------------------------------


def test_checkpoints_older_than_these_options_still_resume(tmp_path: Path, images: list[str]) -> None:
    out = tmp_path / "run"
    options = {"model": "espcn", "scale": "2"}
    _train(out, images, steps=1, **options)
    state = load_checkpoint(out / FILENAME)
    for key in ("deep_supervision", "discriminator", "grad_clip_mode"):
        del state["config"][key]
    save_checkpoint(out / FILENAME, state)
    assert _train(out, images, resume=True, **options).step == 2
    with pytest.raises(UsageError, match="--discriminator"):
        _train(out, images, resume=True, steps=3, discriminator="srgan", **options)


def test_new_recipes_are_the_papers_objectives() -> None:
    recipes = {p.stem: build_config({}, p) for p in (REPO / "recipes").glob("*.toml")}
    srgan, densesr, lapsrn = recipes["srgan-x4"], recipes["densesr-x4"], recipes["lapsrn-x4"]
    assert {t.key for t in srgan.loss} == {"perceptual:vgg19_relu5_4", "adversarial:gan"}
    assert srgan.discriminator == "srgan" and srgan.patch_size * srgan.scale[0] == 96
    assert [t.name for t in densesr.loss] == ["highpass"]
    assert [t.name for t in lapsrn.loss] == ["charbonnier"] and lapsrn.deep_supervision is True


def test_lapsrn_trains_deeply_supervised_and_its_export_reloads(tmp_path: Path, images: list[str]) -> None:
    (tmp_path / "tiny.toml").write_text('loss = "charbonnier=1"\nmodel_kwargs = {depth = 1, feats = 8}\n')
    out = tmp_path / "run"
    args = _cli_args(
        out, images, **{"--model": "lapsrn", "--scale": "4", "--steps": "3", "--config": str(tmp_path / "tiny.toml")}
    )
    result = _cli(args)
    assert result.exit_code == 0, result.output
    assert "with deep supervision" in result.output
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["deep_supervision"] is True and info["kwargs"] == {"shared": False, "depth": 1, "feats": 8}
    assert [r["step"] for r in read_log(out / "log.jsonl") if "charbonnier" in r] == [1, 2, 3]

    net = create_model("lapsrn", 4, depth=1, feats=8)
    net.load_state_dict(load_checkpoint(out / FILENAME)["model"])
    ref = LoadedModel("lapsrn", get_arch("lapsrn"), net.eval(), 4, info["kwargs"])
    reloaded = load_model(weights=str(out / "model.safetensors"))
    assert reloaded.scale == 4 and reloaded.arch.name == "lapsrn"
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(reloaded(x), ref(x))


@pytest.mark.parametrize(
    ("model", "act", "kwargs"),
    [("compact-relu", "relu", {}), ("compact:act=lrelu,num_feat=8,num_conv=2", "lrelu", {"num_feat": 8, "num_conv": 2})],
)
def test_train_a_variant_or_kwargs_named_with_model(
    tmp_path: Path, images: list[str], model: str, act: str, kwargs: dict[str, int]
) -> None:
    """--model takes what --arch takes: a variant the keys cannot tell, or NAME:key=value; the
    export records them, so the file loads back alone."""
    result = _train(tmp_path / "run", images, model=model)
    loaded = load_model(weights=str(result.out_dir / result.export["file"]))
    assert (loaded.arch.name, loaded.scale, loaded.kwargs["act"]) == ("srvgg", 2, act)
    assert {k: loaded.kwargs[k] for k in kwargs} == kwargs
