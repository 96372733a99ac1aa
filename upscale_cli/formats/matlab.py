"""MATLAB v5/v7 ``.mat`` files (MAT-File Format, The MathWorks, 2011), read without executing
anything: the 128-byte header, then tagged data elements (``miMATRIX``, or ``miCOMPRESSED``
holding one zlib-compressed ``miMATRIX``).  Numeric (double, single, int/uint 8-64), logical
and char arrays, cell arrays, structs and struct arrays are understood; sparse arrays,
function handles and opaque objects are refused, and so are v7.3 files (HDF5 containers).

The nested MATLAB value becomes a flat ``{name: tensor}``:

* **Plain struct/cell trees**: dotted paths from the variable name, with cell and struct-array
  indices 1-based in column-major order as in MATLAB: ``model.weight{3}`` is
  ``model.weight.3``, ``s(2).w`` is ``s.2.w`` (a 1x1 struct takes no index; a cell always
  does).  Empty arrays (MATLAB's ``[]``) are left out; char arrays go to
  ``facts["strings"]`` (``{path: text}``, rows of a multi-row char array joined by newlines);
  ``facts["layout"] = "tree"``, ``facts["variables"]`` lists the variable names.
* **MatConvNet DagNN structs** (a struct with a ``params`` struct array of ``name``/``value``
  and a ``layers`` struct array; LapSRN's ``net``): the keys are the param names themselves
  (``conv_input_f``) and the file's other variables are left out.  ``facts["layout"] =
  "dagnn"``, ``facts["variable"]`` names the struct, and ``facts["layers"]`` lists the layers
  in file order as plain Python: ``name``, ``type`` (``"dagnn.Conv"``), ``inputs``,
  ``outputs`` and ``params`` (lists of names), plus the block's attributes (``size``, ``pad``,
  ``stride``, ``dilate``, ``crop``, ``upsample``, ``leak``, ``hasBias`` ...) at the same level:
  one number as a float (double, single), int (integer classes) or bool (logical), arrays as
  flat lists of them in MATLAB's column-major order, chars as str, cells as lists.

Tensors keep MATLAB's dimension order: an ``H x W x IN x OUT`` conv filter becomes a tensor of
shape ``(H, W, IN, OUT)`` with ``t[i, j, k, l] == F(i+1, j+1, k+1, l+1)``.  MATLAB drops
trailing singleton dimensions and keeps at least two, so a ``3x3x64x1`` filter is stored (and
arrives) as ``(3, 3, 64)`` and a bias as ``(64, 1)``: converters restore what they need.
double and single become float32; integer classes keep their type (uint16/uint32 widen to
int32/int64; uint64 must fit int64); logical becomes bool.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import Checkpoint, Format, FormatError

MAGIC = b"MATLAB 5.0 MAT-file"
"""How the text of a v5/v6/v7 file's header starts."""
MAGIC_HDF5 = b"MATLAB 7.3 MAT-file"
"""How a v7.3 file (an HDF5 container, refused) starts."""

# data element types (miXXX) and their numpy codes
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16, _MI_UTF32 = 14, 15, 16, 17, 18

# array classes (mxXXX_CLASS) and the numpy type their values take here
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE = 1, 2, 3, 4, 5
_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "i4", 12: "i4", 13: "i8", 14: "i8", 15: "i8"}
_CLASS_NAMES = {16: "function handle", 17: "opaque object"}
_F_COMPLEX, _F_LOGICAL = 0x0800, 0x0200


@dataclass
class _Cell:
    dims: tuple[int, ...]
    items: list[Any]  # column-major


@dataclass
class _Struct:
    dims: tuple[int, ...]
    fields: list[str]
    items: list[dict[str, Any]]  # column-major


