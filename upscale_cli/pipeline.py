"""Pipelined runs over many jobs: decode job N+1 and encode job N-1 while job N computes.

Three stage callables make a job: ``decode(job)`` (read it; ``None`` means nothing is left to
do), ``compute(job, decoded)`` and ``encode(job, computed)``.  A :class:`Pipeline` calls them
for every job and hands each job's :class:`Outcome` to ``settle``, in the jobs' order, in the
caller's thread.  With ``overlap`` the decodes and encodes run on ONE background thread, in
submission order, while the caller's thread computes (PyTorch releases the GIL in its kernels,
Pillow in its codecs):

    caller:  ... | compute N                  | compute N+1               | ...
    I/O:     ... | encode N-1, then decode N+1 | encode N, then decode N+2 | ...

Bounds: the decode of N+2 is queued only once N's compute has ended, and an encode only once
the previous encode has ended, so besides the job being computed at most one decoded input and
one computed output wait in memory.  One I/O thread (rather than one per direction) keeps
decodes and encodes apart: Python's warning filters are process-global before 3.14, and a
reader that silences warnings while it decodes (``catch_warnings``) would swallow an encode's.

Semantics:

- An exception (any :class:`Exception`) of a stage belongs to its job: it ends that job (its
  outcome carries it, with the stage's name) and no other.
- Stopping: once ``settle`` returns False, no stage of a later job starts but a decode already
  under way (waited for, dropped), and a later job's computed output is dropped unwritten.
  So "stop at the first failure" writes nothing past the failing job.
- A job is settled when its encode ends: at the latest once the next job's compute ends, or
  earlier when that compute calls :meth:`Pipeline.poll` (from its progress callback, say).
- Interrupts (``KeyboardInterrupt`` and its subclasses, raised in the caller's thread): the
  stage under way on the I/O thread is FINISHED (an encode's output is then whole; an atomic
  writer publishes it or nothing) but not settled, the queued ones are dropped, and the
  interrupt goes on.  A thread cannot be stopped safely from outside (an exception injected
  into it can land inside ``threading`` internals, e.g. a codec's own worker pool, and hang
  the exit), so the last job's encode, which has nothing to overlap with, runs in the
  caller's thread, where an interrupt unwinds it as in a sequential run.
- Warnings shown while a stage runs (on either thread) are kept on the job's outcome instead of
  being shown; the filters are the caller's, set around :meth:`Pipeline.run`.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Outcome", "Pipeline"]

J = TypeVar("J")
D = TypeVar("D")
C = TypeVar("C")
R = TypeVar("R")

_END: Any = object()


@dataclass
class Outcome(Generic[J, R]):
    """What became of one job: ``result`` (encode's return value) or ``error`` and the ``stage``
    that raised it; neither when decode returned ``None``."""

    job: J
    result: R | None = None
    error: Exception | None = None
    stage: str | None = None  # decode | compute | encode, the stage that raised
    seconds: float = 0.0  # time spent in this job's stages
    warnings: list[warnings.WarningMessage] = field(default_factory=list)


class _Sink(threading.local):
    """Per thread: the outcome whose stage runs there (its warnings go to it)."""

    outcome: Outcome | None = None


_sink = _Sink()


def _router(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that keeps a warning on the outcome whose stage runs in the
    calling thread, and shows the others with ``fallback``."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        outcome = _sink.outcome
        if outcome is None:
            fallback(message, category, filename, lineno, file, line)
        else:
            outcome.warnings.append(warnings.WarningMessage(message, category, filename, lineno, file, line))

    return show


def _call(outcome: Outcome, stage: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """Run one stage of ``outcome.job`` in this thread: ``(True, value)``, or ``(False, None)``
    with the exception recorded on the outcome."""
    _sink.outcome = outcome
    start = time.perf_counter()
    try:
        return True, fn(*args)
    except Exception as exc:
        outcome.error, outcome.stage = exc, stage
        return False, None
    finally:
        outcome.seconds += time.perf_counter() - start
        _sink.outcome = None


class _Task:
    """One stage call queued for the I/O thread."""

    def __init__(self, outcome: Outcome, stage: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.outcome, self.stage, self.fn, self.args = outcome, stage, fn, args
        self.ok, self.value = False, None
        self.done = threading.Event()

    def run(self) -> None:
        self.ok, self.value = _call(self.outcome, self.stage, self.fn, *self.args)
        self.args = ()  # the input (a decoded or computed image) is not kept past its stage

    def wait(self) -> tuple[bool, Any]:
        self.done.wait()
        return self.ok, self.value


class _Worker:
    """The I/O thread: runs :class:`_Task` objects one at a time, in submission order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="pipeline-io")
        self._thread.start()

    def submit(self, outcome: Outcome, stage: str, fn: Callable[..., Any], *args: Any) -> _Task:
        task = _Task(outcome, stage, fn, args)
        self._queue.put(task)
        return task

    def _loop(self) -> None:
        try:
            while True:
                task = self._queue.get()
                with self._lock:
                    if task is None or self._closing:
                        return
                try:
                    task.run()
                finally:
                    task.done.set()
        except BaseException:  # nothing of a stage gets here (see _call); end without a trace
            return

    def close(self) -> None:
        """Let the task under way end, drop the queued ones, stop the thread."""
        with self._lock:
            self._closing = True
        self._queue.put(None)
        self._thread.join()


