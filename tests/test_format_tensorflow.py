"""The TensorFlow V1 checkpoint reader (``upscale_cli/formats/tensorflow.py``).

On the real EnhanceNet-PAT file of ../shared (skipped when absent), and on small checkpoints
this file writes itself with a minimal TensorSliceWriter: one uncompressed data block of
``SavedTensorSlices`` records, an index block, an empty metaindex block and the footer
(LevelDB ``table_format.md``; ``saved_tensor_slice.proto``, ``tensor.proto``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHECKPOINTS, need_shared

from upscale_cli import formats
from upscale_cli.errors import WeightsError
from upscale_cli.formats.tensorflow import crc32c
from upscale_cli.weights import read_checkpoint

ENHANCENET = CHECKPOINTS / "enhancenet_pat_tf_weights"
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_HALF = 1, 2, 3, 9, 19


# --- a minimal writer ----------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative ints as int64 two's complement
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def vint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def msg(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def ref_crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = crc >> 1 ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def block(records: list[tuple[bytes, bytes]]) -> bytes:
    """A block whose keys share no prefix, one restart point at 0."""
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in records)
    return body + struct.pack("<II", 0, 1)


def trailer(contents: bytes, kind: int = 0) -> bytes:
    crc = ref_crc32c(contents + bytes([kind]))
    return bytes([kind]) + struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def table(records: list[tuple[bytes, bytes]], kind: int = 0) -> bytes:
    data = block(records)
    out = data + trailer(data, kind)
    meta_at, metaindex = len(out), block([])
    out += metaindex + trailer(metaindex)
    index_at, index = len(out), block([(b"\xff", varint(0) + varint(len(data)))])
    out += index + trailer(index)
    handles = varint(meta_at) + varint(len(metaindex)) + varint(index_at) + varint(len(index))
    return out + handles.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)


def shape(dims: tuple[int, ...]) -> bytes:
    return b"".join(msg(2, vint(1, d)) for d in dims)


def extents(spans: list[tuple[int, int] | None]) -> bytes:
    """TensorSliceProto: ``None`` is a whole dimension (no start, no length)."""
    return b"".join(msg(1, b"" if s is None else vint(1, s[0]) + vint(2, s[1])) for s in spans)


def entry(name: str, dims: tuple[int, ...], dtype: int, slices: list[bytes]) -> bytes:
    return msg(1, name.encode()) + msg(2, shape(dims)) + vint(3, dtype) + b"".join(msg(4, s) for s in slices)


def record(name: str, slice_: bytes, tensor: bytes) -> tuple[bytes, bytes]:
    key = b"\x00" + name.encode() + b"\x00" + slice_  # stands in for the ordered code
    return key, msg(2, msg(1, name.encode()) + msg(2, slice_) + msg(3, tensor))


def checkpoint(entries: list[bytes], data: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    meta = msg(1, b"".join(msg(1, e) for e in entries) + msg(2, vint(1, 21)))
    return [(b"", meta), *sorted(data)]


W = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4) / 7
B = np.array([0.5, -1.25, 3.0, 1e-3], dtype=np.float32)
PART = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
NEG = np.array([-1, 2, -300000], dtype=np.int32)
HALF = np.array([1.5, -0.25], dtype=np.float16)
DOUBLE = np.array([np.pi, -np.e])


def sample_records() -> list[tuple[bytes, bytes]]:
    """Every value encoding: packed and unpacked float_val, tensor_content, int_val with
    negatives, int64_val, half_val, a scalar, and a tensor saved as two slices."""
    full4 = extents([None] * 4)
    top, bottom = extents([(0, 1), None]), extents([(1, 3), None])
    entries = [
        entry("net/conv/weights", W.shape, DT_FLOAT, [full4]),
        entry("net/conv/biases", B.shape, DT_FLOAT, [extents([None])]),
        entry("net/part", PART.shape, DT_FLOAT, [top, bottom]),
        entry("net/neg", NEG.shape, DT_INT32, [extents([None])]),
        entry("net/half", HALF.shape, DT_HALF, [extents([None])]),
        entry("net/double", DOUBLE.shape, DT_DOUBLE + 100, [extents([None])]),  # a _REF type
        entry("global_step", (), DT_INT64, [b""]),
    ]
    data = [
        record("net/conv/weights", full4, msg(5, W.tobytes())),
        record("net/conv/biases", extents([None]), b"".join(varint(5 << 3 | 5) + v.tobytes() for v in B)),
        record("net/part", top, msg(4, PART[:1].tobytes())),
        record("net/part", bottom, msg(5, PART[1:].tobytes())),
        record("net/neg", extents([None]), msg(7, b"".join(varint(int(v)) for v in NEG))),
        record("net/half", extents([None]), msg(13, b"".join(varint(int(v)) for v in HALF.view(np.uint16)))),
        record("net/double", extents([None]), msg(4, DOUBLE.tobytes())),
        record("global_step", b"", msg(10, varint(12345))),
    ]
    return checkpoint(entries, data)


def write(tmp_path: Path, records: list[tuple[bytes, bytes]], kind: int = 0, name: str = "model.ckpt") -> Path:
    path = tmp_path / name
    path.write_bytes(table(records, kind))
    return path


# --- the reader on written files -----------------------------------------------------------


def test_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283 == ref_crc32c(b"123456789")
    rng = np.random.default_rng(0)
    for n in (4, 5, 255, 256, 257, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == ref_crc32c(data), n


def test_reader_on_a_written_checkpoint(tmp_path: Path) -> None:
    path = write(tmp_path, sample_records())
    assert formats.sniff(path).name == "tensorflow"
    ckpt = formats.read(path)
    assert ckpt.format == "tensorflow" and ckpt.facts == {"producer": 21}
    t = ckpt.tensors
    expected = {
        "net/conv/weights": W, "net/conv/biases": B, "net/part": PART, "net/neg": NEG,
        "net/half": HALF, "net/double": DOUBLE, "global_step": np.array(12345, dtype=np.int64),
    }
    assert t.keys() == expected.keys()
    for name, want in expected.items():
        assert t[name].dtype == torch.from_numpy(want).dtype, name
        assert t[name].shape == want.shape, name
        assert np.array_equal(t[name].numpy(), want), name
    sd, _ = read_checkpoint(path)
    assert sd.keys() == expected.keys()


def test_damaged_and_foreign_files_are_refused_with_the_cause(tmp_path: Path) -> None:
    good = table(sample_records())
    damaged = bytearray(good)
    damaged[40] ^= 0x01
    (tmp_path / "damaged").write_bytes(damaged)
    with pytest.raises(WeightsError, match=r"damaged.*CRC-32C"):
        formats.read(tmp_path / "damaged")
    with pytest.raises(WeightsError, match="Snappy"):
        formats.read(write(tmp_path, sample_records(), kind=1, name="snappy"))
    v2 = [(b"", vint(1, 1) + vint(2, 0) + msg(3, vint(1, 1))), (b"net/w", b"\x08\x01")]  # BundleHeaderProto
    with pytest.raises(WeightsError, match="V2 checkpoint index"):
        formats.read(write(tmp_path, v2, name="model.ckpt.index"))
    missing = checkpoint([entry("a", (2,), DT_FLOAT, [extents([None])])], [])
    with pytest.raises(WeightsError, match="not .or not exactly. covered by their slices: a"):
        formats.read(write(tmp_path, missing, name="missing"))
    (tmp_path / "cut").write_bytes(good[:-1])
    assert formats.sniff(tmp_path / "cut") is None
    with pytest.raises(WeightsError, match="not a weights file of any supported format"):
        formats.read(tmp_path / "cut")


# --- the real file -------------------------------------------------------------------------


def test_reader_on_the_real_enhancenet_checkpoint() -> None:
    path = need_shared(ENHANCENET)
    assert formats.sniff(path).name == "tensorflow"
    ckpt = formats.read(path)
    t = ckpt.tensors
    assert ckpt.format == "tensorflow" and len(t) == 50
    names = ["Conv", *(f"Conv_{i}" for i in range(1, 25))]
    assert t.keys() == {f"generator/{n}/{p}" for n in names for p in ("weights", "biases")}
    assert sum(v.numel() for v in t.values()) == 852_867
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in t.values())
    shapes = [tuple(t[f"generator/{n}/weights"].shape) for n in names]  # HWIO
    assert shapes == [(3, 3, 3, 64)] + [(3, 3, 64, 64)] * 23 + [(3, 3, 64, 3)]
    assert tuple(t["generator/Conv_24/biases"].shape) == (3,)
