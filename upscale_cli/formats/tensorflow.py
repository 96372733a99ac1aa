"""TensorFlow V1 checkpoints (``tf.train.Saver`` with ``write_version=V1``, TensorFlow <= 0.12's
default): the TensorSliceWriter format, read without TensorFlow or protobuf.

The file is one LevelDB-style table (``tensorflow/core/lib/io/table``, LevelDB
``doc/table_format.md``): data blocks of prefix-compressed key/value records with restart
points, each followed by a 5-byte trailer (compression type, masked CRC-32C of block + type);
an index block of ``(last key, block handle)`` records; a 48-byte footer holding the metaindex
and index handles and the magic :data:`MAGIC`.  Only uncompressed blocks are read (the Saver
writes no others); Snappy blocks are refused.  Every record's value is a serialized
``SavedTensorSlices`` (``tensorflow/core/util/saved_tensor_slice.proto``): the record with
the empty key holds ``meta``, the table of contents (name, shape, dtype, slices of each
tensor); each other record holds ``data``, one slice as a ``TensorProto`` (``float_val`` etc.
packed, or raw ``tensor_content``).  The other keys (ordered codes of name and slice) are not
needed: each slice names itself.

Keys are the TF variable names (``generator/Conv/weights``); tensors keep TF's shapes and
layout (a convolution kernel is ``(H, W, IN, OUT)``), slices of a partitioned variable are
joined into the whole tensor.  ``facts["producer"]`` is the TensorFlow graph version that
wrote the file.  A V2 checkpoint's ``.index`` file (same table format, a tensor bundle whose
data lives in ``.data-*`` files) is recognised and refused.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import Checkpoint, Format, FormatError

MAGIC = 0xDB4775248B80FB57
"""The table magic number, the footer's last 8 bytes (little endian)."""
_FOOTER = 48
_TRAILER = 5
_NO_COMPRESSION, _SNAPPY = 0, 1

# DataType (tensorflow/core/framework/types.proto) -> numpy type, TensorProto field of its values
_DTYPES: dict[int, tuple[str, int]] = {
    1: ("<f4", 5),  # DT_FLOAT: float_val
    2: ("<f8", 6),  # DT_DOUBLE: double_val
    3: ("<i4", 7),  # DT_INT32: int_val
    4: ("u1", 7),  # DT_UINT8
    5: ("<i2", 7),  # DT_INT16
    6: ("i1", 7),  # DT_INT8
    9: ("<i8", 10),  # DT_INT64: int64_val
    10: ("?", 11),  # DT_BOOL: bool_val
    19: ("<f2", 13),  # DT_HALF: half_val (bit patterns in int32s)
}
_REF = 100  # DT_FLOAT_REF = 101 ...: reference types are stored as their base type


