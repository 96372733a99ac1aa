"""Helpers shared by the trainer's test files: a Typer app holding `train`, and its flags."""

from __future__ import annotations

from pathlib import Path

import typer


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
        "--out": str(out),
        **options,
    }
    args = [word for pair in flags.items() for word in pair]
    for d in data:
        args += ["--data", d]
    return args
