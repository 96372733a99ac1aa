"""Mixed precision for training (Micikevicius et al., "Mixed Precision Training", ICLR 2018).

Weights, optimiser state and losses stay fp32; the forward pass runs under
:func:`torch.autocast` in bf16 or fp16.  fp16 gradients are scaled (:class:`torch.amp.GradScaler`,
the paper's loss scaling) so that small ones do not flush to zero; bf16 has fp32's exponent
range and needs no scaling.

``auto``: CUDA -> bf16 where the GPU has it, else fp16 (both only for families marked safe in
that dtype, else fp32); CPU -> bf16 only where the CPU computes bf16 natively (AMX or
AVX512_BF16: without them PyTorch emulates bf16 and training is about 10x slower than fp32),
else fp32; MPS -> fp32.  An explicit bf16/fp16 is honoured even for a family not marked safe in
it (the trainer warns): the weights stay fp32, but such a net's activations (e.g. 0..255 ones)
may lose precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..devices import DTYPES, cpu_has_native_bf16
from ..errors import UsageError
from ..models import Arch


@dataclass(frozen=True)
class Precision:
    """The resolved ``--precision`` on a device."""

    name: str
    device: torch.device
    unsafe: bool = False
    """Asked for explicitly although the family is not marked safe in that dtype."""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for fp32."""
        return DTYPES.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to :attr:`dtype` on the device (nothing for fp32)."""
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (a no-op otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)


def resolve(spec: str, device: torch.device, arch: Arch) -> Precision:
    """``--precision`` (auto, fp32, bf16, fp16) on ``device`` for a network of family ``arch``."""
    name = spec.lower()
    if name == "auto":
        if device.type == "cuda":
            if arch.bf16 and torch.cuda.is_bf16_supported():
                name = "bf16"
            else:
                name = "fp16" if arch.fp16 else "fp32"
        elif device.type == "cpu":
            name = "bf16" if arch.bf16 and cpu_has_native_bf16() else "fp32"
        else:
            name = "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--precision: {spec!r} is not one of auto, fp32, bf16, fp16")
    unsafe = (name == "bf16" and not arch.bf16) or (name == "fp16" and not arch.fp16)
    return Precision(name, device, unsafe)
