"""Where and in which precision a network runs, and how much memory there is.

Device resolution (``auto``: CUDA, then MPS, then CPU), the ``--precision`` rule (measured
costs first, see :func:`resolve_precision`), native-bf16 detection, out-of-memory detection and
free memory (CUDA free memory, or the CPU's MemAvailable).  Shared by the inference engine and
the trainer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError
from .models.loaded import LoadedModel

PRECISIONS = ("fp32", "fp16", "bf16")
MAX_COST_DB = 0.02
"""Largest measured Set5 PSNR loss (dB, against fp32) at which ``--precision auto`` takes a
reduced precision (:attr:`~upscale_cli.models.LoadedModel.precision_cost`)."""
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
"""CPU flags of native bf16 arithmetic: x86 AMX or AVX512-BF16, Arm's BF16 extension."""
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""The torch dtype of each reduced precision (autocast)."""
CPU_BUDGET_CAP = 1 << 30
"""Most bytes of activations ``tile="auto"`` plans for on CPU.  A CPU gains no convolution speed
from tiles beyond ~128-192 px (EDSR-baseline: 0.0124-0.0133 input MP per CPU-second from 128 to
384 px tiles), only resident memory.  1 GiB gives EDSR-baseline 268 px tiles: a 1024x1024 x4
run costs the same CPU time tiled as whole (within +-4 %), and a 3000x3000 x4 run peaks at
2.83 GB resident, 1.73 GB of which is the output (``benchmarks/engine_throughput.py``)."""
_OOM_MARKERS = ("out of memory", "can't allocate memory")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        UsageError: the device is unknown or not available here (the message names it).
    """
    name = str(spec).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} is not available: PyTorch sees no CUDA GPU")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) present")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise UsageError(f"device {spec!r} is not available: PyTorch has no MPS backend here")
        return device
    raise UsageError(f"device {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _cpuinfo_flags(cpuinfo: Path) -> set[str] | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of ``cpuinfo``; None when unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def _torch_cpu_flags() -> set[str] | None:
    """The flags PyTorch's own CPU probe (cpuinfo) reports true; None when it reports none."""
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None
    return {k for k, v in caps.items() if v is True} or None


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Does this CPU compute bf16 natively (AMX, AVX512-BF16 or Arm BF16), and does oneDNN use it?

    The flags come from ``/proc/cpuinfo`` (Linux), else from PyTorch's CPU probe (macOS,
    Windows); oneDNN's own answer (``mkldnn._is_mkldnn_bf16_supported``) must agree, and is all
    there is when neither source has flags.  Without native bf16 PyTorch emulates it and a
    network runs several times slower than in fp32.
    """
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = _cpuinfo_flags(cpuinfo)
    if flags is None:
        flags = _torch_cpu_flags()
    return onednn and (flags is None or bool(flags & BF16_FLAGS))


@dataclass(frozen=True)
class Precision:
    """What :func:`resolve_precision` chose.

    Attributes:
        name: ``fp32``, ``fp16`` or ``bf16``.
        channels_last: run the network in NHWC.
        note: one line for the user when an explicit choice runs against the measurements or
            the hardware (it is honoured all the same), else None.
    """

    name: str
    channels_last: bool
    note: str | None = None


def reduced_ok(model: LoadedModel, name: str) -> bool:
    """Is ``name`` (``fp16``/``bf16``) good enough for ``model``: its measured Set5 cost is at most
    :data:`MAX_COST_DB`; unmeasured, the family's flag decides."""
    cost = model.precision_cost.get(name)
    if cost is None:
        return model.supports_fp16 if name == "fp16" else model.supports_bf16
    return cost <= MAX_COST_DB


def _auto(device: torch.device, model: LoadedModel) -> str:
    if device.type == "cuda":
        if reduced_ok(model, "fp16"):
            return "fp16"
        return "bf16" if reduced_ok(model, "bf16") and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "mps":
        return "fp16" if reduced_ok(model, "fp16") else "fp32"
    return "bf16" if reduced_ok(model, "bf16") and cpu_has_native_bf16() else "fp32"


def _explicit_note(name: str, device: torch.device, model: LoadedModel) -> str | None:
    """The warning for an explicit reduced precision: unmeasured, measured too costly, or
    emulated by this CPU."""
    cost = model.precision_cost.get(name)
    if cost is None:
        note = f"model {model.name!r} has no measured Set5 cost in {name}; running in {name} as asked"
    elif cost > MAX_COST_DB:
        note = f"model {model.name!r} loses {cost:.3f} dB on Set5 in {name} (measured); running in {name} as asked"
    else:
        note = None
    if device.type == "cpu" and (name == "fp16" or not cpu_has_native_bf16()):
        slow = f"this CPU has no native {name}: it is emulated and usually slower than fp32"
        note = slow if note is None else f"{note} ({slow})"
    return note


def resolve_precision(precision: str, device: torch.device, model: LoadedModel) -> Precision:
    """The precision to run ``model`` in on ``device``, and whether to run channels-last.

    ``auto`` takes, for every model whose measured Set5 cost in that precision is at most
    :data:`MAX_COST_DB` (:func:`reduced_ok`; the family's flag when unmeasured): on CUDA fp16,
    else bf16 where the GPU has it; on MPS fp16; on the CPU bf16 where it runs natively
    (:func:`cpu_has_native_bf16`); else fp32.  An explicit ``fp16``/``bf16`` is always honoured,
    with a :attr:`Precision.note` when it is unmeasured, measured too costly, or emulated.

    Channels-last (NHWC): always on the CPU, where oneDNN's convolutions are faster in it in
    fp32 too (measured on every family of the zoo at x4, AVX2 EPYC, 1 thread: 0.49-0.99x the
    time of NCHW, median 0.89x); on CUDA in fp16/bf16 (the layout tensor cores read); not on MPS.

    Raises:
        UsageError: an unknown precision.
    """
    name = precision.strip().lower()
    note = None
    if name == "auto":
        name = _auto(device, model)
    elif name not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    elif name != "fp32":
        note = _explicit_note(name, device, model)
    return Precision(name, device.type == "cpu" or (device.type == "cuda" and name != "fp32"), note)


# --- memory -----------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """Is ``exc`` an allocation failure (CUDA, MPS or CPU)?"""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)


def available_ram(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes of RAM available to a new allocation (``MemAvailable``; sysconf as a fallback)."""
    try:
        match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", meminfo.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def free_memory(device: torch.device, reserved_elsewhere: int = 0) -> int:
    """Bytes the next activations may use on ``device``.

    CUDA: 90 % of the free device memory plus what PyTorch's caching allocator holds unused
    (the rest is left to fragmentation and cuDNN workspaces).  MPS: the recommended working set
    less what the driver holds.  CPU: half the available RAM less ``reserved_elsewhere`` (the
    output buffer), capped by :data:`CPU_BUDGET_CAP`.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(0.9 * (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return min(CPU_BUDGET_CAP, max(0, available_ram() - reserved_elsewhere) // 2)


