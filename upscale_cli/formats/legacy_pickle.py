"""Whole-model PyTorch pickles (``torch.save(model)``), read without running any of their code.

``torch.load(weights_only=True)`` refuses a file whose pickle names a class (a pickled
``nn.Module``); :mod:`.torchfile` then hands it here.  Both of torch's layouts are read:

* the zip format: ``<root>/data.pkl`` is the pickle, storage ``N`` is the record
  ``<root>/data/N``, ``<root>/byteorder`` says the byte order (little when absent);
* the old non-zip format (``_use_new_zipfile_serialization=False``, torch < 1.6): five things
  back to back -- the pickled magic number ``0x1950a86a20f9469cfc6c``, protocol version 1001,
  a ``sys_info`` dict, the main pickle, the pickled list of storage keys -- then, for each key
  in that order, an int64 element count and the storage's bytes (always little-endian).

The unpickler's :meth:`_Unpickler.find_class` never imports anything.  A global the pickle
names resolves to:

* one of this module's builders, for the tensor machinery -- ``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state``,
  ``torch._tensor._rebuild_from_type_v2`` (only around those), ``torch.nn.parameter.Parameter``,
  ``collections.OrderedDict``, ``builtins.set`` / ``frozenset``, ``torch.Size`` and
  ``copyreg._reconstructor`` (protocol 0/1 object construction); a builder records what it
  is given (a tensor is a :class:`_TensorRef`: storage, offset, size, stride) and runs nothing;
* a storage-type marker, for ``torch.<Type>Storage`` (``torch.cuda`` too; the location is
  ignored, every tensor lands on the CPU) -- only usable inside a storage persistent id;
* for every other name (``vdsr.Net``, ``torch.nn.modules.conv.Conv2d``, ``os.system`` ...) an
  inert placeholder class that records its name.  Constructing it as pickle constructs objects
  (``NEWOBJ``, ``copyreg._reconstructor``, ``INST`` without arguments) makes an inert
  :class:`_Placeholder` instance; ``BUILD`` stores the state on it, ``SETITEMS`` its items.

Calling a placeholder -- ``REDUCE`` (or ``INST``/``OBJ`` with arguments) on a name that is
not a builder, which is how a pickle runs a function (``os.system``, ``builtins.exec``,
``subprocess.Popen`` ...) -- is refused with a :class:`FormatError` naming it.  The one
exception is :data:`_INERT_CALLS`, legacy torch helpers whose result no state dict uses; the
call makes an inert placeholder instance.

The state dict is then built from the unpickled tree as ``module.state_dict()`` names it:
a placeholder whose state has ``_modules`` is a module, its ``_parameters`` and ``_buffers``
(skipping ``None`` and the names in ``_non_persistent_buffers_set``) then its ``_modules``,
recursively with dotted names.  A module inside a dict (``{"epoch": 50, "model": net}``)
becomes its flat state dict in place, and :func:`.torchfile.unwrap_state_dict` (with
``key``) picks the state dict.  ``facts["classes"]``: the sorted names stood in by placeholders.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from torch import Tensor

from . import Checkpoint, Format, FormatError
from .torchfile import unwrap_state_dict

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_LEGACY_HEAD = pickle.dumps(_MAGIC, protocol=2)[:-1]  # the file starts with this pickle, less its STOP
_ZIP = b"PK\x03\x04"
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
_OS_MODULES = {"posix": "os", "nt": "os"}
"""The modules behind ``os``: a pickle names ``os.system`` by the one it was made with."""
_INERT_CALLS = frozenset({"torch.nn.backends.thnn._get_thnn_function_backend"})
"""Names a real pickle calls whose result is unused: torch < 0.4 stored ``module._backend``."""


def _refuse(name: str) -> FormatError:
    return FormatError(f"refused: the pickle calls {name}; pickled code is never executed")


# --- what the unpickler builds ----------------------------------------------------------------


class _PlaceholderType(type):
    """The metaclass of placeholders: calling one (pickle ``REDUCE``) is refused."""

    qualname: str

    def __call__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        if cls.qualname not in _INERT_CALLS:
            raise _refuse(cls.qualname)
        return cls.__new__(cls, *args)


class _Placeholder(metaclass=_PlaceholderType):
    """An inert instance of a class the file names: it records arguments, state and items."""

    __slots__ = ("args", "state", "items")
    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value


def _placeholder(module: str, name: str) -> _PlaceholderType:
    qualname = f"{module}.{name}"
    return _PlaceholderType(name, (_Placeholder,), {"__slots__": (), "__module__": module, "qualname": qualname})


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` and the like resolve to: only a dtype."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    """Elements ``offset : offset + numel`` of the storage ``key``, read as ``dtype``."""

    key: str
    dtype: torch.dtype
    offset: int
    numel: int


@dataclass
class _TensorRef:
    """A tensor as the pickle describes it; its bytes are read after unpickling."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        """``BUILD`` of a torch < 0.4 Variable state (requires_grad, volatile, hooks): no tensor data."""


class _Dict(dict):
    """``collections.OrderedDict``: its attributes (``state_dict()._metadata``) hold no tensors."""

    def __setstate__(self, state: Any) -> None:
        pass


def _ints(values: Any) -> tuple[int, ...]:
    if not isinstance(values, tuple | list) or not all(isinstance(v, int) for v in values):
        raise FormatError(f"a tensor size or stride that is not a tuple of ints ({type(values).__name__})")
    return tuple(values)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2`` (requires_grad, hooks, metadata dropped)."""
    if not isinstance(storage, _StorageRef) or not isinstance(storage_offset, int):
        raise FormatError("a tensor whose storage is not a torch storage")
    return _TensorRef(storage, storage_offset, _ints(size), _ints(stride))


