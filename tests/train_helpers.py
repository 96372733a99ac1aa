"""Helpers shared by the trainer's test files: a Typer app holding `train`, and its flags."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from upscale_cli.train.config import build_config
from upscale_cli.train.loop import TrainResult, train


def cli_app() -> typer.Typer:
    """A command group with only `train` registered (as the real `upscale` group does)."""
    from upscale_cli.commands.train import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _group() -> None:
        """Test group."""

    return app


def cli_flags(out: Path, data: list[str], **options: str) -> list[str]:
    """`upscale train` flags for a tiny, deterministic ESPCN x2 run; ``options`` override."""
    flags = {
        "--model": "espcn",
        "--scale": "2",
        "--patch-size": "16",
        "--batch-size": "4",
        "--steps": "4",
        "--seed": "0",
        "--val-every": "0",
        "--ema": "0",
        "--workers": "0",
        "--precision": "fp32",
        "--device": "cpu",  # the same run (and gloo for DDP) on a machine with a GPU too
        "--out": str(out),
        **options,
    }
    args = [word for pair in flags.items() for word in pair]
    for d in data:
        args += ["--data", d]
    return args


def run_train(out: Path, **options: Any) -> TrainResult:
    """Train in this process with small defaults (ESPCN x2, 4 patches of 16 px, fp32)."""
    flags = {
        "model": "espcn",
        "scale": "2",
        "patch_size": 16,
        "batch_size": 4,
        "steps": 4,
        "seed": 0,
        "val_every": 0,
        "ema": 0.0,
        "workers": 0,
        "precision": "fp32",
        "out": str(out),
        **options,
    }
    return train(build_config(flags), console=Console(file=io.StringIO()))
