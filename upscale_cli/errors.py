"""Exceptions that carry a one-line message and the process exit code they map to.

Exit codes (documented in the README):

* 0 - every input done (or skipped on purpose)
* 1 - some inputs failed (:class:`InputError`), or a run aborted for a runtime cause
* 2 - usage error: bad option, unknown model, unsupported scale (:class:`UsageError`)
* 3 - weights unavailable: offline with nothing cached, every source failed,
  checksum mismatch, unreadable checkpoint (:class:`WeightsError`)
* 130 - interrupted (Ctrl-C)
* 143 - terminated (SIGTERM)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UpscaleError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code: int = EXIT_FAILED


class UsageError(UpscaleError):
    """The command line or API call asks for something that cannot be done."""

    exit_code = EXIT_USAGE


class WeightsError(UpscaleError):
    """Weights could not be found, fetched, verified or loaded."""

    exit_code = EXIT_WEIGHTS


class InputError(UpscaleError):
    """One input image cannot be processed (corrupt, too large, unsupported mode...)."""

    exit_code = EXIT_FAILED
