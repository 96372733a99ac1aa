"""LapSRN and MS-LapSRN with third-party weights: the authors' MatConvNet models
(phoenix104104/LapSRN ``pretrained_models/LapSRN_x{2,4,8}.mat`` and ``MSLapSRN_D5R8.mat``) and
twtygqyy/pytorch-LapSRN's x4 re-implementation (``model/model_epoch_100.pth``).

The references run the authors' own graph: the DagNN ``layers`` the MATLAB reader returns
(``dagnn.Conv``, ``dagnn.ReLU('leak')``, ``dagnn.ConvTranspose('upsample', 'crop')``,
``dagnn.Sum``), executed in file order on the raw ``params``, with MatConvNet's operators
written out here from their definitions: ``vl_nnconv`` is a correlation with filters
``H x W x IN x OUT``; ``vl_nnconvt`` its transpose, filters ``H x W x OUT x IN``,
``y(s*i + u - crop_top, s*j + v - crop_left, o) += F(u, v, o, c) x(i, j, c)``.  Small DagNN
files written here in the layout of ``init_LapSRN_model.m`` / ``init_MSLapSRN_model.m`` cover
the same path without ../shared.  twtygqyy's ``lapsrn.Net.forward`` is written with
``torch.nn.functional``.
"""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, assert_tiled_equals_whole, need_shared
from test_format_matlab import StructArray, write
from test_models_zoo import _perturbation, _random_net, _reach
from torch import Tensor, nn

from upscale_cli.formats import Checkpoint
from upscale_cli.formats import read as read_file
from upscale_cli.loader import load_model
from upscale_cli.models import create_model, detect_arch, get_arch
from upscale_cli.weights import convert_for

LAPSRN = get_arch("lapsrn")
AUTHORS = {  # file: (scales, kwargs read off it, parameters)
    "lapsrn_x2.mat": ((2,), {"shared": False, "depth": 10, "feats": 64, "bias": True, "up_kernel": 3}, 407_441),
    "lapsrn_x4.mat": ((4,), {"shared": False, "depth": 10, "feats": 64, "bias": True, "up_kernel": 3}, 814_242),
    "lapsrn_x8.mat": ((8,), {"shared": False, "depth": 5, "feats": 64, "bias": True, "up_kernel": 3}, 667_123),
    "mslapsrn_d5r8.mat": ((2, 4, 8), {"shared": True, "depth": 5, "feats": 64}, 222_801),
}
TWTYGQYY = CHECKPOINTS / "lapsrn_x4_twtygqyy_epoch100.pth"


@functools.cache
def read(path: Path) -> Checkpoint:
    """The file as the readers give it (read once per test session: MSLapSRN's graph is large)."""
    return read_file(path)


# --- MatConvNet's operators and the DagNN graph ------------------------------------------------


def _four(w: Tensor) -> Tensor:
    """A MATLAB filter bank with its trailing singleton dimensions back."""
    return w.reshape(*w.shape, *[1] * (4 - w.dim()))


