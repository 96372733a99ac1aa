"""The MXNet ``.params`` reader (``upscale_cli/formats/mxnet.py``).

Small files are written here byte by byte from the layout of apache/mxnet ``ndarray.cc``
(``NDArray::Save``, ``NDArray::LegacyLoad``, the ``0x112`` list header), so a checkout without
../shared covers the reader; the two fixtures of ../shared are read too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHECKPOINTS, need_shared

from upscale_cli.errors import WeightsError
from upscale_cli.formats import FormatError, read, sniff
from upscale_cli.formats.mxnet import V1_MAGIC, V2_MAGIC, V3_MAGIC, op_nodes, read_arrays

# --- writing .params files -------------------------------------------------------------------

FLAGS = {
    np.dtype("float32"): 0,
    np.dtype("float64"): 1,
    np.dtype("float16"): 2,
    np.dtype("uint8"): 3,
    np.dtype("int32"): 4,
    np.dtype("int8"): 5,
    np.dtype("int64"): 6,
}


def nd(a: np.ndarray, layout: str = "v2", flag: int | None = None) -> bytes:
    """One NDArray: ``v2``/``v3`` (magic, storage type, int32 ndim, int64 dims), ``v1`` (no
    storage type) or ``legacy`` (no magic: uint32 ndim and uint32 dims); context cpu(0)."""
    dims = a.shape
    if layout == "legacy":
        head = struct.pack(f"<I{len(dims)}I", len(dims), *dims)
    else:
        magic = {"v1": V1_MAGIC, "v2": V2_MAGIC, "v3": V3_MAGIC}[layout]
        head = struct.pack("<I", magic) + (struct.pack("<i", 0) if layout != "v1" else b"")
        head += struct.pack(f"<i{len(dims)}q", len(dims), *dims)
    flag = FLAGS[a.dtype] if flag is None else flag
    return head + struct.pack("<iii", 1, 0, flag) + np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()


def params(arrays: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(arrays) + struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def arange(*shape: int, dtype: str = "float32") -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) / 7


# --- small files -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2", "v1", "legacy", "v3"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int32", "uint8", "int8", "int64"])
def test_reads_every_layout_and_dtype(tmp_path: Path, layout: str, dtype: str) -> None:
    w = (arange(4, 3, 3, 3) * 7).astype(dtype)
    b = (arange(4) * 7).astype(dtype)
    path = write(
        tmp_path / "net-0000.params", params([nd(w, layout), nd(b, layout)], ["arg:conv0_weight", "aux:bn_mean"])
    )
    assert sniff(path).name == "mxnet"
    ckpt = read(path)
    assert ckpt.format == "mxnet" and list(ckpt.tensors) == ["conv0_weight", "bn_mean"]
    assert ckpt.tensors["conv0_weight"].dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(ckpt.tensors["conv0_weight"].numpy(), w)
    np.testing.assert_array_equal(ckpt.tensors["bn_mean"].numpy(), b)
    assert ckpt.facts == {}  # no graph beside it


def test_unnamed_arrays_none_arrays_scalars_and_bfloat16(tmp_path: Path) -> None:
    none_v2 = struct.pack("<Iii", V2_MAGIC, 0, 0)  # ndim 0 outside NumPy semantics: "none"
    scalar_v3 = nd(np.array(2.5, dtype="float32"), "v3")  # ndim 0 in V3: a scalar
    bf16 = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    raw_bf16 = nd(bf16.view(torch.int16).numpy().view("uint16"), "v2", flag=12)
    ckpt = read(write(tmp_path / "x.params", params([none_v2, scalar_v3, raw_bf16], [])))
    assert list(ckpt.tensors) == ["1", "2"]
    assert ckpt.tensors["1"].shape == () and float(ckpt.tensors["1"]) == 2.5
    assert torch.equal(ckpt.tensors["2"], bf16)


def symbol(nodes: list[dict]) -> str:
    return json.dumps({"nodes": nodes, "arg_nodes": [], "heads": [[len(nodes) - 1, 0, 0]], "attrs": {}})


def test_graph_beside_the_file_names_arrays_after_their_first_consumer(tmp_path: Path) -> None:
    """A recursive toy net: conv0 (w0, b0), conv1 and conv2 share w1, a batch norm, an op with
    unknown input names; ``learned_N`` numbers deliberately not in graph order."""
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "learned_3", "attrs": {"__shape__": "(2, 1, 3, 3)"}, "inputs": []},
        {"op": "null", "name": "learned_0", "inputs": []},
        {
            "op": "Convolution",
            "name": "convolution0",
            "attrs": {"kernel": "(3, 3)", "num_filter": "2", "pad": "(1, 1)"},
            "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]],
        },
        {"op": "null", "name": "learned_1", "inputs": []},
        {
            "op": "Convolution",
            "name": "convolution1",
            "param": {"kernel": "(3, 3)", "no_bias": "True"},
            "inputs": [[3, 0, 0], [4, 0, 0]],
        },
        {
            "op": "Convolution",
            "name": "convolution2",
            "attrs": {"kernel": "(3, 3)", "no_bias": "True"},
            "inputs": [[5, 0, 0], [4, 0, 0]],
        },
        {"op": "null", "name": "bn_gamma", "inputs": []},
        {"op": "null", "name": "bn_beta", "inputs": []},
        {"op": "null", "name": "bn_moving_mean", "inputs": []},
        {"op": "null", "name": "bn_moving_var", "inputs": []},
        {
            "op": "BatchNorm",
            "name": "bn",
            "attrs": {"eps": "0.001"},
            "inputs": [[6, 0, 0], [7, 0, 0], [8, 0, 0], [9, 0, 0], [10, 0, 0]],
        },
        {"op": "null", "name": "alpha", "inputs": []},
        {"op": "MyOp", "name": "myop0", "inputs": [[11, 0, 0], [12, 0, 0]]},
    ]
    (tmp_path / "toy-symbol.json").write_text(symbol(nodes))
    names = [
        "learned_0",
        "learned_1",
        "learned_3",
        "bn_gamma",
        "bn_beta",
        "bn_moving_mean",
        "bn_moving_var",
        "alpha",
        "unused",
    ]
    shapes = [(2,), (2, 2, 3, 3), (2, 1, 3, 3), (2,), (2,), (2,), (2,), (1,), (5,)]
    arrays = [nd(arange(*s)) for s in shapes]
    ckpt = read(write(tmp_path / "toy-0007.params", params(arrays, [f"arg:{n}" for n in names])))
    assert list(ckpt.tensors) == [
        "convolution0.bias",
        "convolution1.weight",
        "convolution0.weight",
        "bn.gamma",
        "bn.beta",
        "bn.moving_mean",
        "bn.moving_var",
        "myop0.in1",
        "unused",
    ]
    assert tuple(ckpt.tensors["convolution0.weight"].shape) == (2, 1, 3, 3)
    assert ckpt.facts["names"]["convolution1.weight"] == "learned_1" and ckpt.facts["symbol"] == "toy-symbol.json"
    graph = ckpt.facts["graph"]
    assert [n["name"] for n in graph] == ["convolution0", "convolution1", "convolution2", "bn", "myop0"]
    assert graph[2]["inputs"] == ["convolution1", "convolution1.weight"]  # the shared weight, one key
    assert graph[1]["attrs"] == {"kernel": "(3, 3)", "no_bias": "True"}  # MXNet < 0.9 "param"
    assert graph[0]["attrs"]["pad"] == "(1, 1)"
    assert op_nodes({k: v for k, v in ckpt.tensors.items() if k.startswith("conv")}) == ["convolution0", "convolution1"]
    assert op_nodes(ckpt.tensors) is None and op_nodes({}) is None


def test_sniff_wants_the_list_magic(tmp_path: Path) -> None:
    good = params([nd(arange(2))], ["a"])
    assert sniff(write(tmp_path / "a.params", good)).name == "mxnet"
    assert sniff(write(tmp_path / "b.params", b"\x13" + good[1:])) is None
    assert sniff(write(tmp_path / "c.params", good[:8] + b"\x01" + good[9:])) is None  # reserved word not 0


DAMAGED = {
    "truncated data": lambda good: good[:60],
    "truncated name": lambda good: good[:-1],
    "trailing bytes": lambda good: good + b"\0",
    "names not matching": lambda good: params([nd(arange(2)), nd(arange(2))], ["a"]),
    "twice the same name": lambda good: params([nd(arange(2)), nd(arange(2))], ["arg:a", "a"]),
    "sparse": lambda good: params([struct.pack("<Ii", V2_MAGIC, 1) + nd(arange(2))[8:]], ["a"]),
    "unknown dtype": lambda good: params([nd(arange(2), flag=42)], ["a"]),
    "absurd header": lambda good: params([struct.pack("<I", 0x12345678) + b"\0" * 32], ["a"]),
    "absurd count": lambda good: struct.pack("<QQQ", 0x112, 0, 2**40) + good[24:],
    "negative dim": lambda good: params([struct.pack("<Iiiq", V2_MAGIC, 0, 1, -3) + b"\0" * 12], ["a"]),
    "not utf-8": lambda good: params([nd(arange(2))], [])[:-8] + struct.pack("<QQ", 1, 1) + b"\xff",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_files_are_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    good = params([nd(arange(3, 2))], ["arg:w"])
    path = write(tmp_path / "bad-0000.params", DAMAGED[damage](good))
    with pytest.raises(FormatError):
        read_arrays(path)
    with pytest.raises(WeightsError, match=r"bad-0000\.params: ") as err:
        read(path)
    assert "\n" not in str(err.value)


def test_damaged_graph_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "g-0000.params", params([nd(arange(2))], ["arg:w"]))
    for text in ("{not json", json.dumps({"nodes": [{"op": "relu", "name": "r", "inputs": [[5, 0, 0]]}]})):
        (tmp_path / "g-symbol.json").write_text(text)
        with pytest.raises(
            WeightsError, match=r"g-0000\.params: its graph g-symbol\.json is not a readable MXNet symbol"
        ):
            read(path)


# --- the fixtures of ../shared ---------------------------------------------------------------


def test_drrn_fixture() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "drrn_b1u25-0000.params"))
    shapes = {k: tuple(v.shape) for k, v in ckpt.tensors.items()}
    assert shapes == {
        "convolution0.weight": (128, 1, 3, 3),
        "convolution1.weight": (128, 128, 3, 3),
        "convolution2.weight": (128, 128, 3, 3),
        "convolution51.weight": (1, 128, 3, 3),
    }
    assert ckpt.facts["names"] == {
        "convolution0.weight": "learned_0",
        "convolution1.weight": "learned_1",
        "convolution2.weight": "learned_2",
        "convolution51.weight": "learned_3",
    }
    assert sum(v.numel() for v in ckpt.tensors.values()) == 297_216
    convs = [n for n in ckpt.facts["graph"] if n["op"] == "Convolution"]
    assert len(convs) == 52 and all(n["attrs"]["no_bias"] == "True" for n in convs)
    # the 25 recursions reuse the two unit weights
    assert sum(n["inputs"][1] == "convolution1.weight" for n in convs) == 25


def test_carn_fixture() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "carn_x2-0000.params"))
    assert len(ckpt.tensors) == 70 and all(v.dtype == torch.float32 for v in ckpt.tensors.values())
    assert sum(v.numel() for v in ckpt.tensors.values()) == 964_187
    assert sorted(set(ckpt.facts["names"].values())) == sorted(f"learned_{i}" for i in [*range(68), 74, 75])
    assert op_nodes(ckpt.tensors) == [f"convolution{i}" for i in range(35)]
    t = ckpt.tensors
    assert tuple(t["convolution0.weight"].shape) == (3, 3, 1, 1)  # the mean shifts, first and last
    assert torch.equal(t["convolution0.weight"].flatten(), torch.eye(3).flatten())
    assert torch.allclose(t["convolution34.bias"], torch.tensor([0.4488, 0.4371, 0.4040]))
    assert tuple(t["convolution32.weight"].shape) == (256, 64, 3, 3)  # the x2 sub-pixel conv
    ops = {n["op"] for n in ckpt.facts["graph"]}
    assert ops == {"Pad", "Convolution", "relu", "broadcast_add", "Concat", "Reshape", "transpose"}
