"""Deep supervision: training every output a paper supervises, not only the final one.

Some papers supervise intermediate outputs: DRCN every recursion (Kim et al. 2016, recursive
supervision), multi-supervised MemNet every memory block (Tai et al. 2017), CMSC every cascaded
stage (Hu et al. 2018), LapSRN / MS-LapSRN every pyramid level, each against the HR image
downscaled to its size (Lai et al. 2017/2018).  The trainer stays generic: a network opts in
with two methods, the :class:`DeeplySupervised` hook, and the trainer uses them when present
and ``--deep-supervision`` is not turned off (the default, ``auto``, turns it on for every
network that has the hook: each of those papers trains that way).

* ``training_outputs(x) -> list[Tensor]``: every supervised output for the input ``x``, in the
  family's convention (Y for the Y-only families), the final output (``forward(x)``) last;
* ``supervision_loss(outputs, hr, criterion, progress) -> Tensor``: the paper's combination of
  ``criterion(output, target)`` over the outputs, with ``hr`` the ground truth and ``progress``
  the fraction of training done (DRCN's weights change as training goes on).  ``criterion``
  returns a *vector* (one entry per ``--loss`` term) and the combination must be linear and
  element-wise, so that every term of the objective is logged on its own.

The trainer turns the outputs into RGB 0..1 (:func:`~upscale_cli.models.loaded.in_convention`, as
:class:`~upscale_cli.models.LoadedModel` does for the final output) so that every ``--loss``
term applies to each of them; the criterion is the whole objective
(:class:`~upscale_cli.train.losses.Objective`) on one output and its target.  The
adversarial term is left out of deep supervision (the discriminator judges the final output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models.loaded import in_convention
from .losses import Objective

Criterion = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class DeeplySupervised(Protocol):
    """The hook a network implements to be trained on several outputs (see the module docstring)."""

    def training_outputs(self, x: Tensor) -> list[Tensor]: ...

    def supervision_loss(
        self, outputs: Sequence[Tensor], hr: Tensor, criterion: Criterion, progress: float
    ) -> Tensor: ...


def use_deep_supervision(setting: bool | None, net: nn.Module, name: str, gan: bool) -> bool:
    """Resolve ``--deep-supervision`` (``None`` = auto: on when ``net`` has the hook).

    Raises:
        UsageError: asked for on a network without the hook, or together with an adversarial
            loss (the discriminators judge one output size).
    """
    available = isinstance(net, DeeplySupervised)
    if setting and not available:
        raise UsageError(
            f"--deep-supervision: {name} is trained on its final output only (it has no intermediate outputs)"
        )
    on = available if setting is None else setting
    if on and gan:
        raise UsageError(
            f"--loss adversarial trains the final output only, and {name} is deeply supervised "
            "by default: add --no-deep-supervision"
        )
    return on


class TrainingOutputs(nn.Module):
    """``forward(x) = net.training_outputs(x)``: the module the trainer runs (and DDP wraps, so
    that gradients are averaged after the one forward pass of each step)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.net.training_outputs(x)  # type: ignore[operator]


def supervised_terms(
    forward: Callable[[Tensor], list[Tensor]],
    hook: DeeplySupervised,
    objective: Objective,
    lr: Tensor,
    hr: Tensor,
    convention: str,
    progress: float,
) -> dict[str, Tensor]:
    """The weighted ``--loss`` terms of one deeply-supervised step.

    Args:
        forward: runs the network's :meth:`~DeeplySupervised.training_outputs` (the
            :class:`TrainingOutputs` module, possibly DDP-wrapped).
        hook: the network, whose ``supervision_loss`` combines the outputs' losses.
        objective: the ``--loss`` terms (no adversarial term).
        lr, hr: the batch, RGB 0..1.
        convention: the family's convention.
        progress: fraction of training done, in [0, 1].
    """
    outputs = in_convention(forward, lr, convention)

    def criterion(output: Tensor, target: Tensor) -> Tensor:
        return torch.stack(list(objective(output, target, lr).values()))

    combined = hook.supervision_loss(outputs, hr, criterion, progress)
    return dict(zip((t.key for t in objective.terms), combined.unbind()))