def _rebuild_parameter(data: Any, *_: Any) -> _TensorRef:
    """``Parameter(data, requires_grad)``, ``_rebuild_parameter`` (``_with_state``): the data."""
    if not isinstance(data, _TensorRef):
        raise FormatError("a Parameter that holds no tensor")
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> _TensorRef:
    """``torch._tensor._rebuild_from_type_v2``: a tensor with attributes; only the tensor is kept."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise _refuse(getattr(func, "qualname", "a tensor builder that is not torch's"))
    return func(*args)


def _ordered_dict(items: Any = ()) -> _Dict:
    return _Dict(items)


def _set(items: Any = ()) -> set[Any]:
    return set(items)


def _size(dims: Any = ()) -> tuple[int, ...]:
    return _ints(tuple(dims))


def _reconstructor(cls: Any, base: Any, state: Any = None) -> _Placeholder:
    """``copyreg._reconstructor(cls, base, state)``, how protocols 0 and 1 construct objects."""
    if not isinstance(cls, _PlaceholderType) or not isinstance(base, _PlaceholderType):
        raise FormatError("copyreg._reconstructor on something other than a class the file names")
    return cls.__new__(cls, state)


_BUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.nn.parameter.Parameter": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _set,
    "torch.Size": _size,
    "copyreg._reconstructor": _reconstructor,
}


class _Unpickler(pickle.Unpickler):
    """Resolves globals to builders, storage markers or placeholders; imports nothing."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 strings: any bytes decode
        self.placeholders: dict[str, _PlaceholderType] = {}
        self.storages: dict[str, torch.dtype] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 writes Python 2 names (__builtin__.set, commands.Popen): name what Python 3 would load
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        )
        module = _OS_MODULES.get(module, module)  # os.system pickles as posix.system: name it as written
        qualname = f"{module}.{name}"
        if qualname in _BUILDERS:
            return _BUILDERS[qualname]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if qualname not in self.placeholders:
            self.placeholders[qualname] = _placeholder(module, name)
        return self.placeholders[qualname]

    def persistent_load(self, pid: Any) -> Any:
        """``("module", cls, file, source)`` (old format) or ``("storage", type, key, location, numel[, view])``."""
        if not isinstance(pid, tuple) or len(pid) < 2:
            raise FormatError(f"an unknown persistent id in the pickle ({str(pid)[:60]})")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and isinstance(pid[1], _PlaceholderType):
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
            raise FormatError(f"an unknown persistent id in the pickle ({str(pid)[:60]})")
        dtype, key, numel = pid[1].dtype, str(pid[2]), pid[4]
        if self.storages.setdefault(key, dtype) != dtype or not isinstance(numel, int):
            raise FormatError(f"storage {key} is described inconsistently")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(key, dtype, 0, numel)
        _, offset, size = view  # (view key, element offset, element count) into the root storage
        return _StorageRef(key, dtype, int(offset), int(size))


