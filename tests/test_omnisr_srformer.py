"""OmniSR and SRFormer: published key layouts, forwards equal to the published definitions,
detection from the keys alone, tiling, loading from the file and training.

The key layouts and the functional forwards below are written from the authors' code
(Francis0625/Omni-SR ``components/OmniSR.py`` and ``ops/{OSAG,OSA,esa,layernorm,pixelshuffle}.py``;
HVision-NKU/SRFormer ``basicsr/archs/srformer_arch.py``), never read off our modules.  The
forwards follow the published order of operations with ``torch.nn.functional`` on the state
dict; OmniSR's einops rearranges are spelt out as loops over the windows and strided slices of
the grid, independently of the reshapes of the module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import SET14, need_shared
from PIL import Image
from torch import Tensor
from test_transformers import (
    _double,
    _kwargs,
    _load,
    _psnr,
    assert_detection_round_trip,
    assert_forward_equals,
    assert_published_layout,
)
from train_helpers import run_train

from upscale_cli.cli import main
from upscale_cli.engine import Upscaler, default_overlap
from upscale_cli.io import read_image
from upscale_cli.loader import load_model
from upscale_cli.models import LoadedModel, detect_arch, get_arch
from upscale_cli.weights import convert_for

Layout = dict[str, tuple[int, ...]]


# --- shared helpers ------------------------------------------------------------------------------


def _w(p: str, *shape: int, bias: bool = True) -> Layout:
    out = {f"{p}.weight": shape}
    return out | ({f"{p}.bias": (shape[0],)} if bias else {})


def _conv(
    x: Tensor, sd: dict[str, Tensor], p: str, groups: int = 1, stride: int = 1, padding: int | None = None
) -> Tensor:
    w = sd[f"{p}.weight"]
    pad = w.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, w, sd.get(f"{p}.bias"), stride=stride, padding=pad, groups=groups)


def _lin(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def _ln(x: Tensor, sd: dict[str, Tensor], p: str, eps: float = 1e-5) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _randomise(layout: Layout, seed: int, std: float = 0.3) -> dict[str, Tensor]:
    """Random tensors in a layout: 1-d weights (norms) around 1, the rest around 0."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shp in layout.items():
        sd[key] = torch.randn(shp, generator=g) * std
        if len(shp) == 1 and key.endswith("weight"):
            sd[key] += 1
    return sd


# --- OmniSR (components/OmniSR.py, ops/*.py) -----------------------------------------------------

THOP = ("total_ops", "total_params")


