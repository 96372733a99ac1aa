"""What a training run tells the user: a rich progress line on stderr, ``OUT/log.jsonl``, and
TensorBoard scalars (``--tensorboard``).

The progress line shows the step, the loss terms, the learning rate, steps per second, the ETA,
the share of step time spent waiting for data, and the last validation PSNR.  When stderr is not
a terminal (logs, CI) the same facts are printed as a plain line every ``log_every`` steps.

``log.jsonl`` has one JSON object per step (``{"step", "lr", "loss", <terms>, "data_wait",
"seconds"}``) and one per validation (``{"step", "val_psnr", "val_ssim", ...}``); on resume, lines
past the checkpoint's step (written after it by the run that died) are dropped, so the file
always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ..errors import UsageError

LOG_NAME = "log.jsonl"


def require_tensorboard() -> None:
    """Raise a one-line :class:`UsageError` when TensorBoard is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


def truncate_log(path: Path, step: int) -> None:
    """Keep the lines of ``path`` whose ``step`` is at most ``step`` (resume after a crash)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line torn by the crash ends the readable part
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fmt_terms(terms: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in terms.items())


class Reporter:
    """Progress, log file and TensorBoard of the main process.

    Args:
        out_dir: the run's folder (``log.jsonl`` and ``tensorboard/`` go there).
        start, total: first step of this session and the run's last step.
        tensorboard: write TensorBoard event files.
        log_every: steps between plain log lines on a non-terminal stderr.
        console: where to draw (stderr by default).
    """

    def __init__(
        self,
        out_dir: Path,
        start: int,
        total: int,
        *,
        tensorboard: bool = False,
        log_every: int = 100,
        console: Console | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.start, self.total, self.log_every = start, total, log_every
        self.log = open(out_dir / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start + 1)
        self.last_val: float | None = None
        self.wait = self.busy = 0.0
        self.began = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, rate="", info="")
        self.progress.start()

    @property
    def data_wait_share(self) -> float:
        """Fraction of this session's step time spent waiting for the next batch."""
        return self.wait / self.busy if self.busy > 0 else 0.0

    def _write(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def step(
        self,
        step: int,
        terms: dict[str, float],
        lr: float,
        data_wait: float,
        seconds: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Record step ``step`` (1-based: the number of steps done) and refresh the display.

        ``terms`` are the generator's weighted loss terms (``loss`` is their sum); ``extra``
        values (the discriminator's loss) are logged beside them.
        """
        self.wait += data_wait
        self.busy += seconds
        loss = math.fsum(terms.values())
        terms = {**terms, **(extra or {})}
        record = {"step": step, "lr": lr, "loss": loss, **terms, "data_wait": data_wait, "seconds": seconds}
        self._write(record)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            for k, v in terms.items():
                self.writer.add_scalar(f"train/{k}", v, step)
        done = step - self.start
        rate = done / (time.perf_counter() - self.began)
        val = f"  val {self.last_val:.2f} dB" if self.last_val is not None else ""
        info = f"{_fmt_terms(terms)}  lr {lr:.2e}  data {100 * self.data_wait_share:.0f}%{val}"
        self.progress.update(self.task, completed=step, rate=f"{rate:.2f} it/s", info=info)
        if not self.console.is_terminal and (step % self.log_every == 0 or step == self.total):
            eta = (self.total - step) / rate if rate > 0 else math.inf
            line = f"step {step}/{self.total}  {info}  {rate:.2f} it/s  ETA {eta:.0f} s"
            self.console.print(line, markup=False, highlight=False)

    def validation(self, step: int, result: dict[str, Any], set_name: str, best: bool) -> None:
        """Record a validation result."""
        self.last_val = result["psnr"]
        per = {str(s): v for s, v in result["per_scale"].items()}
        self._write({"step": step, "val_psnr": result["psnr"], "val_ssim": result["ssim"], "val_per_scale": per})
        if self.writer is not None:
            self.writer.add_scalar(f"val/{set_name}_psnr", result["psnr"], step)
            self.writer.add_scalar(f"val/{set_name}_ssim", result["ssim"], step)
        mark = " (best)" if best else ""
        line = f"step {step}: {set_name} PSNR {result['psnr']:.3f} dB, SSIM {result['ssim']:.4f}{mark}"
        self.console.print(line, markup=False, highlight=False)

    def note(self, text: str) -> None:
        """Print one line as it is (paths and names may hold ``[...]``: no rich markup)."""
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()
        self.log.close()
        if self.writer is not None:
            self.writer.close()
