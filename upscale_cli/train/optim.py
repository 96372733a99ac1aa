"""Optimisers and learning-rate schedules of ``--optimizer`` / ``--schedule`` / ``--warmup``.

* ``adam``: Kingma & Ba 2015, betas (0.9, 0.999), eps 1e-8 (EDSR, Sec. 4.1);
* ``adamw``: Loshchilov & Hutter 2019, weight decay 1e-4;
* ``sgd``: momentum 0.9, weight decay 1e-4 (Kim et al., VDSR, Sec. 4.1).

Schedules multiply ``--lr`` by a factor of the step ``t`` (0-based):

* warm-up: ``(t + 1) / warmup`` for ``t < warmup`` (Goyal et al. 2017, linear warm-up);
* ``cosine``: ``(1 + cos(pi * u)) / 2`` with ``u`` the fraction of post-warm-up steps done
  (Loshchilov & Hutter, SGDR, ICLR 2017, Eq. 5 with one cycle and eta_min = 0);
* ``step``: halved at each of the ``milestones``, fractions of the post-warm-up steps (default
  20 %, 40 %, 60 % and 80 %; a recipe gives its paper's, e.g. SwinIR's 250k, 400k, 450k and 475k
  of 500k as 0.5, 0.8, 0.9, 0.95): the "halve at fixed updates" schedule of EDSR and ESRGAN;
* ``none``: constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import UsageError
from .config import DEFAULT_MILESTONES


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> Optimizer:
    """The optimiser ``name`` (``adam``, ``adamw``, ``sgd``) over the trainable ``params``."""
    trainable = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), weight_decay=1e-4)
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=1e-4)
    raise UsageError(f"--optimizer: {name!r} is not one of adam, adamw, sgd")


@dataclass
class LRSchedule:
    """The learning-rate factor at step ``t`` (see the module docstring)."""

    schedule: str
    steps: int
    warmup: int = 0
    milestones: tuple[float, ...] = DEFAULT_MILESTONES

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        u = min(1.0, (t - self.warmup) / span)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * u))
        if self.schedule == "step":
            return 0.5 ** sum(u >= m for m in self.milestones)
        return 1.0


def make_scheduler(
    optimizer: Optimizer, schedule: str, steps: int, warmup: int, milestones: tuple[float, ...] = DEFAULT_MILESTONES
) -> LambdaLR:
    """A :class:`LambdaLR` applying :class:`LRSchedule`; call ``step()`` once per training step.

    The factor is wrapped in a plain function, which :class:`LambdaLR` leaves out of its state:
    a resumed run follows the ``--steps``/``--warmup`` it is given, not those of the checkpoint.
    """
    if schedule not in ("cosine", "step", "none"):
        raise UsageError(f"--schedule: {schedule!r} is not one of cosine, step, none")
    factor = LRSchedule(schedule, steps, warmup, tuple(milestones))
    return LambdaLR(optimizer, lambda t: factor(t))