def omnisr_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published OmniSR, and the thop buffers of the authors' files
    (``c["authors"]``) on the modules thop does not count (containers, rearranges)."""
    nf, ws, s, ch, bias = c["num_feat"], c["window_size"], c["scale"], c["in_chans"], c["bias"]
    f = max(nf // 4, 16)
    out = _w("input", nf, ch, 3, 3, bias=bias)
    junk = ["", "residual_layer", "up"]
    for i in range(c["res_num"]):
        g = f"residual_layer.{i}."
        junk += [g[:-1], f"{g}residual_layer", f"{g}esa"]
        for j in range(c["block_num"]):
            q = f"{g}residual_layer.{j}.layer."
            junk += [f"{q}{k}" for k in (1, 3, 7, 9)]
            out |= _w(q + "0.fn.0", nf, nf, 1, 1) | _w(q + "0.fn.2", nf, 1, 3, 3)
            out |= _w(q + "0.fn.4.gate.1", nf // 4, nf, bias=False) | _w(q + "0.fn.4.gate.3", nf, nf // 4, bias=False)
            out |= _w(q + "0.fn.5", nf, nf, 1, 1)
            for k in (2, 8):
                out |= _w(f"{q}{k}.norm", nf) | _w(f"{q}{k}.fn.to_qkv", 3 * nf, nf, bias=False)
                if c["pe"]:
                    out |= {f"{q}{k}.fn.rel_pos_bias.weight": ((2 * ws - 1) ** 2, 4)}
                out |= _w(f"{q}{k}.fn.to_out.0", nf, nf, bias=False)
            for k in (4, 6, 10, 12):
                out |= _w(f"{q}{k}.norm", nf) | _w(f"{q}{k}.fn.project_in", 2 * nf, nf, 1, 1, bias=False)
                out |= _w(f"{q}{k}.fn.dwconv", 2 * nf, 1, 3, 3, bias=False)
                out |= _w(f"{q}{k}.fn.project_out", nf, nf, 1, 1, bias=False)
            for k in (5, 11):
                out |= _w(f"{q}{k}.norm", nf) | {f"{q}{k}.fn.temperature": (4, 1, 1)}
                out |= _w(f"{q}{k}.fn.qkv", 3 * nf, nf, 1, 1, bias=False)
                out |= _w(f"{q}{k}.fn.qkv_dwconv", 3 * nf, 1, 3, 3, bias=False)
                out |= _w(f"{q}{k}.fn.project_out", nf, nf, 1, 1, bias=False)
        out |= _w(f"{g}residual_layer.{c['block_num']}", nf, nf, 1, 1, bias=bias)
        e = f"{g}esa."
        out |= _w(e + "conv1", f, nf, 1, 1) | _w(e + "conv_f", f, f, 1, 1) | _w(e + "conv2", f, f, 3, 3)
        out |= _w(e + "conv3", f, f, 3, 3) | _w(e + "conv4", nf, f, 1, 1)
    out |= _w("output", nf, nf, 3, 3, bias=bias) | _w("up.0", ch * s * s, nf, 3, 3, bias=bias)
    buffers = {}
    if c.get("authors"):
        buffers = {f"{m}.{t}".lstrip("."): torch.zeros(1, dtype=torch.float64) for m in junk for t in THOP}
    return out, buffers


def _window_attention(t: Tensor, sd: dict[str, Tensor], p: str, pe: bool) -> Tensor:
    """ops/OSA.py Attention.forward on ``(n, ws*ws, d)`` tokens of one window each."""
    n, m, d = t.shape
    ws = math.isqrt(m)
    heads = d // (d // 4)
    q, k, v = (u.reshape(n, m, heads, -1).transpose(1, 2) for u in _lin(t, sd, f"{p}.to_qkv").chunk(3, dim=-1))
    sim = (q * (d // heads) ** -0.5) @ k.transpose(-2, -1)
    if pe:
        pos = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1).t()
        rel = pos[:, None, :] - pos[None, :, :] + ws - 1
        idx = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
        sim = sim + sd[f"{p}.rel_pos_bias.weight"][idx].permute(2, 0, 1)
    out = (torch.softmax(sim, dim=-1) @ v).transpose(1, 2).reshape(n, m, d)
    return _lin(out, sd, f"{p}.to_out.0")


def _windows(h: int, w: int, ws: int, grid: bool) -> list[tuple[slice, slice]]:
    """The pixel sets of the published rearranges: ``(x w1)`` blocks, or the ``(w1 x)`` grid."""
    if grid:  # row = w1 * (h / ws) + x: the cell x holds rows x, x + h/ws, ...
        return [(slice(a, None, h // ws), slice(b, None, w // ws)) for a in range(h // ws) for b in range(w // ws)]
    return [(slice(a, a + ws), slice(b, b + ws)) for a in range(0, h, ws) for b in range(0, w, ws)]


def _spatial(x: Tensor, sd: dict[str, Tensor], p: str, ws: int, pe: bool, grid: bool) -> Tensor:
    """PreNormResidual(LayerNorm, Attention) between the published rearranges."""
    b, d, h, w = x.shape
    out = x.clone()
    for rows, cols in _windows(h, w, ws, grid):
        t = x[:, :, rows, cols].permute(0, 2, 3, 1).reshape(b, ws * ws, d)  # (w1 w2) d
        y = _window_attention(_ln(t, sd, f"{p}.norm"), sd, f"{p}.fn", pe)
        out[:, :, rows, cols] += y.reshape(b, ws, ws, d).permute(0, 3, 1, 2)
    return out


def _ln2d(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    """ops/layernorm.py LayerNormFunction.forward."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + 1e-6).sqrt()
    return sd[f"{p}.weight"].view(1, -1, 1, 1) * y + sd[f"{p}.bias"].view(1, -1, 1, 1)