def _restore_filters(baseline: list[Any]) -> None:
    """Put back the warning filters the run started with.

    Two threads' ``catch_warnings`` blocks that end in the order they began (A enters, B
    enters, A exits, B exits) leave A's filters in place, e.g. a reader's "ignore everything";
    this undoes that at the moments no stage runs.  ``resetwarnings`` tells the C module that
    the filters changed."""
    if warnings.filters != baseline:
        warnings.resetwarnings()
        warnings.filters.extend(baseline)


class Pipeline(Generic[J, D, C, R]):
    """Runs the stages of many jobs and settles each job's :class:`Outcome` in the jobs' order.

    ``settle(outcome)`` is called in the caller's thread, once per job, in order; it returns
    False to stop (nothing is encoded after that).  With ``overlap`` (see the module's
    docstring) the compute of a job may call :meth:`poll`, e.g. from a progress callback, so
    that the previous job is settled as soon as its encode ends rather than after the compute.
    """

    def __init__(self, decode: Callable[[J], D | None], compute: Callable[[J, D], C], encode: Callable[[J, C], R],
                 settle: Callable[[Outcome[J, R]], bool]) -> None:
        self.decode, self.compute, self.encode, self.settle = decode, compute, encode, settle
        self._writing: _Task | None = None  # the encode under way, not yet settled
        self._stopped = False
        self._settle_error: BaseException | None = None

    def run(self, jobs: Iterable[J], *, overlap: bool = True) -> None:
        """Process ``jobs``; without ``overlap`` every stage runs in the caller's thread, one job
        after the other (no thread is started)."""
        self._stopped, self._writing, self._settle_error = False, None, None
        show = warnings.showwarning
        warnings.showwarning = _router(show)
        try:
            (self._overlapped if overlap else self._sequential)(jobs)
        finally:
            warnings.showwarning = show

    def poll(self) -> None:
        """Settle the job whose encode has ended, if it has not been; a no-op otherwise.  Only
        from the caller's thread."""
        task = self._writing
        if task is not None and task.done.is_set():
            self._writing = None
            ok, value = task.wait()
            task.outcome.result = value if ok else None
            self._settle_now(task.outcome)

    def _settle_now(self, outcome: Outcome[J, R]) -> None:
        """``settle`` outside any job's warnings; its exception waits for the stage to end."""
        if self._stopped:
            return
        running, _sink.outcome = _sink.outcome, None
        try:
            self._stopped = not self.settle(outcome)
        except Exception as exc:  # raised again by _overlapped, not taken for the stage's own
            self._stopped, self._settle_error = True, exc
        finally:
            _sink.outcome = running

    def _sequential(self, jobs: Iterable[J]) -> None:
        for job in jobs:
            outcome: Outcome[J, R] = Outcome(job)
            ok, value = _call(outcome, "decode", self.decode, job)
            if ok and value is not None:
                ok, value = _call(outcome, "compute", self.compute, job, value)
                if ok:
                    ok, value = _call(outcome, "encode", self.encode, job, value)
                outcome.result = value
            if not self.settle(outcome):
                return

    def _finish_writing(self) -> None:
        if self._writing is not None:
            self._writing.done.wait()
            self.poll()

    def _overlapped(self, jobs: Iterable[J]) -> None:
        worker = _Worker()
        try:
            self._loop(jobs, worker)
        finally:
            worker.close()
        if self._settle_error is not None:
            raise self._settle_error

    def _loop(self, jobs: Iterable[J], worker: _Worker) -> None:
        baseline = list(warnings.filters)
        it = iter(jobs)
        job = next(it, _END)
        reading = worker.submit(Outcome(job), "decode", self.decode, job) if job is not _END else None
        previous: tuple[Outcome[J, R], bool, Any] | None = None  # (outcome, computed?, output)
        while True:
            # Here the previous job's compute has ended (or it had none).
            self._finish_writing()
            if self._stopped:
                return
            ok, decoded = reading.wait() if reading is not None else (False, None)
            _restore_filters(baseline)  # the I/O thread is idle
            if previous is not None:
                outcome, computed, output = previous
                previous = None
                if computed and job is _END:  # the last encode: nothing is left to overlap it with
                    ok, value = _call(outcome, "encode", self.encode, outcome.job, output)
                    outcome.result = value if ok else None
                    self._settle_now(outcome)
                elif computed:
                    self._writing = worker.submit(outcome, "encode", self.encode, outcome.job, output)
                else:
                    self._settle_now(outcome)
                del output
                if self._stopped:
                    return
            if job is _END:
                return
            current = reading.outcome  # type: ignore[union-attr]
            nxt = next(it, _END)
            reading = worker.submit(Outcome(nxt), "decode", self.decode, nxt) if nxt is not _END else None
            computed, output = False, None
            if ok and decoded is not None:
                computed, output = _call(current, "compute", self.compute, job, decoded)
            del decoded
            if self._stopped:  # the job before failed while this one computed: drop it
                return
            previous = (current, computed, output)
            job = nxt
