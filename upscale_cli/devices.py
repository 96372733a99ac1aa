"""Where and in which precision a network runs, and how much memory there is.

Device resolution (``auto``: CUDA, then MPS, then CPU), the ``--precision auto`` rule (CUDA:
fp16 where the model is fp16-safe, else bf16, else fp32; CPU: bf16 only where the processor
runs it natively, AMX or AVX512-BF16, and the model is bf16-safe), out-of-memory detection
and free memory (CUDA free memory, or the CPU's MemAvailable).  Shared by the inference engine
and the trainer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .errors import UsageError
from .models.loaded import LoadedModel

PRECISIONS = ("fp32", "fp16", "bf16")
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


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Does this CPU compute bf16 natively (AMX or AVX512_BF16, and oneDNN uses it)?

    Without it PyTorch emulates bf16 and a network runs about 10x slower than in fp32.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    if not flags & {"amx_bf16", "avx512_bf16"}:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, model: LoadedModel) -> tuple[str, bool]:
    """The precision (``fp32``/``fp16``/``bf16``) and whether to run channels-last.

    ``auto``: CUDA -> fp16 if the model is fp16-safe, else bf16 if bf16-safe (and the GPU has
    it), else fp32; CPU -> bf16 where the CPU runs it natively and the model is bf16-safe, else
    fp32; MPS -> fp16 if fp16-safe, else fp32.

    Channels-last (NHWC): always on the CPU, where oneDNN's convolutions are faster in it in
    fp32 too (measured on every family of the zoo at x4, AVX2 EPYC, 1 thread: 0.49-0.99x the
    time of NCHW, median 0.89x); on CUDA in fp16/bf16 (the layout tensor cores read); not on MPS.

    Raises:
        UsageError: unknown precision, or one the model is not safe in.
    """
    name = precision.strip().lower()
    if name == "auto":
        if device.type == "cuda":
            if model.supports_fp16:
                name = "fp16"
            elif model.supports_bf16 and torch.cuda.is_bf16_supported():
                name = "bf16"
            else:
                name = "fp32"
        elif device.type == "mps":
            name = "fp16" if model.supports_fp16 else "fp32"
        else:
            name = "bf16" if model.supports_bf16 and cpu_has_native_bf16() else "fp32"
    elif name not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    elif name == "fp16" and not model.supports_fp16:
        raise UsageError(f"model {model.name!r} is not numerically safe in fp16; use --precision fp32 or bf16")
    elif name == "bf16" and not model.supports_bf16:
        raise UsageError(f"model {model.name!r} is not numerically safe in bf16; use --precision fp32 or fp16")
    return name, device.type == "cpu" or (device.type == "cuda" and name != "fp32")


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


