"""Entry point of the ``upscale`` command.

``upscale INPUT... [options]`` upscales images; ``upscale models|download|convert|bench|compare|train|export ...``
run the subcommands.  The first word decides: a subcommand name selects the subcommand, any
other word is an input of the main command (write ``./bench`` for a file called ``bench``).
"""

from __future__ import annotations

import os
import sys

import typer

from .commands import SUBCOMMANDS
from .reporting import Terminated, install_signal_handlers, interrupt_exit_code

_GROUP_HELP = """Image super-resolution from the command line.

Upscale images with `upscale INPUT... [options]` (see `upscale --help`), or run a subcommand:
"""


def _group_app() -> typer.Typer:
    from .commands import bench, compare, convert, export, models, train

    app = typer.Typer(
        name="upscale",
        help=_GROUP_HELP,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )
    for module in (models, convert, bench, compare, train, export):
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Dispatch on the first word: a subcommand name, or inputs of the main command."""
    # Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads made
    # runs 3-4x slower in wall time (benchmarks/); the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]  # a bare `upscale` shows the help (inputs, options, subcommands)
    install_signal_handlers()
    try:
        if args[0] in SUBCOMMANDS:
            _group_app()(args, prog_name="upscale")
        else:
            from .commands.upscale import app as upscale_app

            upscale_app(args, prog_name="upscale")
    except KeyboardInterrupt as exc:  # during start-up (imports), before a command's own handler
        sys.stderr.write(("terminated" if isinstance(exc, Terminated) else "interrupted") + "\n")
        sys.exit(interrupt_exit_code(exc))