def _gdfn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    """Conv_PreNormResidual(LayerNorm2d, Gated_Conv_FeedForward)."""
    y = _conv(_conv(_ln2d(x, sd, f"{p}.norm"), sd, f"{p}.fn.project_in"), sd, f"{p}.fn.dwconv", groups=2 * x.shape[1])
    x1, x2 = y.chunk(2, dim=1)
    return x + _conv(F.gelu(x1) * x2, sd, f"{p}.fn.project_out")


def _channel(x: Tensor, sd: dict[str, Tensor], p: str, ws: int, grid: bool) -> Tensor:
    """Conv_PreNormResidual(LayerNorm2d, Channel_Attention / Channel_Attention_grid): per window
    (block) or per in-window offset (grid), a d x d attention between the channels of each head."""
    b, c, h, w = x.shape
    qkv = _conv(_conv(_ln2d(x, sd, f"{p}.norm"), sd, f"{p}.fn.qkv"), sd, f"{p}.fn.qkv_dwconv", groups=3 * c)
    q, k, v = qkv.chunk(3, dim=1)
    temp = sd[f"{p}.fn.temperature"]
    out = torch.zeros_like(x)
    groups = (
        [(slice(a, None, ws), slice(bb, None, ws)) for a in range(ws) for bb in range(ws)]
        if grid
        else (_windows(h, w, ws, False))
    )
    for rows, cols in groups:
        qq, kk, vv = (t[:, :, rows, cols].reshape(b, 4, c // 4, -1) for t in (q, k, v))
        attn = F.normalize(qq, dim=-1) @ F.normalize(kk, dim=-1).transpose(-2, -1) * temp
        o = torch.softmax(attn, dim=-1) @ vv
        out[:, :, rows, cols] = o.reshape(b, c, *x[:, :, rows, cols].shape[-2:])
    return x + _conv(out, sd, f"{p}.fn.project_out")


def _osa(x: Tensor, sd: dict[str, Tensor], q: str, ws: int, pe: bool) -> Tensor:
    """OSA_Block.forward: its layer sequence 0..12."""
    c = x.shape[1]
    h = F.gelu(_conv(F.gelu(_conv(x, sd, q + "0.fn.0")), sd, q + "0.fn.2", groups=c))
    gate = torch.sigmoid(_lin(F.silu(_lin(h.mean((2, 3)), sd, q + "0.fn.4.gate.1")), sd, q + "0.fn.4.gate.3"))
    x = x + _conv(h * gate[:, :, None, None], sd, q + "0.fn.5")
    x = _spatial(x, sd, q + "2", ws, pe, grid=False)
    x = _channel(_gdfn(x, sd, q + "4"), sd, q + "5", ws, grid=False)
    x = _spatial(_gdfn(x, sd, q + "6"), sd, q + "8", ws, pe, grid=True)
    return _gdfn(_channel(_gdfn(x, sd, q + "10"), sd, q + "11", ws, grid=True), sd, q + "12")


def _esa(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    c1_ = _conv(x, sd, f"{p}.conv1")
    c3 = _conv(F.max_pool2d(_conv(c1_, sd, f"{p}.conv2", stride=2, padding=0), 7, 3), sd, f"{p}.conv3")
    c3 = F.interpolate(c3, x.shape[-2:], mode="bilinear", align_corners=False)
    return x * torch.sigmoid(_conv(c3 + _conv(c1_, sd, f"{p}.conv_f"), sd, f"{p}.conv4"))


def omnisr_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """OmniSR.forward as published (zero padding to the window, the crop), on the network's own
    range: RGB 0..1 as the community trainers feed it, [-1, 1] for the authors' files."""
    h0, w0 = x.shape[2:]
    ws, s = c["window_size"], c["scale"]
    if c.get("authors"):
        x = (x - 0.5) * 2.0
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), "constant", 0)
    residual = _conv(x, sd, "input")
    out = residual
    for i in range(c["res_num"]):
        g = f"residual_layer.{i}."
        y = out
        for j in range(c["block_num"]):
            y = _osa(y, sd, f"{g}residual_layer.{j}.layer.", ws, c["pe"])
        out = _esa(_conv(y, sd, f"{g}residual_layer.{c['block_num']}") + out, sd, f"{g}esa")
    y = F.pixel_shuffle(_conv(_conv(out, sd, "output") + residual, sd, "up.0"), s)[:, :, : h0 * s, : w0 * s]
    return (y + 1.0) / 2.0 if c.get("authors") else y


_OMNI = {"in_chans": 3, "num_feat": 16, "res_num": 1, "block_num": 1, "window_size": 4, "pe": True, "bias": True}

OMNISR: dict[str, dict[str, Any]] = {
    "omnisr-x2": {**_OMNI, "scale": 2},
    "omnisr-authors-x4": {**_OMNI, "res_num": 2, "scale": 4, "authors": True},
    "omnisr-x3-no-pe-no-bias": {**_OMNI, "pe": False, "bias": False, "window_size": 8, "scale": 3},
    "omnisr-two-blocks-x2": {**_OMNI, "num_feat": 64, "block_num": 2, "window_size": 8, "scale": 2},
}
"""Tiny published OmniSRs: a community file, an authors' file (thop buffers, [-1, 1] range), one
without the position bias and biases (window not in the keys: 8 is read), two blocks per group
at the published width (ESA of 16 channels, heads of 16)."""


def omnisr_published(name: str, seed: int = 0, std: float = 0.3) -> tuple[dict[str, Any], dict[str, Tensor]]:
    cfg = OMNISR[name]
    keys, buffers = omnisr_layout(cfg)
    return cfg, {**_randomise(keys, seed, std), **buffers}


def _omni_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in ("scale", "authors")}
    return out | {"signed": bool(cfg.get("authors"))}


