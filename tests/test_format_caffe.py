"""The Caffe reader (``upscale_cli/formats/caffe.py``): NetParameters this test encodes itself
(``layer`` and legacy ``layers``, packed and unpacked floats, BlobShape and legacy 4-D blobs),
damaged files, the sniffer against other formats, and the IDN authors' real ``.caffemodel`` files
against their deploy prototxts (../shared/checkpoints)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHECKPOINTS, need_shared

from upscale_cli import formats
from upscale_cli.errors import WeightsError
from upscale_cli.formats import caffe

# --- a tiny protobuf encoder (wire format only) ---------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes | str) -> bytes:
    """A length-delimited field (string, bytes, embedded message, packed numbers)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return tag(field, 2) + varint(len(data)) + data


def vi(field: int, n: int) -> bytes:
    return tag(field, 0) + varint(n)


def f32(field: int, x: float) -> bytes:
    return tag(field, 5) + struct.pack("<f", x)


def blob(values: np.ndarray, shape: tuple[int, ...] | None = None, legacy: bool = False,
         packed: bool = True, double: bool = False) -> bytes:
    """A BlobProto: ``shape`` as BlobShape (field 7) or legacy num/channels/height/width."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if double:
        body = ld(8, flat.astype("<f8").tobytes())
    elif packed:
        body = ld(5, flat.astype("<f4").tobytes())
    else:
        body = b"".join(f32(5, float(x)) for x in flat)
    if legacy:
        dims = (1,) * (4 - len(shape)) + tuple(shape)
        return b"".join(vi(f, d) for f, d in zip((1, 2, 3, 4), dims)) + body
    return ld(7, ld(1, b"".join(varint(d) for d in shape))) + body


def conv_param(num_output: int, kernel: int, pad: int, stride: int = 1, group: int = 1) -> bytes:
    return vi(1, num_output) + vi(3, pad) + vi(4, kernel) + vi(5, group) + vi(6, stride)


def layer(
    name: str, kind: str, bottom: list[str], top: list[str], blobs: list[bytes] = (), extra: bytes = b""
) -> bytes:
    """A LayerParameter (NetParameter.layer = 100)."""
    body = ld(1, name) + ld(2, kind) + b"".join(ld(3, b) for b in bottom) + b"".join(ld(4, t) for t in top)
    return ld(100, body + b"".join(ld(7, b) for b in blobs) + extra)


def v1_layer(
    name: str, kind: int, bottom: list[str], top: list[str], blobs: list[bytes] = (), extra: bytes = b""
) -> bytes:
    """A V1LayerParameter (NetParameter.layers = 2): type is the LayerType enum."""
    body = b"".join(ld(2, b) for b in bottom) + b"".join(ld(3, t) for t in top) + ld(4, name) + vi(5, kind)
    return ld(2, body + b"".join(ld(6, b) for b in blobs) + extra)


W = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7 - 2
B = np.array([0.5, -1.25], dtype=np.float32)


def write(tmp_path: Path, data: bytes, name: str = "net.caffemodel") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_layer_net_packed_blobs_with_shape(tmp_path: Path) -> None:
    net = (
        ld(1, "tiny")
        + layer("data", "Input", [], ["data"])
        + layer("conv1", "Convolution", ["data"], ["conv1"], [blob(W, W.shape), blob(B, B.shape)],
                ld(106, conv_param(2, 3, 1)))
        + layer("relu1", "ReLU", ["conv1"], ["conv1"], extra=ld(123, f32(1, 0.05)))
    )
    ckpt = formats.read(write(tmp_path, net))
    assert ckpt.format == "caffe" and list(ckpt.tensors) == ["conv1.0", "conv1.1"]
    assert ckpt.tensors["conv1.0"].dtype == torch.float32
    torch.testing.assert_close(ckpt.tensors["conv1.0"], torch.from_numpy(W), rtol=0, atol=0)
    torch.testing.assert_close(ckpt.tensors["conv1.1"], torch.from_numpy(B), rtol=0, atol=0)
    assert ckpt.facts["name"] == "tiny"
    assert [(lay["name"], lay["type"], lay["bottom"], lay["top"]) for lay in ckpt.facts["layers"]] == [
        ("data", "Input", [], ["data"]),
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("relu1", "ReLU", ["conv1"], ["conv1"]),
    ]
    conv = ckpt.facts["layers"][1]["convolution"]
    assert conv == {"num_output": 2, "kernel": [3, 3], "stride": [1, 1], "pad": [1, 1], "dilation": [1, 1],
                    "group": 1, "bias_term": True}
    assert ckpt.facts["layers"][2]["negative_slope"] == pytest.approx(0.05)


def test_legacy_layers_unpacked_floats_and_4d_dims(tmp_path: Path) -> None:
    net = (
        ld(1, "old")
        + v1_layer("conv1", 4, ["data"], ["conv1"],
                   [blob(W, W.shape, legacy=True, packed=False), blob(B, B.shape, legacy=True, packed=False)],
                   ld(10, vi(1, 2) + vi(11, 3) + vi(12, 3)))
        + v1_layer("relu1", 18, ["conv1"], ["conv1"])
    )
    net += v1_layer("up", 39, ["conv1"], ["up"], [blob(W, W.shape, legacy=True, double=True)])
    ckpt = formats.read(write(tmp_path, net, "old.caffemodel"))
    assert [lay["type"] for lay in ckpt.facts["layers"]] == ["Convolution", "ReLU", "Deconvolution"]
    assert ckpt.facts["layers"][0]["convolution"]["kernel"] == [3, 3]  # kernel_h / kernel_w
    assert ckpt.tensors["conv1.1"].shape == (1, 1, 1, 2)  # legacy blobs are always 4-D
    torch.testing.assert_close(ckpt.tensors["conv1.0"], torch.from_numpy(W), rtol=0, atol=0)
    torch.testing.assert_close(ckpt.tensors["conv1.1"].flatten(), torch.from_numpy(B), rtol=0, atol=0)
    assert ckpt.tensors["up.0"].dtype == torch.float32  # double_data
    torch.testing.assert_close(ckpt.tensors["up.0"], torch.from_numpy(W), rtol=0, atol=0)


def test_sniffed_by_content_without_the_suffix(tmp_path: Path) -> None:
    layer_first = write(tmp_path, layer("c", "Convolution", ["x"], ["c"], [blob(B, B.shape)]), "weights.bin")
    legacy = write(tmp_path, v1_layer("c", 4, ["x"], ["c"], [blob(B, B.shape)]), "legacy.dat")
    named = write(tmp_path, ld(1, "net name") + layer("c", "Convolution", ["x"], ["c"], [blob(B, B.shape)]), "model")
    for path in (layer_first, legacy, named):
        assert formats.sniff(path) is caffe.FORMAT, path.name


def test_never_claims_other_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"conv.weight": torch.ones(2, 2)}
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(sd, str(tmp_path / "t.safetensors"))
    (tmp_path / "m.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + bytes(200))
    (tmp_path / "mx.params").write_bytes(struct.pack("<QQ", 0x112, 0) + bytes(64))  # MXNet NDArray list
    (tmp_path / "text.txt").write_bytes(b'name: "IDN_x2"\ninput: "data"\n')  # a prototxt is text
    (tmp_path / "zeros.bin").write_bytes(bytes(64))
    for path in sorted(tmp_path.iterdir()):
        head = path.read_bytes()[: formats.HEAD]
        assert not caffe.FORMAT.sniff(path, head), path.name


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (layer("c", "Convolution", [], [], [blob(W, (2, 3, 3, 4))]), "blob c.0 holds 54 values for shape (2, 3, 3, 4)"),
        (ld(1, "n") + vi(5, 1), "no Caffe layers"),
        (layer("c", "Convolution", [], []) + v1_layer("d", 4, [], []), "both 'layer' and legacy 'layers'"),
        (ld(2, ld(1, ld(1, "v0"))), "a V0 Caffe net"),
        (
            layer("c", "X", [], [], [blob(B, B.shape)]) + layer("c", "X", [], [], [blob(B, B.shape)]),
            "two layers named 'c'",
        ),
        (layer("c", "Convolution", [], []), "holds no tensors"),
    ],
    ids=["shape-mismatch", "no-layers", "both-kinds", "v0", "duplicate", "no-blobs"],
)
def test_bad_nets_are_one_line_errors(tmp_path: Path, data: bytes, cause: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(WeightsError) as err:
        formats.read(path)
    assert str(path) in str(err.value) and cause in str(err.value) and "\n" not in str(err.value)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    net = layer("conv1", "Convolution", ["data"], ["conv1"], [blob(W, W.shape), blob(B, B.shape)])
    for cut in (len(net) - 3, len(net) // 2, 5):
        path = write(tmp_path, net[:cut], f"cut{cut}.caffemodel")
        with pytest.raises(WeightsError, match=r"truncated") as err:
            formats.read(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    path = write(tmp_path, net + b"\x0f", "wire.caffemodel")  # a tag with wire type 7
    with pytest.raises(WeightsError, match="damaged"):
        formats.read(path)


# --- the IDN authors' files -----------------------------------------------------------------

SOURCES = CHECKPOINTS / "sources"


def prototxt_layers(path: Path) -> list[dict]:
    """The ``layer { ... }`` blocks of a deploy prototxt: name, type, bottom, top and the numbers
    the shapes depend on (a reader just good enough for these files)."""
    text = need_shared(path).read_text().replace("\r", "\n")
    blocks, depth, start = [], 0, None
    for m in re.finditer(r"\blayer\s*\{|[{}]", text):
        if m.group().startswith("layer") and depth == 0:
            start = m.end()
        if m.group().endswith("{"):
            depth += 1
        else:
            depth -= 1
            if depth == 0 and start is not None:
                blocks.append(text[start : m.start()])
                start = None

    def num(block: str, key: str, default: int) -> int:
        m = re.search(rf"\b{key}:\s*(\d+)", block)
        return int(m[1]) if m else default

    return [
        {
            "name": re.search(r'name:\s*"([^"]+)"', b)[1],
            "type": re.search(r'type:\s*"([^"]+)"', b)[1],
            "bottom": re.findall(r'bottom:\s*"([^"]+)"', b),
            "top": re.findall(r'top:\s*"([^"]+)"', b),
            **{k: num(b, k, d) for k, d in (("num_output", 0), ("kernel_size", 1), ("stride", 1), ("pad", 0),
                                            ("group", 1), ("slice_point", 0))},
            "slope": float(m[1]) if (m := re.search(r"negative_slope:\s*([\d.]+)", b)) else None,
        }
        for b in blocks
    ]


def expected_blobs(layers: list[dict]) -> dict[str, tuple[int, ...]]:
    """The blob shapes Caffe gives the prototxt's layers, channels tracked through the graph."""
    channels, out = {"data": 1}, {}
    for lay in layers:
        kind, bottoms = lay["type"], [channels[b] for b in lay["bottom"]]
        if kind in ("Convolution", "Deconvolution"):
            n, k, g = lay["num_output"], lay["kernel_size"], lay["group"]
            out[f"{lay['name']}.0"] = (
                (n, bottoms[0] // g, k, k) if kind == "Convolution" else (bottoms[0], n // g, k, k)
            )
            out[f"{lay['name']}.1"] = (n,)
            tops = [n]
        elif kind == "Slice":
            tops = [lay["slice_point"], bottoms[0] - lay["slice_point"]]
        elif kind == "Concat":
            tops = [sum(bottoms)]
        else:  # ReLU, Split, Eltwise keep the channels
            tops = [bottoms[0]] * len(lay["top"])
        channels.update(zip(lay["top"], tops))
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_idn_caffemodels_match_their_deploy_prototxt(scale: int, tmp_path: Path) -> None:
    path = need_shared(CHECKPOINTS / f"idn_x{scale}.caffemodel")
    deploy = prototxt_layers(SOURCES / f"IDN_x{scale}_deploy.prototxt")
    ckpt = formats.read(path)
    unnamed = tmp_path / "weights"  # recognised by its content too
    unnamed.symlink_to(path)
    assert ckpt.format == "caffe" and formats.sniff(unnamed) is caffe.FORMAT
    assert {k: tuple(v.shape) for k, v in ckpt.tensors.items()} == expected_blobs(deploy)
    assert sum(v.numel() for v in ckpt.tensors.values()) == 552_769
    # the saved net is the training net: the deploy layers, in the same order, plus data/loss layers
    saved = {lay["name"]: lay for lay in ckpt.facts["layers"]}
    names = {d["name"] for d in deploy}
    assert [lay["name"] for lay in ckpt.facts["layers"] if lay["name"] in names] == [d["name"] for d in deploy]
    for d in deploy:
        got = saved[d["name"]]
        assert got["type"] == d["type"], d["name"]
        if "convolution" in got:
            conv = got["convolution"]
            assert (conv["num_output"], conv["kernel"], conv["stride"], conv["pad"], conv["group"]) == (
                d["num_output"], [d["kernel_size"]] * 2, [d["stride"]] * 2, [d["pad"]] * 2, d["group"]
            ), d["name"]
        if d["type"] == "ReLU":
            assert got["negative_slope"] == pytest.approx(d["slope"]) == pytest.approx(0.05)
    assert saved["upsample"]["convolution"]["stride"] == [scale, scale]