# --- the two layouts --------------------------------------------------------------------------


def _zip_pickle(archive: zipfile.ZipFile) -> str | None:
    return next((n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)


def _load_zip(path: Path) -> tuple[Any, _Unpickler, dict[str, bytes], bool]:
    with zipfile.ZipFile(path) as archive:
        pkl = _zip_pickle(archive)
        if pkl is None:
            raise FormatError("a zip file without a torch data.pkl")
        root = pkl.removesuffix("data.pkl")
        names = set(archive.namelist())
        order = archive.read(f"{root}byteorder").decode() if f"{root}byteorder" in names else "little"
        unpickler = _Unpickler(io.BytesIO(archive.read(pkl)))
        tree = unpickler.load()
        data = {key: archive.read(f"{root}data/{key}") for key in unpickler.storages}
    return tree, unpickler, data, order != sys.byteorder


def _load_legacy(path: Path) -> tuple[Any, _Unpickler, dict[str, bytes], bool]:
    with open(path, "rb") as f:
        if _Unpickler(f).load() != _MAGIC:
            raise FormatError("not a torch file (bad magic number)")
        if (version := _Unpickler(f).load()) != _PROTOCOL:
            raise FormatError(f"unsupported torch file protocol version {version}")
        _Unpickler(f).load()  # sys_info: the saving machine's type sizes; the data is little-endian
        unpickler = _Unpickler(f)
        tree = unpickler.load()
        keys = _Unpickler(f).load()
        data: dict[str, bytes] = {}
        for key in map(str, keys):
            if key not in unpickler.storages:
                raise FormatError(f"storage {key} is listed but never used")
            numel = int.from_bytes(f.read(8), "little", signed=True)
            nbytes = numel * _itemsize(unpickler.storages[key])
            data[key] = f.read(nbytes)
            if numel < 0 or len(data[key]) != nbytes:
                raise FormatError(f"storage {key} is truncated")
    return tree, unpickler, data, sys.byteorder != "little"


def _unreadable(err: Exception) -> str:
    """The cause, in words, of a pickle that :mod:`pickle` itself cannot read."""
    found = re.fullmatch(r"unsupported pickle protocol: (\d+)", str(err))
    if found is not None:
        return f"unsupported pickle protocol {found.group(1)} (protocols 0 to {pickle.HIGHEST_PROTOCOL} are read)"
    return f"a damaged or truncated pickle ({str(err) or type(err).__name__})"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --- tensors and the state dict ---------------------------------------------------------------


def _tensor_maker(data: dict[str, bytes], swap: bool) -> Callable[[_TensorRef], Tensor]:
    """``make(ref)``: the tensor, a view into its storage's bytes (tensors sharing a storage share them)."""
    flats: dict[str, Tensor] = {}

    def flat(key: str, dtype: torch.dtype) -> Tensor:
        if key not in flats:
            raw, size = data[key], _itemsize(dtype)
            if len(raw) % size:
                raise FormatError(f"storage {key} is not a whole number of {dtype} elements")
            b = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            if swap and size > 1:
                b = b.view(-1, size).flip(1).reshape(-1)
            flats[key] = b.view(dtype)
        return flats[key]

    def make(ref: _TensorRef) -> Tensor:
        s = ref.storage
        base = flat(s.key, s.dtype)
        if len(ref.size) != len(ref.stride) or min((*ref.size, *ref.stride, ref.offset, s.offset), default=0) < 0:
            raise FormatError(f"a tensor of storage {s.key} with a bad size or stride")
        extent = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride, strict=True)) + 1
        if 0 not in ref.size and (extent > s.numel or s.offset + s.numel > base.numel()):
            raise FormatError(f"a tensor that overruns storage {s.key}")
        return base.as_strided(ref.size, ref.stride, s.offset + ref.offset)

    return make