def vl_nnconv(x: Tensor, w: Tensor, b: Tensor | None, pad: list[float]) -> Tensor:
    """``vl_nnconv(x, w, b, 'pad', [t b l r])``: ``y(r, s, o) = b(o) + sum w(i, j, c, o) x(r+i, s+j, c)``."""
    w = _four(w)
    top, bottom, left, right = (int(p) for p in pad)
    xp = F.pad(x, (left, right, top, bottom))
    h, wd = xp.shape[-2] - w.shape[0] + 1, xp.shape[-1] - w.shape[1] + 1
    taps = [(i, j) for i in range(w.shape[0]) for j in range(w.shape[1])]
    y = sum(torch.einsum("nchw,co->nohw", xp[:, :, i : i + h, j : j + wd], w[i, j]) for i, j in taps)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def vl_nnconvt(x: Tensor, w: Tensor, b: Tensor | None, upsample: list[float], crop: list[float]) -> Tensor:
    """``vl_nnconvt(x, w, b, 'upsample', s, 'crop', [t b l r])``, filters ``H x W x OUT x IN``: every
    input pixel ``(i, j)`` adds ``w(u, v, :, c) x(i, j, c)`` at ``(s*i + u, s*j + v)``, then the crop."""
    w = _four(w)
    s = int(upsample[0])
    n, _, h, wd = x.shape
    kh, kw = w.shape[:2]
    y = x.new_zeros(n, w.shape[2], s * (h - 1) + kh, s * (wd - 1) + kw)
    for u in range(kh):
        for v in range(kw):
            contribution = torch.einsum("nchw,oc->nohw", x, w[u, v])
            y[:, :, u : u + s * (h - 1) + 1 : s, v : v + s * (wd - 1) + 1 : s] += contribution
    top, bottom, left, right = (int(c) for c in crop)
    y = y[:, :, top : y.shape[-2] - bottom, left : y.shape[-1] - right]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def run_dagnn(layers: list[dict[str, Any]], params: dict[str, Tensor], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every variable of the DagNN graph computable from ``inputs`` (loss layers, whose HR
    inputs are absent, and other scales' sub-graphs are skipped)."""
    v = dict(inputs)
    for layer in layers:
        if not all(name in v for name in layer["inputs"]):
            continue
        x, ps = v[layer["inputs"][0]], [params[p].double() for p in layer["params"]]
        if layer["type"] == "dagnn.Conv":
            y = vl_nnconv(x, ps[0], ps[1] if len(ps) > 1 else None, layer["pad"])
        elif layer["type"] == "dagnn.ReLU":
            y = F.leaky_relu(x, layer["leak"])
        elif layer["type"] == "dagnn.ConvTranspose":
            crop = layer["crop"] if isinstance(layer["crop"], list) else [layer["crop"]] * 4
            y = vl_nnconvt(x, ps[0], ps[1] if len(ps) > 1 else None, layer["upsample"], crop)
        elif layer["type"] == "dagnn.Sum":
            y = sum(v[name] for name in layer["inputs"])
        else:
            raise AssertionError(f"unexpected layer {layer['type']}")
        v[layer["outputs"][0]] = y
    return v


def authors_pyramid(path: Path, x: Tensor, scale: int) -> list[Tensor]:
    """The x2, x4 ... outputs of the authors' graph in ``path`` (``SR_LapSRN.m`` reads
    ``level1_output``, ``SR_MSLapSRN.m`` ``x{s}SR_{s}x_output``)."""
    ckpt = read(path)
    layers = ckpt.facts["layers"]
    levels = scale.bit_length() - 1
    if any(layer["name"].startswith("x") for layer in layers):  # MS-LapSRN: one sub-graph per scale
        v = run_dagnn(layers, ckpt.tensors, {f"x{scale}SR_LR": x})
        return [v[f"x{scale}SR_{2 ** (level + 1)}x_output"] for level in range(levels)]
    v = run_dagnn(layers, ckpt.tensors, {"LR": x})
    return [v[f"level{s}_output"] for s in range(levels, 0, -1)]


def y_image(h: int, w: int, seed: int = 0) -> Tensor:
    """A smooth random image in the studio-swing Y range (16..235 / 255), float64."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, h // 2 + 2, w // 2 + 2, generator=g, dtype=torch.float64)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear")
    return 16 / 255 + 219 / 255 * x


def loaded_net(path: Path, scale: int) -> nn.Module:
    """The family's network for ``scale`` with the file's weights (converted, strict), float64."""
    arch, kwargs, _ = detect_arch(read(path).tensors)
    net = arch.build(scale=scale, **kwargs)
    net.load_state_dict(convert_for(arch, read(path).tensors), strict=True)
    return net.double().eval()


def assert_file_tiles_exactly(path: Path, scale: int, h: int, w: int) -> None:
    model = load_model(weights=str(path), scale=scale)
    rgb = torch.cat([y_image(h, w, seed=s)[0] for s in (1, 2, 3)]).float()
    assert_tiled_equals_whole(model, rgb, atol=2e-5)


# --- the authors' models (../shared) ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_authors_models_are_recognised_and_load_strictly(name: str) -> None:
    ckpt = read(need_shared(CHECKPOINTS / name))
    assert ckpt.format == "matlab" and ckpt.facts["layout"] == "dagnn"
    scales, kwargs, params = AUTHORS[name]
    arch, inferred, scale = detect_arch(ckpt.tensors)
    assert arch is LAPSRN and inferred == kwargs and scale == (None if len(scales) > 1 else scales[0])
    assert sum(t.numel() for t in ckpt.tensors.values()) == params
    for s in scales:  # the registered model (lapsrn's depth follows the scale: 10, 5 at x8)
        net = create_model("ms-lapsrn" if kwargs["shared"] else "lapsrn", s)
        net.load_state_dict(convert_for(arch, ckpt.tensors), strict=True)
        assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize(
    "name,scale", [(n, s) for n in sorted(AUTHORS) for s in AUTHORS[n][0]], ids=lambda v: str(v)
)
def test_authors_models_equal_their_dagnn_graph(name: str, scale: int) -> None:
    path = need_shared(CHECKPOINTS / name)
    net = loaded_net(path, scale)
    x = y_image(6, 7, seed=scale)
    with torch.no_grad():
        ours = net.forward_pyramid(x)
    theirs = authors_pyramid(path, x, scale)
    assert len(ours) == len(theirs) == scale.bit_length() - 1  # every supervised level
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_authors_model_tiled_equals_whole_image() -> None:
    assert_file_tiles_exactly(need_shared(CHECKPOINTS / "lapsrn_x2.mat"), 2, 36, 30)


# --- small DagNN files written here ------------------------------------------------------------


class Graph:
    """A MatConvNet DagNN ``net`` struct, built layer by layer as the authors' ``init_*_model.m``
    build theirs; shared param names are created once (MS-LapSRN's weight sharing)."""

    def __init__(self, feats: int, seed: int = 0) -> None:
        self.feats, self.rng = feats, np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.layers: list[dict[str, Any]] = []

    def _param(self, name: str, shape: tuple[int, ...]) -> str:
        if name not in self.params:
            std = 1 / np.sqrt(np.prod(shape[:3])) if len(shape) == 4 else 0.3  # activations stay O(1)
            while len(shape) > 2 and shape[-1] == 1:  # MATLAB drops trailing singleton dims
                shape = shape[:-1]
            self.params[name] = (self.rng.standard_normal(shape) * std).astype("f4")
        return name

    def _add(self, name: str, kind: str, inputs: list[str], params: list[str], **block: Any) -> str:
        self.layers.append({"name": name, "type": kind, "inputs": inputs, "outputs": [name],
                            "params": params or np.zeros((0, 0)),
                            "block": {k: np.array([np.atleast_1d(v)], dtype="f8") for k, v in block.items()}})
        return name

    def conv(self, name: str, x: str, param: str, cin: int, cout: int) -> str:
        params = [self._param(f"{param}_f", (3, 3, cin, cout)), self._param(f"{param}_b", (1, cout))]
        return self._add(name, "dagnn.Conv", [x], params, size=[3, 3, cin, cout], pad=[1, 1, 1, 1], stride=[1, 1])

    def relu(self, name: str, x: str) -> str:
        return self._add(name, "dagnn.ReLU", [x], [], leak=0.2)

    def feature_up(self, name: str, x: str, param: str) -> str:
        n = self.feats
        params = [self._param(f"{param}_f", (3, 3, n, n)), self._param(f"{param}_b", (1, n))]
        return self._add(
            name, "dagnn.ConvTranspose", [x], params, size=[3, 3, n, n], upsample=[2, 2], crop=[0, 1, 0, 1]
        )

    def image_up(self, name: str, x: str, param: str) -> str:
        params = [self._param(param, (4, 4, 1, 1))]
        return self._add(
            name, "dagnn.ConvTranspose", [x], params, size=[4, 4, 1, 1], upsample=[2, 2], crop=[1, 1, 1, 1]
        )

    def add(self, name: str, a: str, b: str) -> str:
        return self._add(name, "dagnn.Sum", [a, b], [], numInputs=2)

    def write(self, path: Path) -> Path:
        params = StructArray([{"name": k, "value": v} for k, v in self.params.items()], (1, len(self.params)))
        net = {"vars": StructArray([{"name": "LR"}], (1, 1)), "params": params,
               "layers": StructArray(self.layers, (1, len(self.layers))), "meta": np.zeros((0, 0))}
        return write(path, {"net": net})


def lapsrn_mat(path: Path, scale: int, depth: int, feats: int) -> Path:
    """``init_LapSRN_model.m``: levels ``L..1``, feature branch first, then the image branch."""
    g = Graph(feats)
    x = g.relu("input_relu", g.conv("input_conv", "LR", "input_conv", 1, feats))
    levels = scale.bit_length() - 1
    for s in range(levels, 0, -1):
        for d in range(1, depth + 1):
            x = g.relu(f"level{s}_relu{d}", g.conv(f"level{s}_conv{d}", x, f"level{s}_conv{d}", feats, feats))
        x = g.relu(f"level{s}_uprelu", g.feature_up(f"level{s}_upconv", x, f"level{s}_upconv"))
        g.conv(f"level{s}_residual", x, f"level{s}_residual_conv", feats, 1)
    img = "LR"
    for s in range(levels, 0, -1):
        img = g.add(f"level{s}_output", g.image_up(f"level{s}_img_up", img, f"level{s}_img_up_f"), f"level{s}_residual")
    return g.write(path)


def mslapsrn_mat(path: Path, scales: tuple[int, ...], depth: int, recursions: int, feats: int) -> Path:
    """``init_MSLapSRN_model.m`` with ``LRL = 'SS'``: one sub-graph per training scale, shared params."""
    g = Graph(feats)
    for scale in scales:
        p = f"x{scale}SR_"
        source = g.conv(f"{p}input_conv", f"{p}LR", "input_conv", 1, feats)
        levels = scale.bit_length() - 1
        for lv in range(1, levels + 1):
            out = source
            for r in range(1, recursions + 1):
                x = out
                for d in range(1, depth + 1):
                    x = g.relu(f"{p}level{lv}_R{r}_relu{d}", x)  # pre-activation
                    x = g.conv(f"{p}level{lv}_R{r}_conv{d}", x, f"conv{d}", feats, feats)
                out = g.add(f"{p}level{lv}_R{r}_output", x, source)
            source = g.feature_up(f"{p}level{lv}_upconv", g.relu(f"{p}level{lv}_uprelu", out), "upconv")
        img = f"{p}LR"
        for lv in range(1, levels + 1):
            up = g.image_up(f"{p}level{lv}_img_up", img, "img_up_f")
            res = g.conv(f"{p}level{lv}_residual", f"{p}level{lv}_upconv", "residual_conv", feats, 1)
            img = g.add(f"{p}{2 ** lv}x_output", up, res)
    return g.write(path)


def test_small_lapsrn_mat_is_read_converted_and_equals_its_graph(tmp_path: Path) -> None:
    path = lapsrn_mat(tmp_path / "LapSRN_small.mat", scale=8, depth=2, feats=4)
    arch, kwargs, scale = detect_arch(read(path).tensors)
    assert arch is LAPSRN and scale == 8
    assert kwargs == {"shared": False, "depth": 2, "feats": 4, "bias": True, "up_kernel": 3}
    x = y_image(5, 6)
    with torch.no_grad():
        ours = loaded_net(path, 8).forward_pyramid(x)
    for a, b in zip(ours, authors_pyramid(path, x, 8), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert_file_tiles_exactly(path, 8, 24, 20)


def test_small_mslapsrn_mat_runs_every_scale_with_one_set_of_weights(tmp_path: Path) -> None:
    path = mslapsrn_mat(tmp_path / "MSLapSRN_small.mat", scales=(2, 4), depth=2, recursions=3, feats=4)
    arch, kwargs, scale = detect_arch(read(path).tensors)
    assert arch is LAPSRN and scale is None and kwargs == {"shared": True, "depth": 2, "feats": 4}
    x = y_image(5, 6, seed=1)
    for s in (2, 4):
        net = arch.build(scale=s, **kwargs, recursions=3)
        net.load_state_dict(convert_for(arch, read(path).tensors), strict=True)
        with torch.no_grad():
            ours = net.double().eval().forward_pyramid(x)
        for a, b in zip(ours, authors_pyramid(path, x, s), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_small_mslapsrn_tiled_equals_whole_image(tmp_path: Path) -> None:
    path = mslapsrn_mat(tmp_path / "MSLapSRN_small.mat", scales=(4,), depth=1, recursions=8, feats=4)
    assert_file_tiles_exactly(path, 4, 40, 36)  # R = 8: what a plain file of MS-LapSRN runs with


# --- twtygqyy/pytorch-LapSRN (lapsrn.Net: no biases, 4x4 feature upsampler) ---------------------


def twtygqyy_state_dict(feats: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """Random weights named as ``lapsrn.Net.state_dict()`` names them (``convt_F{l}`` is a
    ``Sequential`` holding one ``_Conv_Block``: 10 convs at even indices, the 4x4 upsampler at 20)."""
    g = torch.Generator().manual_seed(seed)

    def weight(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g) / (shape[1] * shape[2] * shape[3]) ** 0.5

    sd = {"conv_input.weight": weight(feats, 1, 3, 3)}
    for level in (1, 2):
        sd[f"convt_I{level}.weight"] = weight(1, 1, 4, 4)
        sd[f"convt_R{level}.weight"] = weight(1, feats, 3, 3)
        for i in range(0, 20, 2):
            sd[f"convt_F{level}.0.cov_block.{i}.weight"] = weight(feats, feats, 3, 3)
        sd[f"convt_F{level}.0.cov_block.20.weight"] = weight(feats, feats, 4, 4) * 2
    return sd


def twtygqyy_forward(sd: dict[str, Tensor], x: Tensor) -> list[Tensor]:
    """``lapsrn.Net.forward``: ``HR_2x``, ``HR_4x``."""
    sd = {k: v.to(x.dtype) for k, v in sd.items()}
    h = F.leaky_relu(F.conv2d(x, sd["conv_input.weight"], padding=1), 0.2)
    img, outs = x, []
    for level in (1, 2):
        for i in range(0, 20, 2):
            h = F.leaky_relu(F.conv2d(h, sd[f"convt_F{level}.0.cov_block.{i}.weight"], padding=1), 0.2)
        h = F.leaky_relu(F.conv_transpose2d(h, sd[f"convt_F{level}.0.cov_block.20.weight"], stride=2, padding=1), 0.2)
        img = F.conv_transpose2d(img, sd[f"convt_I{level}.weight"], stride=2, padding=1)
        img = img + F.conv2d(h, sd[f"convt_R{level}.weight"], padding=1)
        outs.append(img)
    return outs


def test_twtygqyy_layout_is_recognised_as_lapsrn_pt_and_equals_its_forward() -> None:
    sd = twtygqyy_state_dict()
    arch, kwargs, scale = detect_arch(sd)
    assert arch is LAPSRN and scale == 4
    assert kwargs == {"shared": False, "depth": 10, "feats": 4, "bias": False, "up_kernel": 4}
    net = create_model("lapsrn-pt", 4, feats=4)
    net.load_state_dict(convert_for(arch, sd), strict=True)
    x = y_image(6, 5)
    with torch.no_grad():
        ours = net.double().eval().forward_pyramid(x)
    for a, b in zip(ours, twtygqyy_forward(sd, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # torch.save of a class made here
def test_twtygqyy_whole_model_pickle_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole ``lapsrn.Net`` saved the old (non-zip) way reads back as its state dict."""
    module = types.ModuleType("lapsrn")

    class _Conv_Block(nn.Module):  # noqa: N801 - twtygqyy's class name
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for _ in range(10):
                layers += [nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
            layers += [nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
            self.cov_block = nn.Sequential(*layers)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_input = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.relu = nn.LeakyReLU(0.2, inplace=True)
            for level in (1, 2):
                setattr(self, f"convt_I{level}", nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False))
                setattr(self, f"convt_R{level}", nn.Conv2d(4, 1, 3, padding=1, bias=False))
                setattr(self, f"convt_F{level}", nn.Sequential(_Conv_Block()))

    for cls in (_Conv_Block, Net):
        cls.__module__, cls.__qualname__ = "lapsrn", cls.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "lapsrn", module)
    net = Net()
    path = tmp_path / "model_epoch_1.pth"
    torch.save({"epoch": 1, "model": net}, path, _use_new_zipfile_serialization=False)
    monkeypatch.delitem(sys.modules, "lapsrn")  # the reader must not need the class
    tensors = read(path).tensors
    expected = net.state_dict()
    assert tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected)
    arch, kwargs, scale = detect_arch(tensors)
    assert arch is LAPSRN and scale == 4 and kwargs["bias"] is False and kwargs["up_kernel"] == 4


def test_twtygqyy_epoch100_file_loads_strictly_and_equals_its_forward() -> None:
    ckpt = read(need_shared(TWTYGQYY))
    assert sum(t.numel() for t in ckpt.tensors.values()) == 870_112
    model = load_model("lapsrn-pt", weights=str(TWTYGQYY))
    assert model.arch is LAPSRN and model.scale == 4 and model.params == 870_112
    x = y_image(7, 6)
    with torch.no_grad():
        ours = model.module.double().forward_pyramid(x)
    for a, b in zip(ours, twtygqyy_forward(ckpt.tensors, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_twtygqyy_variant_radius_is_its_receptive_field() -> None:
    kwargs = {"depth": 2, "feats": 4, "bias": False, "up_kernel": 4}
    radius = LAPSRN.radius(kwargs, 4)
    n = 2 * radius + 8
    assert _reach(_perturbation(_random_net("lapsrn", kwargs, 4), 1, n, 4), n // 2, 4) == radius


def test_twtygqyy_variant_tiled_equals_whole_image(tmp_path: Path) -> None:
    path = tmp_path / "lapsrn_pt.pth"
    torch.save(twtygqyy_state_dict(), path)
    assert_file_tiles_exactly(path, 4, 40, 36)


# --- the family's own layout and its defaults -------------------------------------------------------


def test_convert_keys_leaves_other_layouts_alone() -> None:
    srresnet_like = {"conv_input.weight": torch.zeros(1), "residual.0.conv1.weight": torch.zeros(1)}
    for sd in (create_model("lapsrn", 4, depth=1, feats=4).state_dict(),
               create_model("ms-lapsrn", 4, depth=1, recursions=1, feats=4).state_dict(), srresnet_like):
        out = LAPSRN.convert_keys(dict(sd))
        assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_named_models_follow_the_releases() -> None:
    """``lapsrn``: 10 convs per level at x2/x4, 5 at x8 (``LapSRN_x8.mat``); ``lapsrn-pt``:
    twtygqyy's bias-free x4 net, which still trains."""
    with torch.device("meta"):
        depth = {s: len([k for k in create_model("lapsrn", s).state_dict() if k.startswith("levels.0.convs.")]) // 2
                 for s in (2, 4, 8)}
    assert depth == {2: 10, 4: 10, 8: 5}
    net = create_model("lapsrn-pt", 4, depth=1, feats=4)
    assert not [k for k in net.state_dict() if k.endswith("bias")]
    assert net.levels[0]["up"].weight.shape[-1] == 4
    net(torch.rand(1, 1, 5, 6)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
