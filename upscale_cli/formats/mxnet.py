"""MXNet ``.params`` files (``mx.nd.save`` / ``Module.save_checkpoint``), read without MXNet.

The layout (apache/mxnet ``src/ndarray/ndarray.cc``, ``NDArray::Save`` and ``NDArray::Load``),
little-endian: a ``uint64`` list magic ``0x112`` (``kMXAPINDArrayListMagic``), a reserved
``uint64``, a ``uint64`` count and that many NDArrays, then a ``uint64`` count of names (0, or
as many as arrays) and each name as a ``uint64`` length and its bytes.  One NDArray is:

* V2 (``uint32`` magic ``0xF993FAC9``) and V3 (``0xF993FACA``, NumPy shape semantics): an
  ``int32`` storage type (only 0, dense, is read; sparse arrays are refused), the shape
  (``int32`` ndim, then ``int64`` dims), the context (``int32`` dev_type and
  dev_id), an ``int32`` dtype flag and the data;
* V1 (``0xF993FAC8``): the same without the storage type;
* legacy (no magic): the first ``uint32`` is ndim and the dims are ``uint32``.

dtype flags: 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, 7 bool,
12 bfloat16; tensors keep their dtype.  An array with no shape (``ndim`` 0, or -1 in V3) is
"none" and left out.

Keys.  Names lose MXNet's ``arg:``/``aux:`` prefix (``arg:conv0_weight`` -> ``conv0_weight``).
When the graph of a ``Module`` checkpoint sits beside the file (``NAME-0000.params`` ->
``NAME-symbol.json``) every array the graph consumes is named after its first consumer in graph
order instead: ``<node name>.<input name>`` with MXNet's input names (``convolution3.weight``,
``convolution3.bias``, ``batchnorm0.moving_mean``; ``in<i>`` for ops not listed in
:data:`INPUT_NAMES`).  So the anonymous ``learned_N`` of converted models become names that
carry the graph position (MXNet numbers ``convolutionN`` in the order the graph was built) and
the op, and a parameter shared by several nodes (recursive nets) has one key, named after its
first use.  ``facts["names"]`` maps each key back to the name in the file; ``facts["graph"]``
lists the graph's operator nodes in order, as plain Python: ``op``, ``name``, ``attrs`` (strings
as MXNet writes them: ``kernel`` ``"(3, 3)"``, ``num_filter``, ``num_group``, ``pad``,
``stride``, ``act_type``, ``slope`` ...) and ``inputs`` (node names; a parameter as its key);
``facts["symbol"]`` is the graph file's name.  Without a graph, ``facts["names"]`` is absent.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import Checkpoint, Format, FormatError

LIST_MAGIC = 0x112
"""``kMXAPINDArrayListMagic``: the first ``uint64`` of a ``.params`` file."""
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
"""NDArray magics: V1 (int64 dims), V2 (+ storage type), V3 (V2 in NumPy shape semantics)."""

_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    12: np.dtype("<u2"),  # bfloat16: the upper half of a float32, widened below
}
_BFLOAT16 = 12
_MAX_NDIM = 32

INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "Convolution": ("data", "weight", "bias"),
    "Deconvolution": ("data", "weight", "bias"),
    "FullyConnected": ("data", "weight", "bias"),
    "BatchNorm": ("data", "gamma", "beta", "moving_mean", "moving_var"),
    "InstanceNorm": ("data", "gamma", "beta"),
    "LayerNorm": ("data", "gamma", "beta"),
    "LeakyReLU": ("data", "gamma"),
    "Embedding": ("data", "weight"),
}
"""MXNet's names for the inputs of the ops that take parameters (their ``list_arguments``)."""


class _Stream:
    """Bounds-checked little-endian reads from the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"truncated at byte {self.pos} (reading {what})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values[0] if len(values) == 1 else values


def _shape(s: _Stream, legacy_ndim: int | None, v3: bool) -> tuple[int, ...] | None:
    """A TShape: ``None`` for a "none" array."""
    if legacy_ndim is not None:
        ndim, dim_fmt = legacy_ndim, "I"
    else:
        ndim, dim_fmt = s.unpack("i", "ndim"), "q"
    if ndim == -1 or ndim == 0 and not v3:  # unknown shape; ndim 0 is a scalar only in V3
        return None
    if not 0 <= ndim <= _MAX_NDIM:
        raise FormatError(f"an array with {ndim} dimensions (damaged file?)")
    dims = s.unpack(f"{ndim}{dim_fmt}", "shape") if ndim else ()
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if any(d < 0 for d in dims):
        raise FormatError(f"an array of shape {dims} (damaged file?)")
    return dims


def _ndarray(s: _Stream) -> Tensor | None:
    """One NDArray (V1, V2, V3 or legacy), ``None`` for a none array."""
    magic = s.unpack("I", "array magic")
    legacy_ndim = None
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = s.unpack("i", "storage type")
        if stype != 0:
            kind = {1: "row_sparse", 2: "csr"}.get(stype, f"storage type {stype}")
            raise FormatError(f"a {kind} (sparse) array: only dense arrays are supported")
    elif magic != V1_MAGIC:
        legacy_ndim = magic  # no magic: the old layout, whose first word is ndim
        if legacy_ndim > _MAX_NDIM:
            raise FormatError(f"unknown array header 0x{magic:08x} (damaged file?)")
    shape = _shape(s, legacy_ndim, magic == V3_MAGIC)
    if shape is None:
        return None
    s.unpack("ii", "context")  # dev_type, dev_id: arrays are read onto the CPU
    flag = s.unpack("i", "dtype")
    if flag not in _DTYPES:
        raise FormatError(f"unsupported dtype flag {flag}")
    dtype = _DTYPES[flag]
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(s.take(count * dtype.itemsize, "array data"), dtype=dtype).reshape(shape)
    if flag == _BFLOAT16:
        return torch.from_numpy((raw.astype("<u4") << 16).view("<f4")).to(torch.bfloat16)
    return torch.from_numpy(raw.copy())


def _names(s: _Stream, count: int) -> list[str]:
    n = s.unpack("Q", "name count")
    if n not in (0, count):
        raise FormatError(f"{count} arrays but {n} names (damaged file?)")
    names = []
    for _ in range(n):
        length = s.unpack("Q", "name length")
        try:
            names.append(s.take(length, "name").decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError("a name that is not UTF-8 (damaged file?)") from None
    return [re.sub(r"^(arg|aux):", "", name) for name in names] if names else [str(i) for i in range(count)]


def read_arrays(path: Path) -> dict[str, Tensor]:
    """The file's arrays by name (``arg:``/``aux:`` stripped), in file order."""
    s = _Stream(path.read_bytes())
    magic, _reserved = s.unpack("QQ", "header")
    if magic != LIST_MAGIC:
        raise FormatError(f"not an MXNet NDArray list (magic 0x{magic:x})")
    count = s.unpack("Q", "array count")
    if count > (len(s.data) - s.pos) // 4:
        raise FormatError(f"{count} arrays announced in {len(s.data)} bytes (damaged file?)")
    arrays = [_ndarray(s) for _ in range(count)]
    names = _names(s, count)
    if s.pos != len(s.data):
        raise FormatError(f"{len(s.data) - s.pos} bytes after the name list (damaged file?)")
    if len(set(names)) != len(names):
        raise FormatError("an array name appears twice (damaged file?)")
    return {name: t for name, t in zip(names, arrays) if t is not None}