# --- protobuf wire format ------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise FormatError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: memoryview) -> dict[int, list[Any]]:
    """A protobuf message's fields: ``{number: [value, ...]}`` in file order; varints as int,
    length-delimited fields as memoryview, fixed32/fixed64 as their 4/8 bytes."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise FormatError("truncated protobuf field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise FormatError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _one(fields: dict[int, list[Any]], number: int, default: Any = None) -> Any:
    """The last value of a singular field (protobuf's rule), or ``default``."""
    return fields[number][-1] if number in fields else default


def _signed(value: int) -> int:
    """A varint read as a two's-complement int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shape(buf: memoryview) -> tuple[int, ...]:
    """TensorShapeProto: ``repeated Dim dim = 2`` with ``int64 size = 1``."""
    dims = _fields(buf)
    if _one(dims, 3, 0):
        raise FormatError("a tensor of unknown rank")
    return tuple(_signed(_one(_fields(d), 1, 0)) for d in dims.get(2, []))


def _slice(buf: memoryview | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """TensorSliceProto (``repeated Extent extent = 1``, ``start = 1``, ``length = 2``; no
    length means the whole dimension) as index slices into ``shape``."""
    extents = _fields(buf).get(1, []) if buf is not None else []
    if len(extents) != len(shape):
        raise FormatError(f"a slice of {len(extents)} extents for a tensor of rank {len(shape)}")
    out = []
    for extent, size in zip(extents, shape):
        e = _fields(extent)
        start = _signed(_one(e, 1, 0))
        length = _signed(_one(e, 2, -1))
        length = size - start if length == -1 else length
        if start < 0 or length < 0 or start + length > size:
            raise FormatError(f"slice extent {start}+{length} outside a dimension of {size}")
        out.append(slice(start, start + length))
    return tuple(out)


def _packed(values: list[Any], dtype: str, varints: bool) -> np.ndarray:
    """The values of a repeated field, packed or not."""
    if not varints:  # fixed-width: packed runs and single values are the same bytes
        return np.frombuffer(b"".join(bytes(v) for v in values), dtype=dtype)
    ints: list[int] = []
    for v in values:
        if isinstance(v, int):
            ints.append(_signed(v))
            continue
        pos = 0
        while pos < len(v):
            n, pos = _varint(v, pos)
            ints.append(_signed(n))
    return np.array(ints, dtype=np.int64)


def _values(proto: memoryview, type_: int, count: int, name: str) -> np.ndarray:
    """The ``count`` values of a slice's TensorProto as a flat array of the tensor's dtype."""
    dtype, field = _DTYPES[type_]
    fields = _fields(proto)
    if 4 in fields:  # tensor_content: raw little-endian bytes
        flat = np.frombuffer(bytes(fields[4][-1]), dtype=dtype)
    else:
        flat = _packed(fields.get(field, []), dtype, varints=dtype[-2:] not in ("f4", "f8"))
        if type_ == 19:  # half_val: the float16 bit patterns
            flat = flat.astype("<u2").view("<f2")
    if flat.size != count:
        raise FormatError(f"slice of {name} holds {flat.size} values, not {count}")
    return flat.astype(dtype, copy=False)


# --- CRC-32C (Castagnoli), for the block trailers ------------------------------------------


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


def _crc_lanes(lanes: np.ndarray) -> np.ndarray:
    """The CRC register (initial value 0, no final xor) after each row of ``lanes`` (uint8)."""
    crc = np.zeros(lanes.shape[0], dtype=np.uint32)
    for j in range(lanes.shape[1]):
        crc = _CRC_TABLE[(crc ^ lanes[:, j]) & 0xFF] ^ (crc >> 8)
    return crc


_CHUNK = 256
"""Bytes per lane of :func:`crc32c`."""


def _shift_tables() -> list[list[int]]:
    """``tables[b][v]``: the register after :data:`_CHUNK` zero bytes from ``v << 8 * b``."""
    values = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    for _ in range(_CHUNK):
        values = _CRC_TABLE[values & 0xFF] ^ (values >> 8)
    return values.reshape(4, 256).tolist()


_SHIFT = _shift_tables()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (RFC 3720, ``crc32c(b"123456789") == 0xE3069283``).

    Vectorised: the CRC is linear over GF(2), so with initial value 0 the message is cut into
    equal chunks (zeros in front, which leave a zero register unchanged) whose registers are
    computed side by side, then folded as ``c = shift(c) ^ chunk``, ``shift`` being the effect
    of one chunk of zeros, tabulated per byte of ``c``.  The standard initial value
    ``0xFFFFFFFF`` equals complementing the first four message bytes.
    """
    if len(data) < 4:
        raise ValueError("crc32c needs at least 4 bytes")
    msg = np.frombuffer(data, dtype=np.uint8).copy()
    msg[:4] ^= 0xFF
    chunks = -(-len(msg) // _CHUNK)
    lanes = np.zeros(chunks * _CHUNK, dtype=np.uint8)
    lanes[chunks * _CHUNK - len(msg) :] = msg
    t0, t1, t2, t3 = _SHIFT
    crc = 0
    for reg in _crc_lanes(lanes.reshape(chunks, _CHUNK)).tolist():
        crc = t0[crc & 0xFF] ^ t1[crc >> 8 & 0xFF] ^ t2[crc >> 16 & 0xFF] ^ t3[crc >> 24] ^ reg
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    """LevelDB's masked CRC (``crc32c::Mask``), as stored in block trailers."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- the table -----------------------------------------------------------------------------


def _handle(buf: memoryview, pos: int = 0) -> tuple[int, int, int]:
    """A BlockHandle (offset, size varints) at ``pos``, and the position after it."""
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _block(data: memoryview, offset: int, size: int) -> list[tuple[bytes, memoryview]]:
    """The ``(key, value)`` records of the block at ``offset``, its trailer checked."""
    if offset + size + _TRAILER > len(data) - _FOOTER or size < 4:
        raise FormatError(f"block at byte {offset} ({size} bytes) lies outside the file")
    kind = data[offset + size]
    if kind == _SNAPPY:
        raise FormatError(f"block at byte {offset} is Snappy-compressed, which this reader does not support")
    if kind != _NO_COMPRESSION:
        raise FormatError(f"block at byte {offset} has unknown compression type {kind}")
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if _masked(crc32c(bytes(data[offset : offset + size + 1]))) != stored:
        raise FormatError(f"block at byte {offset} fails its CRC-32C check (damaged file)")
    block = data[offset : offset + size]
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 - 4 * restarts
    if end < 0:
        raise FormatError(f"block at byte {offset} announces {restarts} restart points")
    records: list[tuple[bytes, memoryview]] = []
    key, pos = b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise FormatError(f"bad record in the block at byte {offset}")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        records.append((key, block[pos : pos + length]))
        pos += length
    return records


def _read_table(data: memoryview) -> list[tuple[bytes, memoryview]]:
    """Every record of a LevelDB-format table, in key order (the index's data blocks in turn)."""
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != MAGIC:
        raise FormatError("no table footer (magic number) at the end of the file")
    footer = data[len(data) - _FOOTER :]
    _, _, pos = _handle(footer)
    index_offset, index_size, _ = _handle(footer, pos)
    records = []
    for _, handle in _block(data, index_offset, index_size):
        offset, size, _ = _handle(handle)
        records += _block(data, offset, size)
    return records


# --- SavedTensorSlices ---------------------------------------------------------------------


def _table_of_contents(records: list[tuple[bytes, memoryview]]) -> dict[int, list[Any]]:
    """The ``SavedTensorSliceMeta`` fields of the empty-key record."""
    if not records or records[0][0] != b"":
        raise FormatError("a table without a TensorFlow checkpoint's table of contents (no empty key)")
    top = _fields(records[0][1])
    if 1 in top and isinstance(top[1][-1], int):  # BundleHeaderProto.num_shards
        raise FormatError(
            "a TensorFlow V2 checkpoint index (tensor bundle): its tensors are in the .data-* files; "
            "only V1 (tensor slices) checkpoints are supported"
        )
    if 1 not in top:
        raise FormatError("the empty-key record holds no SavedTensorSliceMeta")
    return _fields(top[1][-1])


def _read(path: Path, key: str | None) -> Checkpoint:
    data = memoryview(path.read_bytes())
    records = _read_table(data)
    meta = _table_of_contents(records)
    arrays: dict[str, np.ndarray] = {}
    types: dict[str, int] = {}
    filled: dict[str, int] = {}
    for entry in meta.get(1, []):
        f = _fields(entry)
        name = bytes(_one(f, 1, b"")).decode()
        type_ = _one(f, 3, 0)
        type_ = type_ - _REF if type_ > _REF else type_
        if type_ not in _DTYPES:
            raise FormatError(f"tensor {name} has TensorFlow data type {type_}, which is not supported")
        shape = _shape(_one(f, 2, memoryview(b"")))
        arrays[name] = np.zeros(shape, dtype=_DTYPES[type_][0])
        types[name], filled[name] = type_, 0
    for _, value in records[1:]:
        saved = _fields(_fields(value).get(2, [memoryview(b"")])[-1])
        name = bytes(_one(saved, 1, b"")).decode()
        if name not in arrays:
            raise FormatError(f"a slice of {name!r}, which the table of contents does not list")
        region = _slice(_one(saved, 2), arrays[name].shape)
        target = arrays[name][(*region, Ellipsis)]  # a view, also of a scalar
        target[...] = _values(_one(saved, 3, memoryview(b"")), types[name], target.size, name).reshape(target.shape)
        filled[name] += target.size
    short = [n for n, a in arrays.items() if filled[n] != a.size]
    if short:
        raise FormatError(f"{len(short)} tensors not (or not exactly) covered by their slices: {', '.join(short[:3])}")
    version = _one(meta, 2)
    facts = {"producer": _one(_fields(version), 1, 0)} if version is not None else {}
    return Checkpoint({n: torch.from_numpy(a) for n, a in arrays.items()}, "tensorflow", facts=facts)


def _sniff(path: Path, head: bytes) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, 2) < _FOOTER:
            return False
        f.seek(-8, 2)
        return struct.unpack("<Q", f.read(8))[0] == MAGIC


FORMAT = Format(
    name="tensorflow",
    description="TensorFlow V1 checkpoint (tf.train.Saver tensor slices, TensorFlow <= 0.12)",
    sniff=_sniff,
    read=_read,
)
