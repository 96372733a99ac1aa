"""``upscale train``: train any network of the zoo and export weights ``upscale`` loads directly.

The options map one to one onto :class:`upscale_cli.train.config.TrainConfig`; ``--config
FILE`` (TOML) holds the same keys and flags given on the command line override it.  The work is
in :mod:`upscale_cli.train` (imported when the command runs, so ``--help`` stays fast).
Under ``torchrun`` every process runs this command; only rank 0 prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..reporting import reported
from ..train.config import TrainConfig, build_config, format_losses
from ..train.recipes import RECIPE_KEYS


def _default(name: str) -> str:
    value = TrainConfig.__dataclass_fields__[name].default
    if name == "loss":
        value = format_losses(value)
    if name in RECIPE_KEYS:
        return f" (default: the family's recipe, else {value})"
    return f" (default: {value})"


def train(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model name, architecture family or variant, optionally NAME:key=value,... (see `upscale models`).",
    ),
    scale: str | None = typer.Option(
        None, "--scale", "-s", help="Scale, or scales for a multi-scale net (2,3,4) (default: the model's own)."
    ),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Folder (searched recursively) or file of HR training images; repeatable."
    ),
    val_set: str | None = typer.Option(
        None, "--val-set", help="Validation set: Set5, Set14, B100, ... under --data-dir, or a folder."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder holding the test sets by name (default: $UPSCALE_DATA)."
    ),
    loss: str | None = typer.Option(
        None,
        "--loss",
        help="Weighted terms name[:variant]=w among l1, mse, charbonnier, "
        "perceptual[:vgg16_relu2_2|vgg19_relu5_4|vgg19_conv5_4], texture, highpass, adversarial[:ragan|gan]."
        + _default("loss"),
    ),
    patch_size: int | None = typer.Option(
        None, "--patch-size", help="LR patch side in pixels." + _default("patch_size")
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Patches per step, over all processes." + _default("batch_size")
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimisation steps." + _default("steps")),
    stop_at: int | None = typer.Option(
        None,
        "--stop-at",
        help="Stop after step N of the --steps schedule (checkpointed and validated); --resume goes on from there.",
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate." + _default("lr")),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adam, adamw or sgd." + _default("optimizer")),
    schedule: str | None = typer.Option(
        None, "--schedule", help="cosine, step (halved at --milestones) or none." + _default("schedule")
    ),
    milestones: str | None = typer.Option(
        None,
        "--milestones",
        help="step schedule: fractions of the steps where the rate halves, e.g. 0.5,0.8,0.9,0.95."
        + _default("milestones"),
    ),
    warmup: int | None = typer.Option(None, "--warmup", help="Linear warm-up steps." + _default("warmup")),
    grad_clip: float | None = typer.Option(
        None,
        "--grad-clip",
        help="Gradient clipping: the global L2 norm, or theta in adjustable mode; 0 = off." + _default("grad_clip"),
    ),
    grad_clip_mode: str | None = typer.Option(
        None,
        "--grad-clip-mode",
        help="norm (global L2 norm <= --grad-clip) or adjustable (VDSR: each component within +-theta/lr)."
        + _default("grad_clip_mode"),
    ),
    deep_supervision: bool | None = typer.Option(
        None,
        "--deep-supervision/--no-deep-supervision",
        help="Supervise every intermediate output the paper does (DRCN, MemNet multi-supervised, CMSC: "
        "each prediction; LapSRN: each pyramid level) (default: on for those networks).",
    ),
    discriminator: str | None = typer.Option(
        None,
        "--discriminator",
        help="GAN mode: vgg (ESRGAN) or srgan (Ledig et al., 96 px HR patches)." + _default("discriminator"),
    ),
    ema: float | None = typer.Option(
        None, "--ema", help="EMA decay of the weights (validated and exported); 0 = off." + _default("ema")
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="auto, fp32, bf16 or fp16 (autocast)." + _default("precision")
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps." + _default("device")),
    workers: int | None = typer.Option(
        None, "--workers", help="DataLoader worker processes (default: 0 on <= 2 cores, else half the cores)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder: checkpoint, log, model.safetensors, model.json (default: runs/MODEL-xS)."
    ),
    resume: bool | None = typer.Option(None, "--resume", help="Continue the run in --out from its last checkpoint."),
    val_every: int | None = typer.Option(
        None, "--val-every", help="Validate every N steps; 0 = off." + _default("val_every")
    ),
    save_every: int | None = typer.Option(
        None, "--save-every", help="Checkpoint every N steps." + _default("save_every")
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed: data, init and losses reproducible (deterministic kernels) (default: random)."
    ),
    tensorboard: bool | None = typer.Option(
        None, "--tensorboard", help="Write TensorBoard logs to OUT/tensorboard (needs tensorboard)."
    ),
    init: str | None = typer.Option(
        None, "--init", help="Start from pretrained weights: a model name of the manifest, or a file/URL."
    ),
    vgg_weights: Path | None = typer.Option(
        None,
        "--vgg-weights",
        help="torchvision VGG weights (file or folder) for perceptual/texture "
        "(default: $UPSCALE_VGG_WEIGHTS, then the torch hub cache).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file with the same keys; flags given here override it."
    ),
) -> None:
    """Train a zoo network (same code as inference) and export OUT/model.safetensors + model.json.

    Each family trains by its paper's recipe (upscale_cli/train/recipes/) unless --config or a flag says otherwise; the run's header prints the recipe and where each value came from.
    """
    flags: dict[str, Any] = {
        "model": model,
        "scale": scale,
        "data": [str(d) for d in data] if data else None,
        "val_set": val_set,
        "data_dir": data_dir,
        "loss": loss,
        "patch_size": patch_size,
        "batch_size": batch_size,
        "steps": steps,
        "stop_at": stop_at,
        "lr": lr,
        "optimizer": optimizer,
        "schedule": schedule,
        "milestones": milestones,
        "warmup": warmup,
        "grad_clip": grad_clip,
        "grad_clip_mode": grad_clip_mode,
        "deep_supervision": deep_supervision,
        "discriminator": discriminator,
        "ema": ema,
        "precision": precision,
        "device": device,
        "workers": workers,
        "out": out,
        "resume": resume,
        "val_every": val_every,
        "save_every": save_every,
        "seed": seed,
        "tensorboard": tensorboard,
        "init": init,
        "vgg_weights": vgg_weights,
    }
    err = Console(stderr=True, soft_wrap=True)  # one line per message, also in logs
    with reported(interrupted_hint="continue with --resume (from the last checkpoint)"):
        cfg = build_config(flags, config)
        from ..train.loop import train as run_training

        result = run_training(cfg, console=err)
    if result.export is not None:
        best = result.best
        val = (
            f", {best['set']} PSNR {best['psnr']:.3f} dB / SSIM {best['ssim']:.4f} at step {best['step']}"
            if best
            else ""
        )
        err.print(
            f"done: {result.step} steps, {result.steps_per_second:.2f} steps/s ({result.precision}), "
            f"{100 * result.data_wait_share:.1f} % of step time waiting for data{val}; "
            f"weights: {result.out_dir / result.export['file']}",
            markup=False,  # the run folder's name may hold [...]
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``upscale`` command group."""
    app.command("train")(train)
