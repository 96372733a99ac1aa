"""DRRN B1U25 and full CARN x2 with their public weights: MXNet conversions (WolframRhodium/
Super-Resolution-Zoo) of jt827859032/DRRN-pytorch and nmhkahn/CARN-pytorch.

The reference forwards here are transcribed from the authors' PyTorch code and run with
``torch.nn.functional`` on the raw tensors the MXNet reader gives (named after their graph
nodes, ``convolution{N}``, N in graph order):

* ``drrn.py``: ``DRRN.forward`` with its in-place ReLUs kept in place (they rectify the input,
  which is also the global residual, and the recursion's skip ``inputs``);
* ``carn.py`` / ``ops.py``: mean shift, entry, three cascading blocks of three residual blocks
  with 1x1 fusions, the x2 sub-pixel upsampler, exit, mean shift.

The MXNet graph beside each file is run too, by a small interpreter of its ops, so the order the
families' converters assume is the order of the file's own graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, assert_tiled_equals_whole, need_shared
from torch import Tensor

from upscale_cli.formats import Checkpoint, read
from upscale_cli.loader import load_model
from upscale_cli.models import LoadedModel, create_model, detect_arch, get_arch
from upscale_cli.resize import imresize
from upscale_cli.weights import convert_for

DRRN_FILE = CHECKPOINTS / "drrn_b1u25-0000.params"
CARN_FILE = CHECKPOINTS / "carn_x2-0000.params"


@pytest.fixture(scope="module")
def drrn_file() -> Checkpoint:
    return read(need_shared(DRRN_FILE))


@pytest.fixture(scope="module")
def carn_file() -> Checkpoint:
    return read(need_shared(CARN_FILE))


def lr_image(channels: int, h: int, w: int, seed: int = 0) -> Tensor:
    """Uniform noise in 0..1: its bicubic over- and undershoots exercise the input ReLU."""
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(seed))


def conv_weights(raw: dict[str, Tensor]) -> Iterator[tuple[Tensor, Tensor | None]]:
    """The raw convolutions in graph order: (weight, bias or None)."""
    for n in sorted(int(k[len("convolution") :].split(".")[0]) for k in raw if k.endswith(".weight")):
        yield raw[f"convolution{n}.weight"], raw.get(f"convolution{n}.bias")


# --- the authors' forwards -------------------------------------------------------------------


def drrn_pytorch_forward(raw: dict[str, Tensor], x: Tensor) -> Tensor:
    """jt827859032/DRRN-pytorch ``drrn.py`` ``DRRN.forward`` on the bicubic ``x`` (``relu`` is
    ``nn.ReLU(inplace=True)``; its 4 convs are ``input``, ``conv1``, ``conv2``, ``output``)."""
    w_input, w_conv1, w_conv2, w_output = (w for w, _ in conv_weights(raw))
    x = x.clone()
    residual = x
    inputs = F.conv2d(F.relu(x, inplace=True), w_input, padding=1)
    out = inputs
    for _ in range(25):
        out = F.conv2d(
            F.relu(F.conv2d(F.relu(out, inplace=True), w_conv1, padding=1), inplace=True), w_conv2, padding=1
        )
        out = torch.add(out, inputs)
    out = F.conv2d(F.relu(out, inplace=True), w_output, padding=1)
    return torch.add(out, residual)


def carn_pytorch_forward(raw: dict[str, Tensor], x: Tensor) -> Tensor:
    """nmhkahn/CARN-pytorch ``carn.py`` ``Net.forward(x, scale=2)`` (``ops.py``: ``ResidualBlock``
    = ``relu(x + conv(relu(conv(x))))``, ``BasicBlock`` = ``relu(conv1x1)``, ``_UpsampleBlock``
    = conv, ReLU, PixelShuffle(2)), its convolutions taken in forward order."""
    convs = conv_weights(raw)

    def conv(h: Tensor) -> Tensor:
        w, b = next(convs)
        return F.conv2d(h, w, b, padding=w.shape[-1] // 2)

    def residual(h: Tensor) -> Tensor:
        return F.relu(conv(F.relu(conv(h))) + h)

    def cascade(h: Tensor, block) -> Tensor:  # noqa: ANN001 - Block.forward / Net.forward body
        c = o = h
        for _ in range(3):
            c = torch.cat([c, block(o)], dim=1)
            o = F.relu(conv(c))
        return o

    h = conv(conv(x))  # sub_mean, entry
    h = cascade(h, lambda o: cascade(o, residual))
    h = F.pixel_shuffle(F.relu(conv(h)), 2)
    return conv(conv(h))  # exit, add_mean


# --- the file's own graph --------------------------------------------------------------------


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(ast.literal_eval(text))


def _reshape(x: Tensor, spec: tuple[int, ...]) -> Tensor:
    """MXNet ``Reshape`` with the special values 0 (copy), -1 (infer), -3 (merge two), -4 (split)."""
    shape, src, i = [], list(x.shape), 0
    it = iter(range(len(spec)))
    for j in it:
        code = spec[j]
        if code == 0:
            shape.append(src[i])
            i += 1
        elif code == -3:
            shape.append(src[i] * src[i + 1])
            i += 2
        elif code == -4:
            a, b = spec[j + 1], spec[j + 2]
            a, b = (src[i] // b, b) if a == -1 else (a, src[i] // a if b == -1 else b)
            shape += [a, b]
            i += 1
            next(it), next(it)
        else:
            shape.append(code)
            i += 1
    return x.reshape(shape)


def run_graph(ckpt: Checkpoint, x: Tensor) -> Tensor:
    """Execute ``facts["graph"]`` (the ops of these two graphs) on the raw tensors."""
    values: dict[str, Tensor] = {"data": x, **ckpt.tensors}
    for node in ckpt.facts["graph"]:
        ins, a, op = [values[i] for i in node["inputs"]], node["attrs"], node["op"]
        if op == "Convolution":
            out = F.conv2d(
                ins[0],
                ins[1],
                ins[2] if len(ins) > 2 else None,
                padding=_tuple(a.get("pad", "(0, 0)")),
                groups=int(a["num_group"]),
            )
        elif op == "Pad":
            w = _tuple(a["pad_width"])
            assert a["mode"] == "constant"
            out = F.pad(ins[0], (w[6], w[7], w[4], w[5]))
        elif op == "relu":
            out = F.relu(ins[0])
        elif op == "broadcast_add":
            out = ins[0] + ins[1]
        elif op == "Concat":
            out = torch.cat(ins, dim=int(a["dim"]))
        elif op == "Reshape":
            out = _reshape(ins[0], _tuple(a["shape"]))
        elif op == "transpose":
            out = ins[0].permute(_tuple(a["axes"]))
        else:
            raise AssertionError(f"op {op} not interpreted")
        values[node["name"]] = out
    return out


# --- DRRN B1U25 ------------------------------------------------------------------------------


def drrn_net(ckpt: Checkpoint, scale: int) -> torch.nn.Module:
    arch, kwargs, inferred = detect_arch(ckpt.tensors)
    assert arch.name == "drrn" and inferred is None
    assert kwargs == {"blocks": 1, "units": 25, "feats": 128, "batch_norm": False}
    net = create_model("drrn-b1u25", scale).eval()
    net.load_state_dict(convert_for(arch, ckpt.tensors), strict=True)
    return net


def test_drrn_loads_strictly_with_the_papers_parameter_count(drrn_file: Checkpoint) -> None:
    net = drrn_net(drrn_file, 2)
    assert sum(p.numel() for p in net.parameters()) == 297_216  # the paper's 297K; no biases
    assert all("bias" not in k and "norms" not in k for k in net.state_dict())


@pytest.mark.parametrize("scale", [2, 3])
def test_drrn_equals_the_authors_forward_and_its_graph(drrn_file: Checkpoint, scale: int) -> None:
    net = drrn_net(drrn_file, scale)
    lr = lr_image(1, 7, 6, seed=scale)
    ilr = imresize(lr, scale=scale)
    assert ilr.min() < 0  # the input ReLU matters
    with torch.no_grad():
        ours = net(lr)
        torch.testing.assert_close(ours, drrn_pytorch_forward(drrn_file.tensors, ilr), atol=2e-5, rtol=0)
        torch.testing.assert_close(ours, run_graph(drrn_file, ilr), atol=2e-5, rtol=0)


def test_drrn_pytorch_layout_converts_too(drrn_file: Checkpoint) -> None:
    names = ("input", "conv1", "conv2", "output")
    sd = {f"{n}.weight": w for n, (w, _) in zip(names, conv_weights(drrn_file.tensors))}
    ours = convert_for(get_arch("drrn"), drrn_file.tensors)
    assert convert_for(get_arch("drrn"), sd) == ours


def test_drrn_without_batch_norm_tiles_exactly_and_trains() -> None:
    """The converted variant at a small size (B1U25 at 128 filters is ~15 MFLOP per pixel)."""
    torch.manual_seed(0)
    kwargs = {"blocks": 2, "units": 3, "feats": 8, "batch_norm": False}
    net = get_arch("drrn").build(scale=2, **kwargs)
    for p in net.parameters():
        torch.nn.init.normal_(p, 0.0, 0.2)
    net(lr_image(1, 6, 6)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    model = LoadedModel("drrn-small", get_arch("drrn"), net.eval(), 2, kwargs)
    assert_tiles_exactly(model, 40, 34)


def assert_tiles_exactly(model: LoadedModel, h: int, w: int) -> None:
    rgb = lr_image(3, h, w, seed=5)[0]
    assert_tiled_equals_whole(model, rgb, atol=1e-4)


# --- CARN x2 ---------------------------------------------------------------------------------


def test_carn_loads_strictly_as_carn_x2(carn_file: Checkpoint) -> None:
    arch, kwargs, inferred = detect_arch(carn_file.tensors)
    assert arch.name == "carn" and inferred is None
    assert kwargs == {"mobile": False, "group": 1, "feats": 64, "single_scale": 2}
    net = create_model("carn-x2", 2)
    net.load_state_dict(convert_for(arch, carn_file.tensors), strict=True)
    assert sum(p.numel() for p in net.parameters()) == 964_187
    with pytest.raises(ValueError, match="x3"):
        net(torch.rand(1, 3, 4, 4), 3)


def test_carn_equals_the_authors_forward_and_its_graph(carn_file: Checkpoint) -> None:
    net = create_model("carn-x2", 2).eval()
    net.load_state_dict(convert_for(get_arch("carn"), carn_file.tensors), strict=True)
    x = lr_image(3, 9, 7)
    with torch.no_grad():
        ours = net(x, 2)
        torch.testing.assert_close(ours, carn_pytorch_forward(carn_file.tensors, x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours, run_graph(carn_file, x), atol=1e-5, rtol=0)


def test_carn_file_runs_through_the_loader_and_tiles_exactly() -> None:
    model = load_model(weights=str(need_shared(CARN_FILE)))
    assert (model.arch.name, model.scale, model.params) == ("carn", 2, 964_187)
    assert model.kwargs["single_scale"] == 2
    assert_tiles_exactly(model, 50, 47)


def test_converters_leave_other_layouts_alone(drrn_file: Checkpoint, carn_file: Checkpoint) -> None:
    drrn, carn = get_arch("drrn").convert_keys, get_arch("carn").convert_keys
    for convert, foreign in ((drrn, carn_file.tensors), (carn, drrn_file.tensors)):
        assert convert(dict(foreign)) == dict(foreign)
    for name, convert in (("drrn-b1u25", drrn), ("carn", carn), ("carn-m", carn), ("drrn", drrn)):
        with torch.device("meta"):
            sd = create_model(name, 2).state_dict()
        out = convert(dict(sd))
        assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)
    assert detect_arch(convert_for(get_arch("carn"), carn_file.tensors))[0].name == "carn"


def test_carn_single_scale_is_trainable_and_multiscale_carn_unchanged() -> None:
    net = get_arch("carn").build(scale=2, feats=4, single_scale=3)
    assert [k for k in net.state_dict() if k.startswith("upsample.")] == [
        "upsample.up3.body.0.weight",
        "upsample.up3.body.0.bias",
    ]
    net(torch.rand(1, 3, 5, 5), 3).mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    kwargs, _ = get_arch("carn").infer_kwargs(create_model("carn", 2).state_dict())
    assert "single_scale" not in kwargs
