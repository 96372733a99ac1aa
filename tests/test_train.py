"""``upscale train``: config, data determinism, losses, VGG weights, training that learns,
exact resume after kill -9, DDP on gloo, export -> reload.

Everything runs on the CPU with one thread per process and small networks/patches.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TRAIN, need_shared
from PIL import Image
from rich.console import Console
from safetensors.torch import load_file
from train_helpers import cli_app, cli_flags, run_train
from typer.testing import CliRunner

from upscale_cli.errors import UsageError, WeightsError
from upscale_cli.loader import load_model
from upscale_cli.metrics import evaluate
from upscale_cli.models import LoadedModel, create_model, get_arch
from upscale_cli.resize import imresize
from upscale_cli.train import vgg
from upscale_cli.train.checkpoint import load_checkpoint
from upscale_cli.train.config import Degradation, build_config, parse_losses
from upscale_cli.train.data import ImageStore, PatchDataset, decode_rgb8, make_loader
from upscale_cli.train.degrade import bicubic_lr
from upscale_cli.train.discriminator import VGGDiscriminator
from upscale_cli.train.export import manifest_entry
from upscale_cli.train.loop import Trainer, TrainResult, choose_model
from upscale_cli.train.losses import (
    Objective,
    highpass,
    perceptual_variant,
    ragan_discriminator_loss,
    ragan_generator_loss,
)
from upscale_cli.train.optim import LRSchedule
from upscale_cli.train.report import read_log
from upscale_cli.weights import sha256_file

EDGE_IMAGES = ("t36.png", "t55.png", "t64.png")
"""T91 images with sharp edges, where a learned x2 upscaler has the most to gain over bicubic
(t65 is a duplicate of t36 in T91 and is left out)."""

STEP_KEYS = ("step", "lr", "loss")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def edge_files() -> list[str]:
    return [str(need_shared(TRAIN / "T91" / name)) for name in EDGE_IMAGES]


def _steps(out: Path) -> list[dict]:
    return [r for r in read_log(out / "log.jsonl") if "loss" in r]


def _same_losses(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        terms = {k: v for k, v in x.items() if k not in ("data_wait", "seconds")}
        assert terms == {k: v for k, v in y.items() if k not in ("data_wait", "seconds")}


# --- config ---------------------------------------------------------------------------------


def test_toml_config_is_read_and_flags_given_override_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(
        'model = "carn-m"\nscale = [2, 3]\ndata = ["a", "b"]\npatch-size = 24\nlr = 1e-3\nsteps = 50\n'
        'loss = {l1 = 1.0, "perceptual:vgg16" = 0.05}\n[degradation]\nblur = 0.2\njpeg_quality = [60, 90]\n',
        encoding="utf-8",
    )
    seen = {}

    def fake_train(cfg, console=None):
        seen["cfg"] = cfg
        return TrainResult(Path("x"), 0, 0, "fp32", None, None, 0.0, 0.0)

    monkeypatch.setattr("upscale_cli.train.loop.train", fake_train)
    result = CliRunner().invoke(cli_app(), ["train", "--config", str(cfg_file), "--lr", "0.5", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.model, cfg.scale, cfg.data) == ("carn-m", (2, 3), ("a", "b"))
    assert (cfg.patch_size, cfg.steps) == (24, 50)  # from the file
    assert (cfg.lr, cfg.batch_size) == (0.5, 8)  # flags win over the file
    assert cfg.ema == 0.999 and cfg.schedule == "step"  # where neither says: the default, CARN's recipe
    assert [(t.key, t.weight) for t in cfg.loss] == [("l1", 1.0), ("perceptual:vgg16", 0.05)]
    assert cfg.degradation == Degradation(blur=0.2, jpeg_quality=(60, 90))
    assert choose_model(cfg).scales == (2, 3)


@pytest.mark.parametrize(
    ("toml", "flags", "message"),
    [
        ('model = "espcn"\ndata = "x"\nbatchsize = 3\n', [], "unknown key 'batchsize'"),
        ('model = "espcn"\ndata = "x"\n', ["--loss", "l1=1,sharpness=2"], "unknown loss 'sharpness'"),
        ('model = "espcn"\ndata = "x"\n', ["--scale", "2,3"], "single-scale"),
        ('model = "espcn"\ndata = "x"\n[degradation]\nnoise = 2\n', [], "probability"),
    ],
)
def test_bad_options_are_one_line_usage_errors(tmp_path: Path, toml: str, flags: list[str], message: str) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text(toml, encoding="utf-8")
    result = CliRunner().invoke(cli_app(), ["train", "--config", str(cfg_file), "--out", str(tmp_path / "o"), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_recipes_are_valid_configs() -> None:
    recipes = sorted((REPO / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        cfg = build_config({}, path)
        assert choose_model(cfg).scales
        for term in cfg.loss:
            if term.name == "perceptual":
                perceptual_variant(term.variant)


def test_lr_schedules() -> None:
    warm_cos = LRSchedule("cosine", steps=10, warmup=2)
    assert [warm_cos(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert warm_cos(6) == pytest.approx(0.5) and warm_cos(10) == pytest.approx(0.0)
    step = LRSchedule("step", steps=100)
    assert [step(t) for t in (0, 19, 20, 45, 79, 80, 99)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625]
    assert LRSchedule("none", steps=100, warmup=4)(50) == 1.0


# --- data -----------------------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_step(edge_files: list[str]) -> None:
    store = ImageStore(edge_files)
    ds = PatchDataset(store, (2,), patch_size=8, batch_size=4, seed=3)
    straight = list(make_loader(ds, 0, 6))
    resumed = list(make_loader(ds, 3, 6, workers=2))  # started at step 3, in worker processes
    for (lr_a, hr_a), (lr_b, hr_b) in zip(straight[3:], resumed, strict=True):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    assert straight[0][0].shape == (4, 3, 8, 8) and straight[0][1].shape == (4, 3, 16, 16)
    assert straight[0][0].dtype == torch.uint8
    # the clean LR is the protocol's: bicubic of the HR crop, rounded to 8 bits
    assert torch.equal(straight[0][0][1], bicubic_lr(straight[0][1][1].float() / 255, 2))
    other = next(iter(make_loader(PatchDataset(store, (2,), 8, 4, seed=4), 0, 1)))
    assert not torch.equal(other[1], straight[0][1])
    # two DDP ranks share each global batch: their halves make the single-process batch
    halves = [list(make_loader(ds, 0, 6, rank=r, world=2)) for r in (0, 1)]
    for step, (lr, hr) in enumerate(straight):
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), hr)
    # multi-scale: one scale per batch, drawn per step
    multi = PatchDataset(store, (2, 3, 4), patch_size=8, batch_size=2, seed=3)
    scales = [hr.shape[-1] // lr.shape[-1] for lr, hr in make_loader(multi, 0, 30)]
    assert scales == [multi.scale_at(t) for t in range(30)] and set(scales) == {2, 3, 4}
    # degradations: random per sample, yet the same sample twice is the same
    deg = PatchDataset(store, (2,), 8, 4, seed=3, degradation=Degradation(blur=1, noise=1, jpeg=1))
    assert torch.equal(deg[5][0], deg[5][0]) and torch.equal(deg[5][1], ds[5][1])
    assert not torch.equal(deg[5][0], bicubic_lr(ds[5][1].float() / 255, 2))


# --- losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "l1",
        "mse",
        "charbonnier",
        "highpass",
        "perceptual:vgg16_relu2_2",
        "perceptual:vgg19_relu5_4",
        "perceptual:esrgan",
        "texture",
        "adversarial",
    ],
)
def test_every_loss_gives_finite_gradients(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vgg, "ALLOW_RANDOM_WEIGHTS", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(vgg.ENV_VAR, raising=False)
    torch.manual_seed(0)
    net = create_model("edsr", 2, n_resblocks=1, n_feats=8)  # an rgb255 family, through LoadedModel
    model = LoadedModel("edsr", get_arch("edsr"), net, 2, {})
    disc = VGGDiscriminator(nf=8)
    lr, hr = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 48, 48)
    sr = model(lr)
    terms = Objective(parse_losses(f"{spec}=1"))(sr, hr, lr, discriminator=disc)
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if spec == "adversarial":  # the discriminator's own loss too
        disc.zero_grad(set_to_none=True)
        d_loss = ragan_discriminator_loss(disc(hr), disc(sr.detach()))
        d_loss.backward()
        assert torch.isfinite(d_loss) and all(torch.isfinite(p.grad).all() for p in disc.parameters())


def test_relativistic_losses_follow_esrgan_equations() -> None:
    real, fake = torch.randn(6, 1), torch.randn(6, 1)

    def d_ra(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # ESRGAN: sigmoid(C(a) - E[C(b)])
        return torch.sigmoid(a - b.mean())

    eq1 = -(torch.log(d_ra(real, fake)).mean() + torch.log(1 - d_ra(fake, real)).mean()) / 2
    eq2 = -(torch.log(1 - d_ra(real, fake)).mean() + torch.log(d_ra(fake, real)).mean()) / 2
    assert ragan_discriminator_loss(real, fake).item() == pytest.approx(eq1.item(), rel=1e-5)
    assert ragan_generator_loss(real, fake).item() == pytest.approx(eq2.item(), rel=1e-5)


def test_highpass_compares_residuals_and_y_models_train_on_luma() -> None:
    sr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    up = torch.rand(2, 3, 16, 16)
    assert highpass(sr, hr, up).item() == pytest.approx(torch.mean(((sr - up) - (hr - up)) ** 2).item(), rel=1e-6)
    # a Y-only net is scored on luma: chroma errors (the bicubic's, beyond its reach) do not count
    from upscale_cli.color import rgb_to_ycbcr, ycbcr_to_rgb

    ycc = rgb_to_ycbcr(hr)
    other_chroma = ycbcr_to_rgb(torch.cat([ycc[:, :1], torch.rand(2, 2, 16, 16)], dim=1))
    on_luma, on_rgb = Objective(parse_losses("l1=1"), luma=True), Objective(parse_losses("l1=1"))
    assert on_luma(other_chroma, hr)["l1"].item() < 1e-6
    assert on_rgb(other_chroma, hr)["l1"].item() > 1e-2


# --- VGG weights ----------------------------------------------------------------------------


def test_vgg_weights_absent_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edge_files: list[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(vgg.ENV_VAR, raising=False)
    with pytest.raises(WeightsError) as err:
        vgg.load_vgg("vgg19", ["relu5_4"])
    msg = str(err.value)
    assert "\n" not in msg and "vgg19-dcbb9e9d.pth" in msg and "--vgg-weights" in msg
    result = CliRunner().invoke(
        cli_app(), ["train", *cli_flags(tmp_path / "o", edge_files, **{"--loss": "l1=1,perceptual=0.1"})]
    )
    assert result.exit_code == 3 and "vgg19-dcbb9e9d.pth" in result.output


def test_vgg_reads_torchvision_files_and_checks_their_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    ref = vgg.VGGFeatures("vgg16", ["relu5_3"])
    sd = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)  # torchvision files hold the classifier too
    tmp = tmp_path / "vgg16.pth"
    torch.save(sd, tmp)
    good = tmp_path / f"vgg16-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(good)
    loaded = vgg.load_vgg("vgg16", ["relu2_2"], weights=good)
    expected = vgg.VGGFeatures("vgg16", ["relu2_2", "relu5_3"], ref.features.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["relu2_2"], expected(x)["relu2_2"])
    assert len(loaded.features) == 9  # truncated after relu2_2
    # the hub cache is searched, and a file whose content does not match its name is refused
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    good.rename(hub / vgg.HUB_FILES["vgg16"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(vgg.ENV_VAR, raising=False)
    with pytest.raises(WeightsError, match="does not start with 397923af"):
        vgg.load_vgg("vgg16", ["relu2_2"])
    mine = (hub / vgg.HUB_FILES["vgg16"]).rename(tmp_path / "mine.pth")
    with pytest.raises(WeightsError, match="holds 13 conv layers, vgg19 has 16"):  # VGG-16 given for VGG-19
        vgg.load_vgg("vgg19", ["relu5_4"], weights=mine)


# --- training runs --------------------------------------------------------------------------


def _edge_crops(folder: Path, files: list[str], side: int = 48) -> list[torch.Tensor]:
    """The ``side``-px crop of each image where bicubic x2 errs most; saved to ``folder``."""
    folder.mkdir()
    crops = []
    for f in files:
        img = torch.from_numpy(decode_rgb8(Path(f)).copy()).permute(2, 0, 1).float() / 255
        best = max(
            ((y, x) for y in range(0, img.shape[1] - side + 1, 16) for x in range(0, img.shape[2] - side + 1, 16)),
            key=lambda p: float(
                (
                    imresize(bicubic_lr(c := img[:, p[0] : p[0] + side, p[1] : p[1] + side], 2).float() / 255, scale=2)
                    - c
                )
                .pow(2)
                .mean()
            ),
        )
        crop = img[:, best[0] : best[0] + side, best[1] : best[1] + side]
        Image.fromarray((crop * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / Path(f).name)
        crops.append(crop)
    return crops


def test_espcn_x2_trained_200_steps_beats_bicubic_by_1db(tmp_path: Path, edge_files: list[str]) -> None:
    crops = _edge_crops(tmp_path / "crops", edge_files)
    result = run_train(
        tmp_path / "run",
        data=[str(tmp_path / "crops")],
        steps=200,
        batch_size=16,
        lr=7e-3,
        warmup=20,
        grad_clip=0.5,
        val_set=str(tmp_path / "crops"),
        val_every=100,
    )
    model = load_model(weights=str(result.out_dir / "model.safetensors"))  # the file alone suffices
    sr_psnr, bicubic_psnr = [], []
    for crop in crops:
        lr = bicubic_lr(crop, 2).float() / 255
        with torch.no_grad():
            sr = model(lr[None])[0]
        sr_psnr.append(float(evaluate(sr, crop, 2)[0]))
        bicubic_psnr.append(float(evaluate(imresize(lr, scale=2), crop, 2)[0]))
    gain = np.mean(sr_psnr) - np.mean(bicubic_psnr)
    assert gain >= 1.0, f"ESPCN {np.mean(sr_psnr):.2f} dB vs bicubic {np.mean(bicubic_psnr):.2f} dB"
    # validation used bench's protocol on the same crops, and the best weights were exported
    info = json.loads((result.out_dir / "model.json").read_text())
    assert info["validation"]["step"] in (100, 200)
    # the same weights; the kernels may sum in another order (1.03e-6 dB apart on an AMX Xeon)
    assert info["validation"]["psnr"] == pytest.approx(np.mean(sr_psnr), abs=1e-4)
    assert info["validation"]["psnr"] == max(
        r["val_psnr"] for r in read_log(result.out_dir / "log.jsonl") if "val_psnr" in r
    )


def test_resume_after_kill_9_reproduces_the_uninterrupted_losses(tmp_path: Path, edge_files: list[str]) -> None:
    options = {"--steps": "40", "--save-every": "5", "--ema": "0.9", "--seed": "7", "--lr": "1e-3"}
    run_train(tmp_path / "straight", data=edge_files, steps=40, save_every=5, ema=0.9, seed=7, lr=1e-3)
    killed = tmp_path / "killed"
    log = (tmp_path / "stderr.txt").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "upscale_cli", "train", *cli_flags(killed, edge_files, **options)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert 5 <= stopped_at < 40
    run_train(killed, data=edge_files, steps=40, save_every=5, ema=0.9, seed=7, lr=1e-3, resume=True)
    _same_losses(_steps(killed), _steps(tmp_path / "straight"))
    a, b = load_file(killed / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_at_then_resume_is_the_uninterrupted_run(tmp_path: Path, edge_files: list[str]) -> None:
    options = {"data": edge_files, "steps": 12, "save_every": 5, "ema": 0.9, "seed": 3, "lr": 1e-3, "warmup": 2}
    run_train(tmp_path / "straight", **options)
    segmented = tmp_path / "segmented"
    flags = {"--steps": "12", "--save-every": "5", "--ema": "0.9", "--seed": "3", "--lr": "1e-3", "--warmup": "2"}
    result = CliRunner().invoke(cli_app(), ["train", *cli_flags(segmented, edge_files, **flags), "--stop-at", "7"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(segmented / "checkpoint.pt")["step"] == 7  # checkpointed where it stopped, off the 5-grid
    assert len(_steps(segmented)) == 7 and (segmented / "model.safetensors").is_file()
    run_train(segmented, resume=True, **options)  # on the 12-step schedule all along
    _same_losses(_steps(segmented), _steps(tmp_path / "straight"))
    with pytest.raises(UsageError, match="--stop-at"):
        run_train(tmp_path / "bad", stop_at=13, **options)


def test_gan_run_resumes_exactly_after_a_crash(
    tmp_path: Path, edge_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vgg, "ALLOW_RANDOM_WEIGHTS", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(vgg.ENV_VAR, raising=False)
    options = {
        "data": edge_files,
        "loss": "l1=1,perceptual:vgg16=0.1,adversarial=0.01",
        "steps": 4,
        "save_every": 2,
        "batch_size": 2,
        "ema": 0.9,
        "seed": 5,
    }
    run_train(tmp_path / "straight", **options)
    checkpoint = Trainer._checkpoint

    def crash_after_step_2(self: Trainer) -> None:
        checkpoint(self)
        if self.step == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "_checkpoint", crash_after_step_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tmp_path / "crashed", **options)
    monkeypatch.setattr(Trainer, "_checkpoint", checkpoint)
    assert len(_steps(tmp_path / "crashed")) == 2
    run_train(tmp_path / "crashed", resume=True, **options)
    straight = _steps(tmp_path / "straight")
    assert all("d_loss" in r and "adversarial" in r for r in straight)
    _same_losses(_steps(tmp_path / "crashed"), straight)


def test_existing_runs_are_not_overwritten_and_resume_needs_a_checkpoint(tmp_path: Path, edge_files: list[str]) -> None:
    app, out = cli_app(), tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *cli_flags(out, edge_files), "--resume"])
    assert result.exit_code == 2 and "no checkpoint to resume" in result.output
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    result = CliRunner().invoke(app, ["train", *cli_flags(out, edge_files)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_tensorboard_is_optional(tmp_path: Path, edge_files: list[str]) -> None:
    import importlib.util

    result = CliRunner().invoke(
        cli_app(), ["train", *cli_flags(tmp_path / "o", edge_files, **{"--steps": "1"}), "--tensorboard"]
    )
    if importlib.util.find_spec("tensorboard") is None:
        assert result.exit_code == 2 and "pip install tensorboard" in result.output
    else:
        assert result.exit_code == 0 and any((tmp_path / "o" / "tensorboard").iterdir())


def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path: Path, edge_files: list[str]) -> None:
    ddp_out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # torchrun binds a free port itself: no race with other tests' processes
        "--nproc-per-node=2",
        "-m",
        "upscale_cli",
        "train",
        *cli_flags(ddp_out, edge_files, **{"--steps": "3", "--ema": "0.9"}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    run_train(tmp_path / "single", data=edge_files, steps=3, ema=0.9)
    ddp_steps, single_steps = _steps(ddp_out), _steps(tmp_path / "single")
    assert [r["step"] for r in ddp_steps] == [1, 2, 3]
    for a, b in zip(ddp_steps, single_steps, strict=True):  # same data, gradients averaged: same run
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a, b = load_file(ddp_out / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_ddp_process_without_a_gpu_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun starting more CUDA processes than the node has GPUs: one clear line, not a CUDA
    'invalid device ordinal' traceback from every rank."""
    from upscale_cli.train import ddp

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match=r"process 1 of this node has no GPU: 1 CUDA device\(s\).*--device cpu"):
        ddp.setup(ddp.DistContext(rank=1, world=2, local_rank=1), torch.device("cuda"))