class _Elements:
    """Reader of the tagged data elements in ``data``, byte order ``order`` (``<`` or ``>``)."""

    def __init__(self, data: bytes | memoryview, order: str, pos: int = 0) -> None:
        self.data, self.order, self.pos = memoryview(data), order, pos

    def more(self) -> bool:
        return self.pos < len(self.data)

    def next(self) -> tuple[int, memoryview]:
        """The next element's type and payload; skips its padding to 8 bytes."""
        start = self.pos
        if start + 8 > len(self.data):
            raise FormatError(f"truncated data element tag at byte {start}")
        (word,) = struct.unpack_from(self.order + "I", self.data, start)
        if word >> 16:  # small data element: type and size in one word, payload in the next
            kind, size = word & 0xFFFF, word >> 16
            if size > 4:
                raise FormatError(f"bad small data element at byte {start}")
            self.pos = start + 8
            return kind, self.data[start + 4 : start + 4 + size]
        (size,) = struct.unpack_from(self.order + "I", self.data, start + 4)
        end = start + 8 + size
        if end > len(self.data):
            raise FormatError(f"truncated data element at byte {start} ({size} bytes announced)")
        # compressed elements are not padded; the others are, to a multiple of 8 bytes
        self.pos = end if word == _MI_COMPRESSED else min(start + 8 + -(-size // 8) * 8, len(self.data))
        return word, self.data[start + 8 : end]

    def numbers(self, expect: tuple[int, ...] | None = None) -> np.ndarray:
        """The next element as a numeric vector (its stored type)."""
        kind, payload = self.next()
        if kind not in _MI_TYPES or (expect is not None and kind not in expect):
            raise FormatError(f"unexpected data element type {kind} in an array")
        dtype = np.dtype(_MI_TYPES[kind]).newbyteorder(self.order)
        if len(payload) % dtype.itemsize:
            raise FormatError("numeric data element of a size that is no multiple of its type")
        return np.frombuffer(payload, dtype=dtype)


def _text(payload: memoryview) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode("ascii", errors="replace")


def _char(kind: int, payload: memoryview, order: str, dims: tuple[int, ...]) -> str | list[str]:
    """A char array: one string, or a list of its rows when it has several."""
    if kind in (_MI_UTF8, 1, 2):
        chars = bytes(payload).decode("utf-8", errors="replace")
    elif kind in (_MI_UTF16, 3, 4):
        chars = bytes(payload).decode("utf-16-le" if order == "<" else "utf-16-be", errors="replace")
    elif kind == _MI_UTF32:
        chars = bytes(payload).decode("utf-32-le" if order == "<" else "utf-32-be", errors="replace")
    else:
        raise FormatError(f"char array stored as data type {kind}")
    rows = dims[0] if len(dims) == 2 else 1
    if rows <= 1 or not chars:
        return chars
    cols = len(chars) // rows
    return ["".join(chars[r + rows * c] for c in range(cols)) for r in range(rows)]


def _numeric(cls: int, flags: int, real: np.ndarray, imag: np.ndarray | None, dims: tuple[int, ...]) -> np.ndarray:
    """A numeric array of class ``cls`` in MATLAB's dimension order (C-contiguous)."""
    if math.prod(dims) != real.size or (imag is not None and imag.size != real.size):
        raise FormatError(f"array of {real.size} values for dimensions {'x'.join(map(str, dims))}")
    if flags & _F_LOGICAL:
        values = real != 0
    elif cls == 15 and real.size and real.dtype.kind == "u" and int(real.max()) > np.iinfo(np.int64).max:
        raise FormatError("uint64 values beyond the int64 range")
    else:
        values = real.astype(_NUMERIC[cls])
        if imag is not None:
            values = values + 1j * imag.astype(values.dtype)
    return np.ascontiguousarray(values.reshape(dims, order="F"))


def _matrix(payload: memoryview, order: str) -> Any:
    """The value of one ``miMATRIX`` element's payload."""
    if not len(payload):  # an empty element: MATLAB's []
        return np.zeros((0, 0))
    sub = _Elements(payload, order)
    flags_word = sub.numbers((6,))
    if flags_word.size != 2:
        raise FormatError("bad array flags")
    flags = int(flags_word[0])
    cls = flags & 0xFF
    dims = tuple(int(d) for d in sub.numbers((5,)))
    if len(dims) < 2 or min(dims) < 0:
        raise FormatError(f"bad array dimensions {dims}")
    sub.next()  # the array's name (only top-level names matter; read by the caller)
    count = math.prod(dims)
    if cls == _OBJECT:
        sub.next()  # class name: an old-style object is read as the struct of its fields
    if cls in (_STRUCT, _OBJECT):
        width = sub.numbers((5,))
        names = sub.next()[1]
        if width.size != 1 or (len(names) and int(width[0]) <= 0):
            raise FormatError("bad struct field names")
        size = int(width[0])
        fields = [_text(names[i : i + size]) for i in range(0, len(names), size)] if size > 0 else []
        items = [{f: _child(sub, order) for f in fields} for _ in range(count)]
        return _Struct(dims, fields, items)
    if cls == _CELL:
        return _Cell(dims, [_child(sub, order) for _ in range(count)])
    if cls == _CHAR:
        if not sub.more():
            return ""
        kind, data = sub.next()
        return _char(kind, data, order, dims)
    if cls == _SPARSE:
        raise FormatError("sparse arrays are not supported")
    if cls not in _NUMERIC:
        raise FormatError(f"MATLAB {_CLASS_NAMES.get(cls, f'array class {cls}')}s are not supported")
    real = sub.numbers()
    imag = sub.numbers() if flags & _F_COMPLEX else None
    return _numeric(cls, flags, real, imag, dims)


def _child(sub: _Elements, order: str) -> Any:
    kind, payload = sub.next()
    if kind != _MI_MATRIX:
        raise FormatError(f"a cell or struct field holds data element type {kind}, not an array")
    return _matrix(payload, order)


def _name(payload: memoryview, order: str) -> str:
    """The variable name inside a top-level ``miMATRIX`` payload."""
    if not len(payload):
        return ""
    sub = _Elements(payload, order)
    sub.next()
    sub.next()
    return _text(sub.next()[1])


def _header(data: bytes) -> tuple[str, int]:
    """Byte order and subsystem-data offset from the 128-byte header."""
    if data.startswith(MAGIC_HDF5):
        raise FormatError("a MATLAB v7.3 file (HDF5) is not supported; save it again with save(..., '-v7')")
    if len(data) < 128 or not data.startswith(MAGIC):
        raise FormatError("not a MATLAB 5.0 MAT-file header")
    marker = data[126:128]
    if marker not in (b"IM", b"MI"):
        raise FormatError(f"bad byte-order marker {marker!r}")
    order = "<" if marker == b"IM" else ">"
    (subsys,) = struct.unpack_from(order + "Q", data, 116)
    return order, 0 if data[116:124] in (b" " * 8, b"\0" * 8) else subsys


def read_variables(path: Path) -> dict[str, Any]:
    """Every variable of a ``.mat`` file, by name: numeric arrays as numpy arrays (MATLAB's
    dimension order), chars as str, cells and structs as ``_Cell``/``_Struct``."""
    data = path.read_bytes()
    order, subsys = _header(data)
    top = _Elements(data, order, pos=128)
    out: dict[str, Any] = {}
    while top.more():
        at = top.pos
        kind, payload = top.next()
        if at == subsys:  # the subsystem data of MATLAB objects: no variable
            continue
        if kind == _MI_COMPRESSED:
            try:
                inner = zlib.decompress(payload)
            except zlib.error as err:
                raise FormatError(f"damaged compressed element at byte {at} ({err})") from None
            kind, payload = _Elements(inner, order).next()
        if kind != _MI_MATRIX:
            raise FormatError(f"unexpected top-level data element type {kind} at byte {at}")
        name = _name(payload, order)
        if name:
            out[name] = _matrix(payload, order)
    return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A numeric array as a tensor; double becomes float32 (complex double: complex64)."""
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == np.complex128:
        array = array.astype(np.complex64)
    return torch.from_numpy(array)


def _plain(value: Any) -> Any:
    """A MATLAB value as plain Python: numbers, flat lists (column-major), str, dicts."""
    if isinstance(value, np.ndarray):
        items = value.flatten(order="F").tolist()
        return items[0] if len(items) == 1 else items
    if isinstance(value, _Cell):
        return [_plain(v) for v in value.items]
    if isinstance(value, _Struct):
        items = [{k: _plain(v) for k, v in item.items()} for item in value.items]
        return items[0] if len(items) == 1 else items
    return value


def _names(value: Any) -> list[str]:
    """A cell of strings (or one string, or nothing) as a list of names."""
    plain = _plain(value)
    if isinstance(plain, str):
        return [plain] if plain else []
    return [v for v in plain if isinstance(v, str)] if isinstance(plain, list) else []


def _is_dagnn(value: Any) -> bool:
    if not (isinstance(value, _Struct) and len(value.items) == 1):
        return False
    params, layers = value.items[0].get("params"), value.items[0].get("layers")
    return isinstance(params, _Struct) and {"name", "value"} <= set(params.fields) and isinstance(layers, _Struct)


def _dagnn(name: str, net: _Struct) -> Checkpoint:
    """Tensors and layer facts of a MatConvNet DagNN struct (``dagnn.DagNN.saveobj``)."""
    fields = net.items[0]
    tensors = {}
    for param in fields["params"].items:
        if not isinstance(param["value"], np.ndarray) or not isinstance(param["name"], str):
            raise FormatError(f"DagNN param {param['name']!r} holds no numeric array")
        tensors[param["name"]] = _tensor(param["value"])
    layers = []
    for layer in fields["layers"].items:
        block = _plain(layer.get("block"))
        entry = dict(block) if isinstance(block, dict) else {}
        entry.update(
            name=_plain(layer["name"]),
            type=_plain(layer.get("type", "")),
            inputs=_names(layer.get("inputs")),
            outputs=_names(layer.get("outputs")),
            params=_names(layer.get("params")),
        )
        layers.append(entry)
    return Checkpoint(tensors, "matlab", facts={"layout": "dagnn", "variable": name, "layers": layers})


def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor], strings: dict[str, str]) -> None:
    if isinstance(value, np.ndarray):
        if value.size:
            tensors[prefix] = _tensor(value)
    elif isinstance(value, _Cell):
        for i, item in enumerate(value.items, 1):
            _flatten(f"{prefix}.{i}", item, tensors, strings)
    elif isinstance(value, _Struct):
        one = len(value.items) == 1
        for i, item in enumerate(value.items, 1):
            for field, v in item.items():
                _flatten(f"{prefix}.{field}" if one else f"{prefix}.{i}.{field}", v, tensors, strings)
    elif isinstance(value, str):
        strings[prefix] = value
    else:  # a multi-row char array
        strings[prefix] = "\n".join(value)


def _read(path: Path, key: str | None) -> Checkpoint:
    variables = read_variables(path)
    for name, value in variables.items():
        if _is_dagnn(value):
            return _dagnn(name, value)
    tensors: dict[str, torch.Tensor] = {}
    strings: dict[str, str] = {}
    for name, value in variables.items():
        _flatten(name, value, tensors, strings)
    return Checkpoint(tensors, "matlab", facts={"layout": "tree", "variables": list(variables), "strings": strings})


FORMAT = Format(
    name="matlab",
    description="MATLAB .mat file, v5/v7 (MatConvNet models, structs and cells of arrays)",
    sniff=lambda path, head: head.startswith((MAGIC, MAGIC_HDF5)),
    read=_read,
)
