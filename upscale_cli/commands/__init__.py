"""Subcommands of ``upscale``; each module exposes ``register(app)``."""

SUBCOMMANDS = ("models", "download", "convert", "bench", "compare", "train", "export")
