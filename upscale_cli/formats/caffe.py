"""Caffe ``.caffemodel`` files: one serialised ``caffe.NetParameter`` protocol buffer
(``src/caffe/proto/caffe.proto``, BVLC/caffe), decoded here by a minimal reader of the protobuf
wire format (varints, length-delimited fields, fixed32/fixed64; packed and unpacked repeated
numbers) - neither Caffe nor the protobuf package is needed, and nothing in the file is run.

Fields read (caffe.proto field numbers):

* ``NetParameter``: ``name`` 1, ``layer`` 100 (``LayerParameter``), and the legacy ``layers``
  2 (``V1LayerParameter``, nets saved before 2015).  A net with both is refused, as Caffe does;
  so are V0 nets (``V1LayerParameter.layer`` 1, before 2014).
* ``LayerParameter``: ``name`` 1, ``type`` 2, ``bottom`` 3, ``top`` 4, ``blobs`` 7,
  ``convolution_param`` 106, ``relu_param`` 123.
* ``V1LayerParameter``: ``bottom`` 2, ``top`` 3, ``name`` 4, ``type`` 5 (the ``LayerType``
  enum, reported by the type name Caffe's upgrade gives it: ``CONVOLUTION`` -> ``"Convolution"``),
  ``blobs`` 6, ``convolution_param`` 10, ``relu_param`` 30.
* ``BlobProto``: ``shape`` 7 (``BlobShape.dim`` 1), ``data`` 5 (float), ``double_data`` 8;
  the legacy 4-D ``num`` 1, ``channels`` 2, ``height`` 3, ``width`` 4 take precedence over
  ``shape`` when present (Caffe's ``Blob::FromProto``).

Keys are ``<layer name>.<blob index>``: ``conv1.0`` is the weight and ``conv1.1`` the bias of
layer ``conv1``.  Tensors have the blob's shape as stored: a Convolution weight is ``(out,
in / group, kh, kw)`` (``nn.Conv2d``'s layout), a Deconvolution weight ``(in, out / group, kh,
kw)`` (``nn.ConvTranspose2d``'s), a bias ``(out,)``; a legacy blob is always 4-D, so a legacy
bias arrives as ``(1, 1, 1, out)``.  ``data`` and ``double_data`` both become float32.

``facts``: ``name`` (the net's) and ``layers``, every layer in file order as ``{"name",
"type", "bottom", "top"}``, plus ``"convolution"`` (``num_output``, ``kernel``, ``stride``,
``pad``, ``dilation`` as ``[h, w]``, ``group``, ``bias_term``) for layers that carry
convolution parameters and ``"negative_slope"`` for ReLUs that set one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import Checkpoint, Format, FormatError

SUFFIX = ".caffemodel"

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

# NetParameter fields and the wire types they may have (a repeated int64 may come packed)
_NET_FIELDS = {
    1: {_LEN}, 2: {_LEN}, 3: {_LEN}, 4: {_VARINT, _LEN}, 5: {_VARINT}, 6: {_LEN}, 7: {_VARINT}, 8: {_LEN}, 100: {_LEN}
}
_NAME, _LAYERS_V1, _LAYER = 1, 2, 100

# (name, type, bottom, top, blobs, convolution_param, relu_param) field numbers
_LAYER_FIELDS = (1, 2, 3, 4, 7, 106, 123)
_V1_FIELDS = (4, 5, 2, 3, 6, 10, 30)
_V0_LAYER = 1

# V1LayerParameter.LayerType -> the LayerParameter type string (caffe/util/upgrade_proto.cpp)
_V1_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData",
    13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
    18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH",
    24: "WindowData", 25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
    29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
    35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}

Fields = dict[int, list[tuple[int, Any]]]
"""A decoded message: field number -> ``(wire type, value)`` in file order; a varint's value is
an int, a fixed32/64's its raw bytes, a length-delimited field's its ``(start, end)`` span."""


# --- wire format ---------------------------------------------------------------------------


class _Truncated(FormatError):
    """A field runs past the end of its message (or of the bytes at hand)."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(f"truncated: a varint runs past byte {end}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise FormatError(f"damaged: a varint longer than 10 bytes at byte {pos}")