def symbol_path(path: Path) -> Path | None:
    """``NAME-symbol.json`` beside a ``NAME-EPOCH.params`` file, if it exists."""
    m = re.fullmatch(r"(.+)-\d+", path.stem)
    candidate = path.with_name(f"{m.group(1)}-symbol.json") if m else None
    return candidate if candidate is not None and candidate.is_file() else None


def _graph_nodes(symbol: Path) -> list[dict[str, Any]]:
    try:
        nodes = json.loads(symbol.read_text(encoding="utf-8"))["nodes"]
        for node in nodes:
            if not (isinstance(node["op"], str) and isinstance(node["name"], str)):
                raise TypeError("op and name must be strings")
            for entry in node["inputs"]:
                if not 0 <= int(entry[0]) < len(nodes):
                    raise IndexError(f"input {entry[0]} of {node['name']} out of range")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise FormatError(f"its graph {symbol.name} is not a readable MXNet symbol ({err})") from None
    return nodes


def _attrs(node: dict[str, Any]) -> dict[str, str]:
    """A node's attributes (``attrs``; ``param`` and ``attr`` in files of MXNet < 0.9)."""
    out: dict[str, str] = {}
    for field in ("param", "attr", "attrs"):
        out.update({str(k): str(v) for k, v in (node.get(field) or {}).items()})
    return out


def name_by_graph(arrays: dict[str, Tensor], nodes: list[dict[str, Any]]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Rename the arrays a graph consumes ``<first consumer>.<input name>``; return the
    tensors and the facts (``names``, ``graph``)."""
    key_of: dict[str, str] = {}  # file name -> key
    graph = []
    for node in nodes:
        if node["op"] == "null":
            continue
        slots = INPUT_NAMES.get(node["op"], ())
        inputs = []
        for i, entry in enumerate(node["inputs"]):
            source = nodes[int(entry[0])]
            name = source["name"]
            if source["op"] == "null" and name in arrays:
                key_of.setdefault(name, f"{node['name']}.{slots[i] if i < len(slots) else f'in{i}'}")
                name = key_of[name]
            inputs.append(name)
        graph.append({"op": node["op"], "name": node["name"], "attrs": _attrs(node), "inputs": inputs})
    taken = set(key_of.values())
    clash = [name for name in arrays if name not in key_of and name in taken]
    if clash:
        raise FormatError(f"array {clash[0]!r} clashes with a graph name (damaged graph?)")
    tensors = {key_of.get(name, name): t for name, t in arrays.items()}
    names = {key_of.get(name, name): name for name in arrays}
    return tensors, {"names": names, "graph": graph}


def _read(path: Path, key: str | None) -> Checkpoint:
    arrays = read_arrays(path)
    symbol = symbol_path(path)
    if symbol is None:
        return Checkpoint(tensors=arrays, format="mxnet")
    tensors, facts = name_by_graph(arrays, _graph_nodes(symbol))
    return Checkpoint(tensors=tensors, format="mxnet", facts={**facts, "symbol": symbol.name})


def _sniff(path: Path, head: bytes) -> bool:
    return len(head) >= 16 and struct.unpack("<QQ", head[:16]) == (LIST_MAGIC, 0)


FORMAT = Format(
    name="mxnet",
    description="MXNet .params (NDArray list; NAME-symbol.json beside it names anonymous arrays by graph position)",
    sniff=_sniff,
    read=_read,
)


def op_nodes(tensors: Mapping[str, Tensor], op: str = "convolution") -> list[str] | None:
    """The node names of a graph-named state dict (see above) in graph order, when every key is
    ``<op><N>.<input>`` (``convolution12.weight``): ``["convolution0", ...]``; else ``None``.
    For converters, which get the tensors only."""
    found: dict[int, str] = {}
    for key in tensors:
        m = re.fullmatch(rf"({re.escape(op)}(\d+))\.\w+", key)
        if m is None:
            return None
        found[int(m.group(2))] = m.group(1)
    return [found[i] for i in sorted(found)] or None
