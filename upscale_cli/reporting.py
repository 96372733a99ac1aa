"""One error reporter for every command: the one-line message, escaped, and the exit code.

Every subcommand runs its body inside :func:`reported`, so an :class:`UpscaleError` prints
``error: <message>`` (rich markup in the message is escaped, so ``[low, high]`` survives),
Ctrl-C prints ``interrupted`` and SIGTERM prints ``terminated``, each with its documented
exit code, and a traceback appears only with ``-v``.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED, UpscaleError


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every cleanup path of Ctrl-C runs for it too."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM (job schedulers, ``timeout``) unwinds like Ctrl-C; see :class:`Terminated`."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _on_sigterm)


def print_error(message: str, prefix: str = "error:") -> None:
    """Print one line to stderr, with the message's rich markup escaped."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[red]{prefix}[/] {escape(message)}", highlight=False)


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 (128 + SIGTERM) for a termination."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@contextmanager
def reported(verbose: bool = False, interrupted_hint: str = "") -> Iterator[None]:
    """Turn the command's exceptions into one line and ``typer.Exit(code)``."""
    import typer

    try:
        yield
    except UpscaleError as exc:
        if verbose:
            traceback.print_exc()
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        if verbose:
            traceback.print_exc()
        word = "terminated" if isinstance(exc, Terminated) else "interrupted"
        sys.stderr.write(word + (f": {interrupted_hint}" if interrupted_hint else "") + "\n")
        raise typer.Exit(interrupt_exit_code(exc)) from None