def test_model_json_records_the_precision_the_run_trained_in(tmp_path: Path, edge_files: list[str]) -> None:
    """An explicit bf16 run says so in model.json, as an fp32 one does (the figures depend on it)."""
    result = run_train(tmp_path / "run", data=edge_files, steps=2, precision="bf16")
    info = json.loads((result.out_dir / "model.json").read_text())
    assert info["training"]["precision"] == "bf16"


def test_export_reloads_with_identical_outputs(tmp_path: Path, edge_files: list[str]) -> None:
    import jsonschema

    result = run_train(tmp_path / "run", model="carn-m", scale="3,2", data=edge_files, patch_size=12, steps=3, ema=0.5)
    info = json.loads((result.out_dir / "model.json").read_text())
    path = result.out_dir / "model.safetensors"
    assert info["sha256"] == sha256_file(path) and info["size"] == path.stat().st_size
    assert (info["name"], info["arch"], info["scales"], info["scale"], info["convention"]) == (
        "carn-m", "carn", [3, 2], 3, "rgb"
    )
    assert info["training"]["steps"] == 3 and info["training"]["weights"] == "ema"
    assert info["training"]["precision"] == "fp32"
    ema = load_checkpoint(result.out_dir / "checkpoint.pt")["ema"]["module"]
    net = create_model("carn-m", 2)
    net.load_state_dict(ema)
    x = torch.rand(1, 3, 20, 24)
    for scale in (2, 3):
        reloaded = load_model(weights=str(path), scale=scale)
        ref = LoadedModel("carn-m", get_arch("carn"), net.eval(), scale, info["kwargs"])
        with torch.no_grad():
            assert torch.equal(reloaded(x), ref(x))
    # `upscale img.png --weights OUT/model.safetensors`: the file alone, at its default scale (x3)
    from upscale_cli.cli import main

    img = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(img).save(tmp_path / "in.png")
    try:
        main([str(tmp_path / "in.png"), "--weights", str(path), "-o", str(tmp_path / "out.png")])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    out = np.asarray(Image.open(tmp_path / "out.png")).astype(np.int64)
    ref3 = LoadedModel("carn-m", get_arch("carn"), net.eval(), 3, info["kwargs"])
    with torch.no_grad():
        expected = (ref3(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0].clamp(0, 1) * 255).round()
    assert out.shape == (60, 72, 3)
    assert np.abs(out - expected.permute(1, 2, 0).numpy()).max() <= 1
    # --init starts a new run from these weights; a file of another architecture is refused
    from upscale_cli.train.ddp import DistContext

    fine_tune = build_config(
        {"model": "carn-m", "scale": "2", "data": edge_files, "init": str(path), "out": str(tmp_path / "ft")}
    )
    started = Trainer(fine_tune, DistContext(), Console(file=io.StringIO()))
    started.close()
    weights = load_file(path)
    assert all(torch.equal(t, weights[k]) for k, t in started.net.state_dict().items())
    with pytest.raises(WeightsError, match="--init"):
        Trainer(
            build_config({**fine_tune.to_dict(), "model": "carn", "loss": "l1=1", "out": str(tmp_path / "x")}),
            DistContext(),
        )
    schema = json.loads((REPO / "upscale_cli" / "manifest_schema.json").read_text())
    entry = manifest_entry(info, 2, [{"url": "https://example.org/carn-m-mine.safetensors"}])
    jsonschema.validate({"version": 1, "models": {"carn-m-mine": {"2": entry}}}, schema)