def _scan(buf: bytes, start: int, end: int, partial: bool = False) -> Iterator[tuple[int, int, Any]]:
    """The ``(field, wire type, value)`` of the message in ``buf[start:end]`` (values as in
    :data:`Fields`).  With ``partial`` a field cut off by ``end`` ends the scan quietly (a
    file's first bytes); damage still raises :class:`FormatError`."""
    pos = start
    while pos < end:
        try:
            tag, pos = _varint(buf, pos, end)
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise FormatError(f"damaged: field number 0 at byte {pos}")
            if wire == _VARINT:
                value, pos = _varint(buf, pos, end)
            elif wire in (_FIXED64, _FIXED32):
                size = 8 if wire == _FIXED64 else 4
                value, pos = buf[pos : pos + size], pos + size
            elif wire == _LEN:
                size, pos = _varint(buf, pos, end)
                value, pos = (pos, pos + size), pos + size
            else:
                raise FormatError(f"damaged: wire type {wire} (field {field}) at byte {pos}")
            if pos > end:
                raise _Truncated(f"truncated: field {field} runs past byte {end}")
        except _Truncated:
            if partial:
                return
            raise
        yield field, wire, value


def _fields(buf: bytes, span: tuple[int, int]) -> Fields:
    out: Fields = {}
    for field, wire, value in _scan(buf, *span):
        out.setdefault(field, []).append((wire, value))
    return out


def _signed(value: int) -> int:
    """An int64 from its varint (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _ints(buf: bytes, msg: Fields, field: int) -> list[int]:
    """A repeated (u)int32/64 field, packed or not."""
    out: list[int] = []
    for wire, value in msg.get(field, ()):
        if wire == _VARINT:
            out.append(_signed(value))
        elif wire == _LEN:
            pos, end = value
            while pos < end:
                item, pos = _varint(buf, pos, end)
                out.append(_signed(item))
        else:
            raise FormatError(f"damaged: integer field {field} with wire type {wire}")
    return out


def _int(buf: bytes, msg: Fields, field: int, default: int) -> int:
    values = _ints(buf, msg, field)
    return values[-1] if values else default


def _reals(buf: bytes, msg: Fields, field: int, double: bool) -> np.ndarray:
    """A repeated float (or double) field, packed or not, as one float32 array."""
    dtype, wire_one = ("<f8", _FIXED64) if double else ("<f4", _FIXED32)
    size = np.dtype(dtype).itemsize
    parts: list[np.ndarray] = []
    for wire, value in msg.get(field, ()):
        if wire == _LEN:
            start, end = value
            if (end - start) % size:
                raise FormatError(
                    f"damaged: packed field {field} of {end - start} bytes is not whole {dtype[1:]} values"
                )
            parts.append(np.frombuffer(buf, dtype=dtype, count=(end - start) // size, offset=start))
        elif wire == wire_one:
            parts.append(np.frombuffer(value, dtype=dtype))
        else:
            raise FormatError(f"damaged: real field {field} with wire type {wire}")
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def _real(buf: bytes, msg: Fields, field: int) -> float | None:
    values = _reals(buf, msg, field, double=False)
    return float(values[-1]) if values.size else None


def _strings(buf: bytes, msg: Fields, field: int) -> list[str]:
    out = []
    for wire, value in msg.get(field, ()):
        if wire != _LEN:
            raise FormatError(f"damaged: string field {field} with wire type {wire}")
        try:
            out.append(bytes(buf[value[0] : value[1]]).decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError(f"damaged: string field {field} is not UTF-8") from None
    return out


def _message(buf: bytes, msg: Fields, field: int) -> Fields:
    """The last occurrence of an embedded-message field (``{}`` when absent)."""
    spans = [value for wire, value in msg.get(field, ()) if wire == _LEN]
    return _fields(buf, spans[-1]) if spans else {}


# --- caffe messages ------------------------------------------------------------------------


def _blob(buf: bytes, span: tuple[int, int], key: str) -> Tensor:
    """A ``BlobProto`` as a tensor of its shape."""
    msg = _fields(buf, span)
    data = _reals(buf, msg, 5, double=False)
    if not data.size:
        data = _reals(buf, msg, 8, double=True)
    if any(f in msg for f in (1, 2, 3, 4)):  # legacy (num, channels, height, width)
        shape = [_int(buf, msg, f, 0) for f in (1, 2, 3, 4)]
    else:
        shape = _ints(buf, _message(buf, msg, 7), 1)
    if any(d < 0 for d in shape) or int(np.prod(shape)) != data.size:
        raise FormatError(f"blob {key} holds {data.size} values for shape {tuple(shape)}")
    return torch.from_numpy(data.reshape(shape))  # concatenate made a writable copy


def _pair(buf: bytes, msg: Fields, field: int, default: int, hw: tuple[int, int] | None = None) -> list[int]:
    """A ``ConvolutionParameter`` spatial setting as ``[h, w]``: the ``hw`` fields
    (``kernel_h``, ``kernel_w``) when set, else the repeated ``field`` (one value serves every axis)."""
    if hw is not None and (hw[0] in msg or hw[1] in msg):
        return [_int(buf, msg, hw[0], default), _int(buf, msg, hw[1], default)]
    values = _ints(buf, msg, field)
    return values * 2 if len(values) == 1 else values or [default, default]


def _convolution(buf: bytes, msg: Fields) -> dict[str, Any]:
    """The facts of a ``ConvolutionParameter``."""
    return {
        "num_output": _int(buf, msg, 1, 0),
        "kernel": _pair(buf, msg, 4, 0, (11, 12)),
        "stride": _pair(buf, msg, 6, 1, (13, 14)),
        "pad": _pair(buf, msg, 3, 0, (9, 10)),
        "dilation": _pair(buf, msg, 18, 1),
        "group": _int(buf, msg, 5, 1),
        "bias_term": bool(_int(buf, msg, 2, 1)),
    }


def _layer(buf: bytes, span: tuple[int, int], legacy: bool) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """A layer's facts and the spans of its blobs."""
    msg = _fields(buf, span)
    if legacy and _V0_LAYER in msg:
        raise FormatError("a V0 Caffe net (before 2014): upgrade it with Caffe's upgrade_net_proto_binary")
    name_f, type_f, bottom_f, top_f, blobs_f, conv_f, relu_f = _V1_FIELDS if legacy else _LAYER_FIELDS
    names = _strings(buf, msg, name_f)
    if legacy:
        code = _int(buf, msg, type_f, 0)
        kind = _V1_TYPES.get(code, f"V1 layer type {code}")
    else:
        kind = "".join(_strings(buf, msg, type_f)[-1:])
    facts: dict[str, Any] = {
        "name": names[-1] if names else "",
        "type": kind,
        "bottom": _strings(buf, msg, bottom_f),
        "top": _strings(buf, msg, top_f),
    }
    if conv_f in msg:
        facts["convolution"] = _convolution(buf, _message(buf, msg, conv_f))
    if relu_f in msg and (slope := _real(buf, _message(buf, msg, relu_f), 1)) is not None:
        facts["negative_slope"] = slope
    return facts, [value for wire, value in msg.get(blobs_f, ()) if wire == _LEN]