@pytest.mark.parametrize("name", sorted(OMNISR))
def test_omnisr_published_layout_loads_strictly(name: str) -> None:
    cfg, sd = omnisr_published(name)
    arch = get_arch("omnisr")
    module = arch.build(scale=cfg["scale"], **_omni_kwargs(cfg))
    keys, buffers = omnisr_layout(cfg)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    marker = {"signed_range": (1,)} if cfg.get("authors") else {}
    assert ours == {**keys, **marker}  # the thop buffers dropped, the authors' marked
    assert bool(buffers) == bool(cfg.get("authors"))
    assert set(convert_for(arch, sd)) == set(ours)


@pytest.mark.parametrize("name", sorted(OMNISR))
def test_omnisr_forward_equals_the_published_definition(name: str) -> None:
    cfg, sd = omnisr_published(name)
    model = _load("omnisr", sd, cfg["scale"])
    x = torch.rand(1, 3, 17, 21, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = omnisr_reference(_double(sd), cfg, x)
        ours = model.module.double()(x)
    assert ours.shape == (1, 3, 17 * cfg["scale"], 21 * cfg["scale"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(OMNISR))
def test_omnisr_detection_and_kwargs_round_trip(name: str) -> None:
    cfg, sd = omnisr_published(name)
    arch, kwargs, scale = detect_arch(sd)
    assert (arch.name, scale) == ("omnisr", cfg["scale"])
    assert kwargs == _omni_kwargs(cfg)
    module = arch.build(scale=scale, **kwargs)
    again, kwargs2, scale2 = detect_arch(module.state_dict())  # our export: no thop, the marker
    assert (again.name, kwargs2, scale2) == ("omnisr", kwargs, scale)


def test_omnisr_radius_and_size_multiple_of_the_published_configuration() -> None:
    """5 groups of one block, window 8: the local field (the ESA's reach, the window attentions
    and the depthwise convs); the grid attentions and squeeze-excitation are global."""
    arch = get_arch("omnisr")
    kwargs = dict(arch.default_kwargs)
    assert (arch.radius(kwargs, 4), arch.size_multiple(kwargs, 4), arch.global_context) == (243, 8, True)


def test_omnisr_grid_attention_reaches_across_the_map() -> None:
    """Why OmniSR is global: a pixel changes outputs ``H / window`` pixels away (the grid),
    far beyond its local radius, and the image size changes the grid."""
    cfg, sd = omnisr_published("omnisr-x2", std=0.1)
    model = _load("omnisr", sd, 2)
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x2 = x.clone()
    x2[..., 2, 2] += 1.0
    with torch.no_grad():
        model.module.double()
        d = (model.module(x2) - model.module(x)).abs().sum(1)[0]
    assert d[2 * (2 + 96 // 4 * 3) :, :].abs().max() > 0 and 3 * 96 // 4 > model.radius


@pytest.mark.parametrize("name", ["omnisr-x2", "omnisr-authors-x4"])
def test_omnisr_default_overlap_keeps_tiles_within_45db_of_the_whole_image(name: str, set14: Path) -> None:
    """Random weights in the published initialisation (torch's defaults; the window-4 tiny net
    and the published width), a 64 px crop of Set14 ``baboon`` in tiles at the engine's default
    overlap: the grid attentions and the squeeze-excitation leak, within 45 dB (50-57 dB
    measured for window 1-8 and the published size)."""
    arch = get_arch("omnisr")
    kwargs, scale = _omni_kwargs(OMNISR[name]), OMNISR[name]["scale"]
    torch.manual_seed(0)
    model = LoadedModel("omnisr", arch, arch.build(scale=scale, **kwargs).eval(), scale, kwargs)
    image = read_image(set14 / "baboon.png").color[:, :64, :64]
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    overlap = default_overlap(model.radius, model.size_multiple)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=2 * overlap + 16)
    assert tiled.overlap == overlap == 16 and tiled.plan(64, 64).count > 1
    with torch.no_grad():
        assert _psnr(tiled.upscale(image), whole.upscale(image)) >= 45.0


def _weights_file_alone(family: str, sd: dict[str, Tensor], scale: int, ref, tmp_path: Path) -> None:
    """``upscale IMG --weights FILE.pth`` with no other flag, and the loaded model's output."""
    weights = tmp_path / f"{family}_community.pth"
    torch.save({"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}}, weights)
    src = tmp_path / "in.png"
    Image.fromarray((torch.rand(20, 17, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()).save(src)
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exc:
        main([str(src), "--weights", str(weights), "-o", str(out), "--device", "cpu"])
    assert exc.value.code in (0, None)
    assert Image.open(out).size == (17 * scale, 20 * scale)
    loaded = load_model(weights=str(weights))
    assert (loaded.arch.name, loaded.scale) == (family, scale)
    x = read_image(src).color[None].double()
    loaded.module.double()
    m = loaded.size_multiple
    padded = F.pad(x, (0, (-17) % m, 0, (-20) % m), "reflect")  # the runtime pads (reflect) first
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x), ref(_double(sd), padded)[..., : 20 * scale, : 17 * scale], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", ["omnisr-authors-x4", "omnisr-x3-no-pe-no-bias"])
def test_omnisr_upscale_with_the_weights_file_alone(name: str, tmp_path: Path) -> None:
    cfg, sd = omnisr_published(name, std=0.1)
    _weights_file_alone("omnisr", sd, cfg["scale"], lambda d, x: omnisr_reference(d, cfg, x), tmp_path)


def test_upscale_train_trains_omnisr_and_exports_it(tmp_path: Path) -> None:
    need_shared(SET14)
    result = run_train(
        tmp_path / "run",
        model="omnisr",
        data=[str(SET14 / "baboon.png"), str(SET14 / "zebra.png")],
        model_kwargs={"num_feat": 8, "res_num": 1, "window_size": 4},
        steps=2,
    )
    model = load_model(weights=str(result.out_dir / "model.safetensors"))
    assert (model.arch.name, model.scale, model.kwargs["window_size"]) == ("omnisr", 2, 4)


# --- SRFormer (basicsr/archs/srformer_arch.py) ---------------------------------------------------


def _srf_index(ws: int) -> Tensor:
    """PSA's ``aligned_relative_position_index``, as published (Swin's index of the half window,
    each row repeated for the 2 x 2 queries of its cell)."""
    p = ws // 2
    coords = torch.flatten(torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")), 1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += p - 1
    rel[:, :, 1] += p - 1
    rel[:, :, 0] *= 2 * p - 1
    idx = rel.sum(-1)
    return idx.reshape(p, p, 1, 1, p * p).repeat(1, 1, 2, 2, 1).permute(0, 2, 1, 3, 4).reshape(4 * p * p, p * p)


def _srf_partition(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _srf_mask(h: int, w: int, ws: int) -> Tensor:
    """PSA_Block.calculate_mask, as published (``-shift // 2`` included)."""
    s, p = ws // 2, ws // 2
    img = torch.zeros((1, h, w, 1))
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    fine = _srf_partition(img, ws).view(-1, ws * ws)
    half = torch.zeros((1, h // 2, w // 2, 1))
    cnt = 0
    for hs in (slice(0, -p), slice(-p, -s // 2), slice(-s // 2, None)):
        for wsl in (slice(0, -p), slice(-p, -s // 2), slice(-s // 2, None)):
            half[:, hs, wsl, :] = cnt
            cnt += 1
    coarse = _srf_partition(half, p).view(-1, p * p)
    mask = fine.unsqueeze(2) - coarse.unsqueeze(1)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _resi_layout(p: str, e: int, kind: str) -> Layout:
    if kind == "1conv":
        return _w(p, e, e, 3, 3)
    q = e // 4
    return _w(f"{p}.0", q, e, 3, 3) | _w(f"{p}.2", q, q, 1, 1) | _w(f"{p}.4", e, q, 3, 3)


def _resi(x: Tensor, sd: dict[str, Tensor], p: str, kind: str) -> Tensor:
    if kind == "1conv":
        return _conv(x, sd, p)
    x = F.leaky_relu(_conv(x, sd, f"{p}.0"), 0.2)
    return _conv(F.leaky_relu(_conv(x, sd, f"{p}.2"), 0.2), sd, f"{p}.4")


def srformer_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published SRFormer, and its buffers (``attn_mask`` for a training
    patch of ``4 * window``)."""
    e, ws, s, ch, nf = c["embed_dim"], c["window_size"], c["scale"], c["in_chans"], 64
    hidden, p = int(e * c["mlp_ratio"]), ws // 2
    out = _w("conv_first", e, ch, 3, 3) | _w("patch_embed.norm", e)
    buffers = {}
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        for j in range(depth):
            q = f"layers.{i}.residual_group.blocks.{j}."
            out |= _w(q + "norm1", e) | {q + "attn.relative_position_bias_table": ((2 * p - 1) ** 2, heads)}
            out |= _w(q + "attn.kv", e // 2, e) | _w(q + "attn.q", e, e) | _w(q + "attn.proj", e, e)
            out |= _w(q + "norm2", e) | _w(q + "mlp.fc1", hidden, e)
            out |= _w(q + "mlp.dwconv.depthwise_conv.0", hidden, 1, 5, 5) | _w(q + "mlp.fc2", e, hidden)
            buffers[q + "attn.aligned_relative_position_index"] = _srf_index(ws)
            if j % 2:
                buffers[q + "attn_mask"] = _srf_mask(4 * ws, 4 * ws, ws)
        out |= _resi_layout(f"layers.{i}.conv", e, c["resi_connection"])
    out |= _w("norm", e) | _resi_layout("conv_after_body", e, c["resi_connection"])
    up = c["upsampler"]
    if up in ("pixelshuffle", "nearest+conv"):
        out |= _w("conv_before_upsample.0", nf, e, 3, 3)
    if up == "pixelshuffle":
        for i, r in enumerate([3] if s == 3 else [2] * int(math.log2(s))):
            out |= _w(f"upsample.{2 * i}", r * r * nf, nf, 3, 3)
    if up == "pixelshuffledirect":
        out |= _w("upsample.0", s * s * ch, e, 3, 3)
    if up == "nearest+conv":
        out |= _w("conv_up1", nf, nf, 3, 3) | _w("conv_up2", nf, nf, 3, 3) | _w("conv_hr", nf, nf, 3, 3)
    if up != "pixelshuffledirect":
        out |= _w("conv_last", ch, nf if up != "none" else e, 3, 3)
    return out, buffers


def _psa(x: Tensor, sd: dict[str, Tensor], p: str, ws: int, heads: int, mask: Tensor | None) -> Tensor:
    """PSA.forward on ``(b_, ws*ws, c)`` windows: each 2 x 2 cell's four quarter-width keys
    (values) side by side, in the cell's row-major order."""
    b_, n, c = x.shape
    half = ws // 2
    kv = _lin(x, sd, f"{p}.kv").view(b_, ws, ws, c // 2)
    cells = [kv[:, r::2, t::2] for r in (0, 1) for t in (0, 1)]  # b_, half, half, c/2 each
    k = torch.cat([cell[..., : c // 4] for cell in cells], dim=-1).reshape(b_, half * half, heads, -1).transpose(1, 2)
    v = torch.cat([cell[..., c // 4 :] for cell in cells], dim=-1).reshape(b_, half * half, heads, -1).transpose(1, 2)
    q = _lin(x, sd, f"{p}.q").reshape(b_, n, heads, -1).transpose(1, 2) * (c // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    bias = sd[f"{p}.relative_position_bias_table"][sd[f"{p}.aligned_relative_position_index"].view(-1)]
    attn = attn + bias.view(n, n // 4, -1).permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b_ // nw, nw, heads, n, n // 4) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n // 4)
    out = (torch.softmax(attn, dim=-1) @ v).transpose(1, 2).reshape(b_, n, c)
    return _lin(out, sd, f"{p}.proj")


def srformer_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """SRFormer.forward as published (reflect padding to the window, mean, the reconstructions)."""
    h0, w0 = x.shape[2:]
    ws, s, resi, up = c["window_size"], c["scale"], c["resi_connection"], c["upsampler"]
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), "reflect")
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1).type_as(x)  # fp32 constants, as published
    x = x - mean
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        res = t
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            shift = ws // 2 if j % 2 else 0
            y = _ln(t, sd, f"{p}.norm1").view(b, h, w, e)
            if shift:
                y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            wins = _srf_partition(y, ws).view(-1, ws * ws, e)
            out = _psa(wins, sd, f"{p}.attn", ws, heads, _srf_mask(h, w, ws).to(x.dtype) if shift else None)
            y = out.view(b, h // ws, w // ws, ws, ws, e).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, e)
            if shift:
                y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
            t = t + y.reshape(b, h * w, e)
            m = F.gelu(_lin(_ln(t, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1"))
            img = m.transpose(1, 2).reshape(b, -1, h, w)
            dw = F.gelu(_conv(img, sd, f"{p}.mlp.dwconv.depthwise_conv.0", groups=img.shape[1]))
            t = t + _lin(m + dw.flatten(2).transpose(1, 2), sd, f"{p}.mlp.fc2")
        t = _resi(t.transpose(1, 2).reshape(b, e, h, w), sd, f"layers.{i}.conv", resi).flatten(2).transpose(1, 2) + res
    feat = _resi(_ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w), sd, "conv_after_body", resi) + first
    if up == "pixelshuffle":
        feat = F.leaky_relu(_conv(feat, sd, "conv_before_upsample.0"), 0.01)
        for i, r in enumerate([3] if s == 3 else [2] * int(math.log2(s))):
            feat = F.pixel_shuffle(_conv(feat, sd, f"upsample.{2 * i}"), r)
        y = _conv(feat, sd, "conv_last")
    elif up == "pixelshuffledirect":
        y = F.pixel_shuffle(_conv(feat, sd, "upsample.0"), s)
    elif up == "nearest+conv":
        feat = F.leaky_relu(_conv(feat, sd, "conv_before_upsample.0"), 0.01)
        for name in ("conv_up1", "conv_up2"):
            feat = F.leaky_relu(_conv(F.interpolate(feat, scale_factor=2, mode="nearest"), sd, name), 0.2)
        y = _conv(F.leaky_relu(_conv(feat, sd, "conv_hr"), 0.2), sd, "conv_last")
    else:
        y = x + _conv(feat, sd, "conv_last")
    return (y + mean)[:, :, : h0 * s, : w0 * s]


_SRF = {"in_chans": 3, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 2.0}
_SRF |= {"resi_connection": "1conv", "upsampler": "pixelshuffle"}

SRFORMER: dict[str, dict[str, Any]] = {
    "srformer-classical-x2": {**_SRF, "scale": 2},
    "srformer-classical-x3-window-6": {**_SRF, "window_size": 6, "depths": [2], "num_heads": [2], "scale": 3},
    "srformer-light-x4": {**_SRF, "upsampler": "pixelshuffledirect", "window_size": 8, "scale": 4},
    "srformer-real-x4-3conv": {**_SRF, "upsampler": "nearest+conv", "resi_connection": "3conv", "scale": 4},
    "srformer-denoise-x1": {**_SRF, "upsampler": "none", "depths": [2], "num_heads": [2], "scale": 1},
}
"""Tiny published SRFormers: the classical (and an odd shift, as window 22's), light and
real-world reconstructions, and the x1 restoration form."""


def srformer_published(name: str, seed: int = 0, std: float = 0.3) -> tuple[dict[str, Any], dict[str, Tensor]]:
    cfg = SRFORMER[name]
    keys, buffers = srformer_layout(cfg)
    return cfg, {**_randomise(keys, seed, std), **buffers}


@pytest.mark.parametrize("name", sorted(SRFORMER))
def test_srformer_published_layout_loads_strictly_without_the_buffers(name: str) -> None:
    cfg, sd = srformer_published(name)
    keys, buffers = srformer_layout(cfg)
    assert buffers
    assert_published_layout("srformer", cfg, sd, (keys, buffers))


@pytest.mark.parametrize("name", sorted(SRFORMER))
def test_srformer_forward_equals_the_published_definition(name: str) -> None:
    cfg, sd = srformer_published(name)
    assert_forward_equals("srformer", cfg, sd, srformer_reference, (13, 15))


@pytest.mark.parametrize("name", sorted(SRFORMER))
def test_srformer_detection_and_kwargs_round_trip(name: str) -> None:
    cfg, sd = srformer_published(name)
    assert_detection_round_trip("srformer", cfg, sd)


def test_srformer_published_radii_and_size_multiples() -> None:
    """Classical (window 22) and light (window 16): 36 and 24 windows, a 5x5 per block."""
    arch = get_arch("srformer")
    light = {"upsampler": "pixelshuffledirect", "embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4}
    light |= {"window_size": 16}
    got = [
        (arch.radius({**arch.default_kwargs, **k}, s), arch.size_multiple({**arch.default_kwargs, **k}, s))
        for k, s in (({}, 4), (light, 2))
    ]
    assert got == [(414, 22), (205, 16)]


def test_srformer_odd_shift_ties_the_first_rows_to_the_last() -> None:
    """The published mask with an odd shift (window 6: shift 3; window 22: shift 11): the first
    rows read the last row; a window of a multiple of 4 does not (the interior field is exact
    either way, the registry contract checks it)."""
    changed = {}
    for name in ("srformer-classical-x3-window-6", "srformer-light-x4"):
        cfg, sd = srformer_published(name, std=0.1)
        model = _load("srformer", sd, cfg["scale"]).module.double()
        n, ws = 6 * cfg["window_size"], cfg["window_size"]
        x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        x2 = x.clone()
        x2[..., n - 1, n // 2] += 1.0
        with torch.no_grad():
            d = (model(x2) - model(x)).abs().sum(1)[0]
        changed[ws] = float(d[: ws // 2 * cfg["scale"]].max())
    assert changed[6] > 0 and changed[8] == 0


@pytest.mark.parametrize("name", ["srformer-classical-x2", "srformer-light-x4"])
def test_srformer_default_overlap_keeps_tiles_within_45db_of_the_whole_image(name: str, set14: Path) -> None:
    """Random weights in the published initialisation, a 64 px crop of Set14 ``baboon`` in
    tiles at the engine's default overlap (the radius, at most 16 px)."""
    arch = get_arch("srformer")
    cfg = SRFORMER[name]
    kwargs, scale = {**arch.default_kwargs, **_kwargs(cfg)}, cfg["scale"]
    torch.manual_seed(0)
    model = LoadedModel("srformer", arch, arch.build(scale=scale, **kwargs).eval(), scale, kwargs)
    image = read_image(set14 / "baboon.png").color[:, :64, :64]
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    overlap = default_overlap(model.radius, model.size_multiple)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=2 * overlap + 16)
    assert tiled.overlap == overlap == min(model.radius, 16) and tiled.plan(64, 64).count > 1
    with torch.no_grad():
        assert _psnr(tiled.upscale(image), whole.upscale(image)) >= 45.0


@pytest.mark.parametrize("name", ["srformer-light-x4", "srformer-classical-x3-window-6"])
def test_srformer_upscale_with_the_weights_file_alone(name: str, tmp_path: Path) -> None:
    cfg, sd = srformer_published(name, std=0.1)
    _weights_file_alone("srformer", sd, cfg["scale"], lambda d, x: srformer_reference(d, cfg, x), tmp_path)
