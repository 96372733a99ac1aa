"""The MATLAB v5 ``.mat`` reader (upscale_cli/formats/matlab.py).

Small files written here by a tiny MAT-file writer (uncompressed and compressed elements, both
byte orders) must read back exactly; the real fixtures of ../shared are spot-checked against
facts of those files (names, shapes, counts, a few values checked with scipy when written).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CHECKPOINTS, need_shared

from upscale_cli.errors import WeightsError
from upscale_cli.formats import read, sniff

# --- a tiny MAT-file (level 5) writer --------------------------------------------------------

_MI_CODES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_CLASS_CODES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_MI = {np.dtype(code): kind for kind, code in _MI_CODES.items()}
_CLASS = {np.dtype(code): cls for cls, code in _CLASS_CODES.items()}


@dataclass
class StructArray:
    """A MATLAB struct array of the given dims (items column-major, same fields)."""

    items: list[dict[str, Any]]
    dims: tuple[int, ...]


@dataclass
class Sparse:
    """Stands for a sparse matrix (only its class code is written)."""


class Writer:
    def __init__(self, order: str = "<", compress: bool = False, small: bool = True) -> None:
        self.order, self.compress, self.small = order, compress, small

    def element(self, kind: int, payload: bytes) -> bytes:
        if self.small and len(payload) <= 4 and kind != 14:
            return struct.pack(self.order + "I", kind | len(payload) << 16) + payload.ljust(4, b"\0")
        pad = -len(payload) % 8
        return struct.pack(self.order + "II", kind, len(payload)) + payload + b"\0" * pad

    def numbers(self, array: np.ndarray) -> bytes:
        array = np.asarray(array)
        return self.element(_MI[array.dtype], array.astype(array.dtype.newbyteorder(self.order)).tobytes(order="F"))

    def header(self, cls: int, dims: tuple[int, ...], name: str, flags: int = 0) -> bytes:
        return (
            self.numbers(np.array([cls | flags, 0], dtype="u4"))
            + self.numbers(np.array(dims, dtype="i4"))
            + self.element(1, name.encode())
        )

    def matrix(self, value: Any, name: str = "") -> bytes:
        if isinstance(value, np.ndarray):
            logical = value.dtype == bool
            stored = value.astype("u1") if logical else value
            body = self.header(9 if logical else _CLASS[value.dtype], value.shape, name, 0x200 * logical)
            body += self.numbers(stored)
        elif isinstance(value, str):
            body = self.header(4, (1, len(value)), name) + self.numbers(np.frombuffer(value.encode("utf-16-le"), "<u2"))
        elif isinstance(value, list):  # a 1xN cell
            body = self.header(1, (1, len(value)), name) + b"".join(self.matrix(v) for v in value)
        elif isinstance(value, (dict, StructArray)):
            items, dims = ([value], (1, 1)) if isinstance(value, dict) else (value.items, value.dims)
            fields = list(items[0])
            width = max(len(f) for f in fields) + 1
            body = self.header(2, dims, name) + self.numbers(np.array([width], dtype="i4"))
            body += self.element(1, b"".join(f.encode().ljust(width, b"\0") for f in fields))
            body += b"".join(self.matrix(item[f]) for item in items for f in fields)
        elif isinstance(value, Sparse):
            body = self.header(5, (2, 2), name)
        else:
            raise TypeError(type(value))
        return self.element(14, body)

    def file(self, variables: dict[str, Any]) -> bytes:
        text = b"MATLAB 5.0 MAT-file, written by the upscale-cli tests".ljust(116)
        endian = b"IM" if self.order == "<" else b"MI"
        out = text + b" " * 8 + struct.pack(self.order + "H", 0x0100) + endian
        for name, value in variables.items():
            el = self.matrix(value, name)
            out += struct.pack(self.order + "II", 15, len(z := zlib.compress(el))) + z if self.compress else el
        return out


def write(path: Path, variables: dict[str, Any], **kwargs: Any) -> Path:
    path.write_bytes(Writer(**kwargs).file(variables))
    return path


# --- small files ---------------------------------------------------------------------------

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((3, 3, 2, 4))  # double, H x W x IN x OUT
W2 = RNG.standard_normal((3, 3, 4)).astype("f4")  # single, 3x3x4x1 with the trailing 1 dropped
B1 = RNG.standard_normal((4, 1)).astype("f4")
TREE = {
    "model": {
        "weight": [W1, W2],
        "bias": [B1, np.zeros((0, 0))],  # [] is left out
        "name": "vdsr",
        "steps": np.array([[1, 2, 300]], dtype="u2"),
        "ids": np.arange(-3, 3, dtype="i8").reshape(2, 3),
        "mask": np.array([[True, False]]),
    },
    "s": StructArray([{"w": np.array([[1.5]])}, {"w": np.array([[2, 3]], dtype="i1")}], (1, 2)),
}


@pytest.mark.parametrize(
    "options", [{}, {"compress": True}, {"order": ">"}, {"order": ">", "compress": True}, {"small": False}]
)
def test_tree_round_trip(tmp_path: Path, options: dict[str, Any]) -> None:
    ckpt = read(write(tmp_path / "tree.mat", TREE, **options))
    assert ckpt.format == "matlab" and ckpt.facts["layout"] == "tree"
    expected = {
        "model.weight.1": torch.from_numpy(W1).float(),
        "model.weight.2": torch.from_numpy(W2),
        "model.bias.1": torch.from_numpy(B1),
        "model.steps": torch.tensor([[1, 2, 300]], dtype=torch.int32),  # uint16 widens
        "model.ids": torch.arange(-3, 3).reshape(2, 3),
        "model.mask": torch.tensor([[True, False]]),
        "s.1.w": torch.tensor([[1.5]]),
        "s.2.w": torch.tensor([[2, 3]], dtype=torch.int8),
    }
    assert list(ckpt.tensors) == list(expected)
    for key, want in expected.items():
        got = ckpt.tensors[key]
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), key
    assert ckpt.tensors["model.weight.1"][1, 2, 0, 3] == float(np.float32(W1[1, 2, 0, 3]))  # MATLAB's index order
    assert ckpt.facts["strings"] == {"model.name": "vdsr"}
    assert ckpt.facts["variables"] == ["model", "s"]


def test_dagnn_struct_gives_param_names_and_layer_facts(tmp_path: Path) -> None:
    f = RNG.standard_normal((3, 3, 1, 8)).astype("f4")
    b = RNG.standard_normal((1, 8)).astype("f4")
    up = RNG.standard_normal((4, 4)).astype("f4")
    params = StructArray(
        [{"name": n, "value": v, "learningRate": np.array([[1.0]])} for n, v in (("c_f", f), ("c_b", b), ("up_f", up))],
        (1, 3),
    )
    conv_block = {
        "size": np.array([[3.0, 3, 1, 8]]),
        "hasBias": np.array([[True]]),
        "opts": ["cuDNN"],
        "pad": np.array([[1.0, 1, 1, 1]]),
        "stride": np.array([[1.0, 1]]),
    }
    layers = StructArray(
        [
            {
                "name": "c",
                "type": "dagnn.Conv",
                "inputs": ["LR"],
                "outputs": ["c"],
                "params": ["c_f", "c_b"],
                "block": conv_block,
            },
            {
                "name": "r",
                "type": "dagnn.ReLU",
                "inputs": ["c"],
                "outputs": ["r"],
                "params": np.zeros((0, 0)),
                "block": {"leak": np.array([[0.2]]), "opts": np.zeros((0, 0))},
            },
            {
                "name": "u",
                "type": "dagnn.ConvTranspose",
                "inputs": ["r"],
                "outputs": ["u"],
                "params": ["up_f"],
                "block": {"upsample": np.array([[2.0, 2]]), "crop": np.array([[1.0, 1, 1, 1]])},
            },
        ],
        (1, 3),
    )
    net = {"vars": StructArray([{"name": "LR"}], (1, 1)), "params": params, "layers": layers, "meta": np.zeros((0, 0))}
    ckpt = read(write(tmp_path / "net.mat", {"stats": {"loss": np.ones((1, 5))}, "net": net}, compress=True))
    assert ckpt.facts["layout"] == "dagnn" and ckpt.facts["variable"] == "net"
    assert list(ckpt.tensors) == ["c_f", "c_b", "up_f"]  # the other variable (stats) is left out
    for key, want in (("c_f", f), ("c_b", b), ("up_f", up)):
        assert torch.equal(ckpt.tensors[key], torch.from_numpy(want))
    assert ckpt.facts["layers"] == [
        {
            "size": [3.0, 3.0, 1.0, 8.0],
            "hasBias": True,
            "opts": ["cuDNN"],
            "pad": [1.0, 1.0, 1.0, 1.0],
            "stride": [1.0, 1.0],
            "name": "c",
            "type": "dagnn.Conv",
            "inputs": ["LR"],
            "outputs": ["c"],
            "params": ["c_f", "c_b"],
        },
        {"leak": 0.2, "opts": [], "name": "r", "type": "dagnn.ReLU", "inputs": ["c"], "outputs": ["r"], "params": []},
        {
            "upsample": [2.0, 2.0],
            "crop": [1.0, 1.0, 1.0, 1.0],
            "name": "u",
            "type": "dagnn.ConvTranspose",
            "inputs": ["r"],
            "outputs": ["u"],
            "params": ["up_f"],
        },
    ]


def test_sniff_claims_mat_files_only(tmp_path: Path) -> None:
    mat = write(tmp_path / "a.mat", {"x": np.ones((2, 2))})
    assert sniff(mat).name == "matlab"
    other = tmp_path / "b.mat"
    other.write_bytes(b"MATLAB 4.0 is not this" + bytes(200))
    assert sniff(other) is None or sniff(other).name != "matlab"


def _one_line_error(path: Path, *words: str) -> None:
    with pytest.raises(WeightsError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


def test_damaged_files_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    good = Writer().file(TREE)
    (truncated := tmp_path / "truncated.mat").write_bytes(good[: len(good) // 2])
    _one_line_error(truncated, "truncated")
    packed = bytearray(Writer(compress=True).file(TREE))
    packed[150:160] = b"\xff" * 10
    (zipped := tmp_path / "zlib.mat").write_bytes(bytes(packed))
    _one_line_error(zipped, "compressed")
    (marker := tmp_path / "marker.mat").write_bytes(good[:126] + b"XX" + good[128:])
    _one_line_error(marker, "byte-order")
    _one_line_error(write(tmp_path / "sparse.mat", {"a": Sparse()}), "sparse")
    (v73 := tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(512))
    _one_line_error(v73, "v7.3", "HDF5")
    _one_line_error(write(tmp_path / "empty.mat", {"s": "text only"}), "holds no tensors")


# --- the real fixtures ---------------------------------------------------------------------


def test_vdsr_official_mat() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "vdsr_official.mat"))
    t = ckpt.tensors
    assert ckpt.facts["layout"] == "tree" and ckpt.facts["variables"] == ["model"]
    assert sorted(t) == sorted([f"model.{k}.{i}" for k in ("weight", "bias") for i in range(1, 21)])
    assert t["model.weight.1"].shape == (3, 3, 1, 64) and t["model.weight.20"].shape == (3, 3, 64)
    assert all(t[f"model.weight.{i}"].shape == (3, 3, 64, 64) for i in range(2, 20))
    assert t["model.bias.1"].shape == (64, 1) and t["model.bias.20"].shape == (1, 1)
    assert all(v.dtype == torch.float32 for v in t.values())
    assert sum(v.numel() for v in t.values()) == 665_921
    # MATLAB's model.weight{1}(1,1,1,1) and (2,1,1,1), as scipy.io.loadmat reads them
    assert t["model.weight.1"][0, 0, 0, 0].item() == pytest.approx(-0.00407601, abs=1e-8)
    assert t["model.weight.1"][1, 0, 0, 0].item() == pytest.approx(-0.16945185, abs=1e-8)


def test_lapsrn_x2_mat_is_a_dagnn() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "lapsrn_x2.mat"))
    assert ckpt.facts["layout"] == "dagnn" and ckpt.facts["variable"] == "net"
    t, layers = ckpt.tensors, ckpt.facts["layers"]
    assert len(t) == 27 and len(layers) == 28
    assert t["input_conv_f"].shape == (3, 3, 1, 64) and t["input_conv_b"].shape == (1, 64)
    assert t["level1_residual_conv_f"].shape == (3, 3, 64) and t["level1_img_up_f"].shape == (4, 4)
    assert layers[0] == {
        "size": [3.0, 3.0, 1.0, 64.0],
        "hasBias": True,
        "opts": ["cuDNN"],
        "pad": [1.0, 1.0, 1.0, 1.0],
        "stride": [1.0, 1.0],
        "dilate": [1.0, 1.0],
        "name": "input_conv",
        "type": "dagnn.Conv",
        "inputs": ["LR"],
        "outputs": ["input_conv"],
        "params": ["input_conv_f", "input_conv_b"],
    }
    assert layers[1]["type"] == "dagnn.ReLU" and layers[1]["leak"] == pytest.approx(0.2)
    img_up = next(layer for layer in layers if layer["name"] == "level1_img_up")
    assert img_up["type"] == "dagnn.ConvTranspose" and img_up["upsample"] == [2.0, 2.0]
    assert img_up["crop"] == [1.0, 1.0, 1.0, 1.0] and img_up["params"] == ["level1_img_up_f"]


def test_mslapsrn_d5r8_mat_is_a_dagnn() -> None:
    ckpt = read(need_shared(CHECKPOINTS / "mslapsrn_d5r8.mat"))  # also holds a large `stats` struct array
    assert ckpt.facts["layout"] == "dagnn" and len(ckpt.facts["layers"]) == 567
    t = ckpt.tensors
    assert len(t) == 17 and sum(v.numel() for v in t.values()) == 222_801
    assert t["conv5_f"].shape == (3, 3, 64, 64) and t["upconv_b"].shape == (1, 64) and t["img_up_f"].shape == (4, 4)
    assert ckpt.facts["layers"][0]["params"] == ["input_conv_f", "input_conv_b"]