def _read(path: Path, key: str | None) -> Checkpoint:
    buf = path.read_bytes()
    net = _fields(buf, (0, len(buf)))
    if _LAYER in net and _LAYERS_V1 in net:
        raise FormatError("a net with both 'layer' and legacy 'layers' fields (Caffe refuses it too)")
    legacy = _LAYERS_V1 in net
    spans = [value for wire, value in net.get(_LAYERS_V1 if legacy else _LAYER, ()) if wire == _LEN]
    if not spans:
        raise FormatError("a protocol buffer with no Caffe layers (no NetParameter.layer or .layers)")
    tensors: dict[str, Tensor] = {}
    layers = []
    for span in spans:
        facts, blobs = _layer(buf, span, legacy)
        layers.append(facts)
        for i, blob in enumerate(blobs):
            name = f"{facts['name']}.{i}"
            if name in tensors:
                raise FormatError(f"two layers named {facts['name']!r} hold blobs")
            tensors[name] = _blob(buf, blob, name)
    names = _strings(buf, net, _NAME)
    return Checkpoint(tensors=tensors, format="caffe", facts={"name": names[-1] if names else "", "layers": layers})


def _sniff(path: Path, head: bytes) -> bool:
    """The ``.caffemodel`` suffix, or a head that starts like a ``NetParameter``: first a name
    (printable UTF-8) or a layer, then only fields of that message with their proper wire types,
    the layers' own first bytes decodable, no field longer than the file."""
    if path.suffix.lower() == SUFFIX:
        return True
    try:
        return _net_head(head, path.stat().st_size)
    except (FormatError, UnicodeDecodeError):
        return False


def _net_head(head: bytes, size: int) -> bool:
    """Whether ``head`` (of a ``size``-byte file) starts like a ``NetParameter`` (see :func:`_sniff`)."""
    fields = 0
    for field, wire, value in _scan(head, 0, len(head), partial=True):
        if wire not in _NET_FIELDS.get(field, ()) or (not fields and field not in (_NAME, _LAYERS_V1, _LAYER)):
            return False
        fields += 1
        if wire != _LEN:
            continue
        start, end = value
        if end > size or (field == _NAME and (end > len(head) or not head[start:end].decode("utf-8").isprintable())):
            return False
        if field in (_LAYERS_V1, _LAYER):
            for _ in _scan(head, start, min(end, len(head)), partial=end > len(head)):
                pass  # a damaged layer raises
    return fields > 0


FORMAT = Format(
    name="caffe",
    description="Caffe .caffemodel (a binary NetParameter: layer, or legacy V1 layers, with their blobs)",
    sniff=_sniff,
    read=_read,
)