@contextmanager
def _entered(seen: set[int], obj: Any) -> Iterator[None]:
    """Guard against a pickle whose containers hold themselves (torch would recurse forever)."""
    if id(obj) in seen:
        raise FormatError("the pickle holds a container that contains itself")
    seen.add(id(obj))
    try:
        yield
    finally:
        seen.discard(id(obj))


def _is_module(obj: Any) -> bool:
    return isinstance(obj, _Placeholder) and isinstance(obj.state, dict) and "_modules" in obj.state


def _module_state(module: _Placeholder, make: Callable[[_TensorRef], Tensor], seen: set[int]) -> dict[str, Tensor]:
    """``module.state_dict()``: parameters, persistent buffers, then submodules with dotted names."""
    out: dict[str, Tensor] = {}

    def walk(m: _Placeholder, prefix: str) -> None:
        with _entered(seen, m):
            state = m.state
            skip = state.get("_non_persistent_buffers_set")
            skip = skip if isinstance(skip, set) else set()
            for group in ("_parameters", "_buffers"):
                entries = state.get(group)
                for name, value in entries.items() if isinstance(entries, dict) else ():
                    if isinstance(value, _TensorRef) and not (group == "_buffers" and name in skip):
                        out[f"{prefix}{name}"] = make(value)
            children = state["_modules"]
            for name, child in children.items() if isinstance(children, dict) else ():
                if _is_module(child):
                    walk(child, f"{prefix}{name}.")

    walk(module, "")
    return out


def _plain(obj: Any, make: Callable[[_TensorRef], Tensor], seen: set[int]) -> Any:
    """The tree with tensors made, modules turned into their state dicts and dicts made plain."""
    if isinstance(obj, _TensorRef):
        return make(obj)
    if _is_module(obj):
        return _module_state(obj, make, seen)
    items = obj.items if isinstance(obj, _Placeholder) and obj.items else obj
    if not isinstance(items, dict):
        return obj
    with _entered(seen, obj):
        return {k: _plain(v, make, seen) for k, v in items.items()}


def _read(path: Path, key: str | None) -> Checkpoint:
    loader = _load_zip if zipfile.is_zipfile(path) else _load_legacy
    try:
        tree, unpickler, data, swap = loader(path)
    except (pickle.UnpicklingError, EOFError, ValueError) as err:  # what pickle raises on a stream it cannot read
        raise FormatError(_unreadable(err)) from None
    make = _tensor_maker(data, swap)
    try:
        sd = unwrap_state_dict(_plain(tree, make, set()), key)[0]
    except (TypeError, KeyError) as err:
        raise FormatError(str(err.args[0])) from None
    return Checkpoint(sd, FORMAT.name, facts={"classes": sorted(unpickler.placeholders)})


def _sniff(path: Path, head: bytes) -> bool:
    if head.startswith(_LEGACY_HEAD):
        return True
    if not head.startswith(_ZIP):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return _zip_pickle(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


FORMAT = Format(
    name="torch-pickle",
    description="a PyTorch file of pickled modules (torch.save(model)), read without running its code",
    sniff=_sniff,
    read=_read,
)
