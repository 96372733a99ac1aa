"""DRCT, RGT and ATD: published key layouts, forwards equal to the published definitions,
detection from the keys alone, receptive fields, tiling, loading from the file and training.

The key layouts and the functional forwards below are written from the authors' code
(ming053l/DRCT ``drct/archs/DRCT_arch.py``, zhengchen1999/RGT ``basicsr/archs/rgt_arch.py``,
LabShuHangGU/Adaptive-Token-Dictionary ``basicsr/archs/atd_arch.py``), never read off our
modules: the published state dicts hold the published buffers (relative position indices,
attention masks for the training patch), and the forwards follow the published order of
operations with ``torch.nn.functional`` on the state dict.  The pieces shared with SwinIR and
DAT (window attention as published, its masks and index, DAT's rectangle windows) come from
``test_transformers.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import SET14, need_shared
from test_transformers import (
    _dat_branches,
    MEAN,
    Layout,
    _conv,
    _conv_layout,
    _dat_mask,
    _dat_shifted,
    _lin,
    _linear,
    _ln,
    _mlp,
    _norm,
    _partition,
    _published_dat_buffers,
    _published_index,
    _published_mask,
    _resi,
    _resi_layout,
    _reverse,
    _shifted_msa,
    _tail,
    _tail_layout,
    assert_detection_round_trip,
    assert_forward_equals,
    assert_published_layout,
    assert_weights_file_alone,
)
from test_transformers import published as published_in
from torch import Tensor
from train_helpers import run_train

from upscale_cli.loader import load_model
from upscale_cli.models import get_arch

# --- DRCT (DRCT_arch.py) -------------------------------------------------------------------------


def _drct_width(c: dict[str, Any], k: int) -> int:
    """Channels of the dense layer ``swin{k}``: the group input and ``k - 1`` growths."""
    return c["embed_dim"] + (k - 1) * c["gc"]


def _drct_heads(c: dict[str, Any], heads: int, k: int) -> int:
    """RDG.__init__: ``num_heads - ((dim + (k-1) * gc) % num_heads)``."""
    return heads - (_drct_width(c, k) % heads)


def drct_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published DRCT, and its buffers (img_size = four windows)."""
    e, ws = c["embed_dim"], c["window_size"]
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("patch_embed.norm", e)
    buffers = {}
    for i, heads in enumerate(c["num_heads"]):
        for k in range(1, 6):
            p = f"layers.{i}.swin{k}."
            d, n = _drct_width(c, k), _drct_heads(c, heads, k)
            hidden = int(d * (c["mlp_ratio"] if k <= 3 else 1))
            out |= _norm(p + "norm1", d) | {p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, n)}
            out |= _linear(p + "attn.qkv", 3 * d, d) | _linear(p + "attn.proj", d, d)
            out |= _norm(p + "norm2", d) | _linear(p + "mlp.fc1", hidden, d) | _linear(p + "mlp.fc2", d, hidden)
            out |= _conv_layout(f"layers.{i}.adjust{k}", c["gc"] if k < 5 else e, d, 1)
            buffers[p + "attn.relative_position_index"] = _published_index(ws)
            if k % 2 == 0:
                buffers[p + "attn_mask"] = _published_mask(4 * ws, 4 * ws, ws, ws // 2)
    out |= _norm("norm", e)
    if c["resi_connection"] == "1conv":
        out |= _conv_layout("conv_after_body", e, e)
    return out | _tail_layout({**c, "upsampler": "pixelshuffle"}, e), buffers


def drct_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """DRCTModel.pre_process (reflect pad to the window) + DRCT.forward + the crop, as published."""
    h0, w0 = x.shape[2:]
    ws, r = c["window_size"], c.get("img_range", 1.0)
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), "reflect")
    x = (x - MEAN) * r
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, heads in enumerate(c["num_heads"]):
        feats = [t]
        for k in range(1, 6):
            p = f"layers.{i}.swin{k}"
            y = torch.cat(feats, -1)
            y = y + _shifted_msa(
                _ln(y, sd, f"{p}.norm1"),
                sd,
                f"{p}.attn",
                (h, w),
                ws,
                ws // 2 if k % 2 == 0 else 0,
                _drct_heads(c, heads, k),
                sd[f"{p}.attn.relative_position_index"],
            )
            y = y + _mlp(_ln(y, sd, f"{p}.norm2"), sd, f"{p}.mlp")
            y = _conv(y.transpose(1, 2).reshape(b, -1, h, w), sd, f"layers.{i}.adjust{k}")
            if k < 5:
                y = F.leaky_relu(y, 0.2)
            feats.append(y.flatten(2).transpose(1, 2))
        t = feats[-1] * 0.2 + t
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    if c["resi_connection"] == "1conv":
        feat = _conv(feat, sd, "conv_after_body")
    feat = feat + first
    y = _tail(sd, {**c, "upsampler": "pixelshuffle"}, x, feat) / r + MEAN
    return y[:, :, : h0 * c["scale"], : w0 * c["scale"]]


# --- RGT (rgt_arch.py) ---------------------------------------------------------------------------


def _dw_layout(p: str, e: int, k: int = 3) -> Layout:
    return {f"{p}.weight": (e, 1, k, k), f"{p}.bias": (e,)}


def rgt_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published RGT, and its buffers (img_size 16 for the masks)."""
    e, (s0, s1) = c["embed_dim"], c["split_size"]
    hidden, cr, bias = int(e * c["mlp_ratio"]), int(e * c["c_ratio"]), c.get("qkv_bias", True)
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("before_RG.1", e)
    buffers = {}
    for i, (depth, heads) in enumerate(zip(c["depth"], c["num_heads"])):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            out |= _norm(p + "norm1", e)
            if j % 2 == 0:  # L_SA
                out |= _linear(p + "attn.qkv", 3 * e, e, bias) | _linear(p + "attn.proj", e, e)
                pos = (e // 2 // 4) // 4
                for br, (hsp, wsp) in enumerate(((s0, s1), (s1, s0))):
                    q = f"{p}attn.attns.{br}."
                    out |= _linear(q + "pos.pos_proj", pos, 2)
                    for k in (1, 2, 3):
                        out |= _norm(f"{q}pos.pos{k}.0", pos)
                        out |= _linear(f"{q}pos.pos{k}.2", heads // 2 if k == 3 else pos, pos)
                    buffers[q + "rpe_biases"], buffers[q + "relative_position_index"] = _published_dat_buffers(hsp, wsp)
                if _dat_shifted(i, j):
                    m0, m1 = _dat_mask(16, 16, (s0, s1), (s0 // 2, s1 // 2))
                    buffers[p + "attn.attn_mask_0"], buffers[p + "attn.attn_mask_1"] = m0, m1
                out |= _dw_layout(p + "attn.get_v", e)
            else:  # RG_SA
                out |= _dw_layout(p + "attn.reduction1", e, 4) | _dw_layout(p + "attn.dwconv", e)
                out |= _conv_layout(p + "attn.conv", cr, e, 1) | _norm(p + "attn.norm_act.0", cr)
                out |= _linear(p + "attn.q", cr, e, bias) | _linear(p + "attn.k", cr, cr, bias)
                out |= _linear(p + "attn.v", e, cr, bias) | _dw_layout(p + "attn.cpe", e)
                out |= _linear(p + "attn.proj", e, e)
            out |= _norm(p + "norm2", e) | _linear(p + "mlp.fc1", hidden, e) | _norm(p + "mlp.sg.norm", hidden // 2)
            out |= _dw_layout(p + "mlp.sg.conv", hidden // 2) | _linear(p + "mlp.fc2", e, hidden // 2)
            out |= {p + "gamma": (e,)}
        out |= _resi_layout(f"layers.{i}.conv", e, c["resi_connection"])
    out |= _norm("norm", e) | _resi_layout("conv_after_body", e, c["resi_connection"])
    return out | _tail_layout({**c, "upsampler": "pixelshuffle"}, e), buffers


def _dw(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return _conv(x, sd, p, groups=x.shape[1])


def _lsa(
    x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], c: dict[str, Any], heads: int, shifted: bool
) -> Tensor:
    """L_SA.forward, as published (DAT's window branches, then ``get_v``)."""
    b, n, ch = x.shape
    att, v = _dat_branches(x, sd, p, hw, c, heads, shifted)
    lcm = _dw(v, sd, f"{p}get_v").permute(0, 2, 3, 1).contiguous().view(b, n, ch)
    return _lin(att + lcm, sd, f"{p}proj")


def _published_time(h: int, w: int, training: bool) -> int:
    """RG_SA.forward's number of reductions."""
    if training:
        return max(int(math.log(h // 4, 4)), int(math.log(w // 4, 4)))
    t = max(int(math.log(h // 16, 4)), int(math.log(w // 16, 4)))
    return 2 if t < 2 else t


def _rgsa(x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], heads: int, c_ratio: float) -> Tensor:
    """RG_SA.forward at inference, as published."""
    h, w = hw
    b, n, ch = x.shape
    cr = int(ch * c_ratio)
    scale = (ch // heads * c_ratio) ** -0.5
    y = x.permute(0, 2, 1).reshape(b, ch, h, w).contiguous()
    t = _published_time(h, w, False)
    for _ in range(t):
        y = F.conv2d(y, sd[f"{p}reduction1.weight"], sd[f"{p}reduction1.bias"], stride=4, groups=ch)
    y = _conv(_dw(y, sd, f"{p}dwconv"), sd, f"{p}conv").reshape(b, cr, -1).permute(0, 2, 1).contiguous()
    y = F.gelu(_ln(y, sd, f"{p}norm_act.0"))
    q = _lin(x, sd, f"{p}q").reshape(b, n, heads, cr // heads).permute(0, 2, 1, 3)
    k = _lin(y, sd, f"{p}k").reshape(b, -1, heads, cr // heads).permute(0, 2, 1, 3)
    v = _lin(y, sd, f"{p}v").reshape(b, -1, heads, ch // heads).permute(0, 2, 1, 3)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    s = 4**t
    img = v.transpose(1, 2).reshape(b, -1, ch).transpose(1, 2).contiguous().view(b, ch, h // s, w // s)
    v = v + _dw(img, sd, f"{p}cpe").view(b, ch, -1).view(b, heads, ch // heads, -1).transpose(-1, -2)
    return _lin((attn @ v).transpose(1, 2).reshape(b, n, ch), sd, f"{p}proj")


def rgt_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """RGT.forward as published (no image padding: inputs here are multiples of 16)."""
    r = c.get("img_range", 1.0)
    x = (x - MEAN) * r
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "before_RG.1")
    for i, (depth, heads) in enumerate(zip(c["depth"], c["num_heads"])):
        res = t
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            block_in = t
            xn = _ln(t, sd, p + "norm1")
            if j % 2 == 0:
                t = t + _lsa(xn, sd, p + "attn.", (h, w), c, heads, _dat_shifted(i, j))
            else:
                t = t + _rgsa(xn, sd, p + "attn.", (h, w), heads, c["c_ratio"])
            y = F.gelu(_lin(_ln(t, sd, p + "norm2"), sd, p + "mlp.fc1"))
            y1, y2 = y.chunk(2, dim=-1)
            y2 = _ln(y2, sd, p + "mlp.sg.norm").transpose(1, 2).contiguous().view(b, -1, h, w)
            y2 = _dw(y2, sd, p + "mlp.sg.conv").flatten(2).transpose(-1, -2)
            t = t + _lin(y1 * y2, sd, p + "mlp.fc2")
            t = t + block_in * sd[p + "gamma"]
        body = _resi(t.transpose(1, 2).reshape(b, e, h, w), sd, f"layers.{i}.conv", c["resi_connection"])
        t = res + body.flatten(2).transpose(1, 2)
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    feat = _resi(feat, sd, "conv_after_body", c["resi_connection"]) + first
    return _tail(sd, {**c, "upsampler": "pixelshuffle"}, x, feat) / r + MEAN


# --- ATD (atd_arch.py) ---------------------------------------------------------------------------


def atd_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published ATD, and its buffer."""
    e, ws, m, rc, bias = c["embed_dim"], c["window_size"], c["num_tokens"], c["reducted_dim"], True
    hidden, k = int(e * c["mlp_ratio"]), c["convffn_kernel_size"]
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("patch_embed.norm", e)
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        g = f"layers.{i}.residual_group."
        out |= {g + "td": (m, e)}
        for j in range(depth):
            p = f"{g}layers.{j}."
            out |= _norm(p + "norm1", e) | _norm(p + "norm2", e)
            if j < depth - 1:
                out |= _norm(p + "norm3", m) | {p + "sigma": (m, 1)}
            out |= _linear(p + "wqkv", 3 * e, e, bias)
            out |= {p + "attn_win.relative_position_bias_table": ((2 * ws - 1) ** 2, heads)}
            out |= _linear(p + "attn_win.proj", e, e)
            out |= _linear(p + "attn_atd.wq", rc, e, bias) | _linear(p + "attn_atd.wk", rc, e, bias)
            out |= _linear(p + "attn_atd.wv", e, e, bias) | {p + "attn_atd.scale": (m,)}
            out |= _linear(p + "attn_aca.proj", e, e, bias) | {p + "attn_aca.logit_scale": (1, 1)}
            out |= _linear(p + "convffn.fc1", hidden, e) | _dw_layout(p + "convffn.dwconv.depthwise_conv.0", hidden, k)
            out |= _linear(p + "convffn.fc2", e, hidden)
        out |= _resi_layout(f"layers.{i}.conv", e, c["resi_connection"])
    out |= _norm("norm", e) | _resi_layout("conv_after_body", e, c["resi_connection"]) | _tail_layout(c, e)
    return out, {"relative_position_index_SA": _published_index(ws)}


def _index_reverse(index: Tensor) -> Tensor:
    out = torch.zeros_like(index)
    ind = torch.arange(0, index.shape[-1])
    for i in range(index.shape[0]):
        out[i, index[i, :]] = ind
    return out


def _feature_shuffle(x: Tensor, index: Tensor) -> Tensor:
    return torch.gather(x, dim=1, index=index.unsqueeze(-1).expand(x.shape))


def _aca(qkv: Tensor, sim: Tensor, sd: dict[str, Tensor], p: str, heads: int, category: int) -> Tensor:
    """AC_MSA.forward, as published but for the sort: the published one is unstable, and on the
    CPU it orders the ties of one of the variants here otherwise (outputs 10 apart): stable here,
    as in our module."""
    b, n, c3 = qkv.shape
    c = c3 // 3
    gs = min(n, category)
    ng = (n + gs - 1) // gs
    tk_id = torch.argmax(sim, dim=-1, keepdim=False)
    _, idx = torch.sort(tk_id, dim=-1, stable=True)
    idx_r = _index_reverse(idx)
    shuffled = _feature_shuffle(qkv, idx)
    pad_n = ng * gs - n
    y = torch.cat((shuffled, torch.flip(shuffled[:, n - pad_n : n, :], dims=[1])), dim=1).reshape(b, -1, gs, c3)
    q, k, v = y.reshape(b, ng, gs, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
    attn = q @ k.transpose(-2, -1)
    attn = torch.softmax(attn * torch.clamp(sd[f"{p}logit_scale"], max=math.log(1.0 / 0.01)).exp(), dim=-1)
    y = (attn @ v).permute(0, 1, 3, 2, 4).reshape(b, n + pad_n, c)[:, :n, :]
    return _lin(_feature_shuffle(y, idx_r), sd, f"{p}proj")


def _win_qkv(
    qkv: Tensor, sd: dict[str, Tensor], p: str, ws: int, heads: int, index: Tensor, mask: Tensor | None
) -> Tensor:
    """ATD's WindowAttention.forward (on the layer's qkv), as published."""
    b_, n, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = sd[f"{p}.relative_position_bias_table"][index.view(-1)].view(ws * ws, ws * ws, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
    attn = torch.softmax(attn, dim=-1)
    return _lin((attn @ v).transpose(1, 2).reshape(b_, n, c), sd, f"{p}.proj")


def _atd_layer(
    x: Tensor, td: Tensor, sd: dict[str, Tensor], p: str, c: dict[str, Any], hw: tuple[int, int], heads: int, j: int
) -> tuple[Tensor, Tensor]:
    """ATDTransformerLayer.forward, as published."""
    h, w = hw
    b, n, ch = x.shape
    ws, m = c["window_size"], c["num_tokens"]
    shift = ws // 2 if j % 2 else 0
    xn = _ln(x, sd, p + "norm1")
    qkv = _lin(xn, sd, p + "wqkv")
    q, k, v = _lin(xn, sd, p + "attn_atd.wq"), _lin(td, sd, p + "attn_atd.wk"), _lin(td, sd, p + "attn_atd.wv")
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * (1 + torch.clamp(sd[p + "attn_atd.scale"], 0, 1) * math.log(m))
    sim = torch.softmax(attn, dim=-1)
    x_atd = (sim @ v).reshape(b, n, ch)
    x_aca = _aca(qkv, sim, sd, p + "attn_aca.", heads, c["category_size"])
    grid = qkv.reshape(b, h, w, 3 * ch)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    windows = _partition(grid, ws).view(-1, ws * ws, 3 * ch)
    mask = _published_mask(h, w, ws, ws // 2) if shift else None
    out = _win_qkv(windows, sd, p + "attn_win", ws, heads, sd["relative_position_index_SA"], mask)
    out = _reverse(out.view(-1, ws, ws, ch), ws, h, w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    x = x + out.view(b, n, ch) + x_atd + x_aca
    y = F.gelu(_lin(_ln(x, sd, p + "norm2"), sd, p + "convffn.fc1"))
    dw = F.gelu(_dw(y.transpose(1, 2).reshape(b, -1, h, w), sd, p + "convffn.dwconv.depthwise_conv.0"))
    x = x + _lin(y + dw.flatten(2).transpose(1, 2), sd, p + "convffn.fc2")
    if j < c["depths_of"] - 1:
        norm3 = F.instance_norm(sim.transpose(-1, -2), weight=sd[p + "norm3.weight"], bias=sd[p + "norm3.bias"])
        s = torch.sigmoid(sd[p + "sigma"])
        td = s * td + (1 - s) * torch.einsum("btn,bnc->btc", torch.softmax(norm3, dim=-1), x)
    return x, td


def atd_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """ATD.forward as published (symmetric padding to the window, the crop)."""
    h0, w0 = x.shape[2:]
    ws = c["window_size"]
    h, w = -(-h0 // ws) * ws, -(-w0 // ws) * ws
    x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :h, :]
    x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :w]
    x = x - MEAN
    first = _conv(x, sd, "conv_first")
    b, e = first.shape[:2]
    t = _ln(first.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        g = f"layers.{i}.residual_group."
        res, td = t, sd[g + "td"].repeat([b, 1, 1])
        for j in range(depth):
            t, td = _atd_layer(t, td, sd, f"{g}layers.{j}.", {**c, "depths_of": depth}, (h, w), heads, j)
        body = _resi(t.transpose(1, 2).reshape(b, e, h, w), sd, f"layers.{i}.conv", c["resi_connection"])
        t = body.flatten(2).transpose(1, 2) + res
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    feat = _resi(feat, sd, "conv_after_body", c["resi_connection"]) + first
    y = _tail(sd, c, x, feat) + MEAN
    return y[:, :, : h0 * c["scale"], : w0 * c["scale"]]


# --- the variants under test ---------------------------------------------------------------------

PUBLISHED: dict[str, tuple[Callable[..., tuple[Layout, dict[str, Tensor]]], Callable[..., Tensor]]] = {
    "drct": (drct_layout, drct_reference),
    "rgt": (rgt_layout, rgt_reference),
    "atd": (atd_layout, atd_reference),
}
"""Per family: the published key layout (and buffers) and the published forward."""

_DRCT = {"in_chans": 3, "embed_dim": 12, "num_heads": [3], "window_size": 4, "mlp_ratio": 2.0, "gc": 4}
_DRCT |= {"resi_connection": "1conv"}
_RGT = {"in_chans": 3, "embed_dim": 32, "depth": [3, 1], "num_heads": [2, 2], "split_size": [2, 4], "mlp_ratio": 2.0}
_RGT |= {"c_ratio": 0.5, "resi_connection": "1conv"}
_ATD = {"in_chans": 3, "embed_dim": 16, "depths": [3], "num_heads": [2], "window_size": 4, "category_size": 256}
_ATD |= {"num_tokens": 8, "reducted_dim": 4, "convffn_kernel_size": 5, "mlp_ratio": 2.0, "upsampler": "pixelshuffle"}
_ATD |= {"resi_connection": "1conv"}
_ATD_LIGHT = {"upsampler": "pixelshuffledirect", "category_size": 128, "convffn_kernel_size": 7, "mlp_ratio": 1.0}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "drct-x2": ("drct", {**_DRCT, "scale": 2}),
    "drct-x3": ("drct", {**_DRCT, "embed_dim": 8, "num_heads": [2], "gc": 6, "scale": 3}),
    "drct-l-x4": ("drct", {**_DRCT, "num_heads": [3, 2], "resi_connection": "identity", "scale": 4}),
    "rgt-x2": ("rgt", {**_RGT, "scale": 2}),
    "rgt-s-x3": ("rgt", {**_RGT, "depth": [2], "num_heads": [2], "c_ratio": 0.25, "split_size": [2, 2], "scale": 3}),
    "rgt-3conv-x4": ("rgt", {**_RGT, "depth": [2], "num_heads": [4], "resi_connection": "3conv", "scale": 4}),
    "atd-x2": ("atd", {**_ATD, "scale": 2}),
    "atd-x3": ("atd", {**_ATD, "depths": [3, 1], "num_heads": [2, 1], "scale": 3}),
    "atd-light-x4": ("atd", {**_ATD, **_ATD_LIGHT, "scale": 4}),
    "atd-real-x4": ("atd", {**_ATD, "upsampler": "nearest+conv", "resi_connection": "3conv", "scale": 4}),
}
"""Tiny configurations of each published variant: DRCT (one group, widths 12..28 with 3, 2, 1, 3,
2 heads by the published rule), another growth, DRCT-L (more groups) without ``conv_after_body``;
RGT (two groups: the shifted L-SA of an even group's third block and an odd group's first),
RGT-S shaped with another ``c_ratio`` and split, ``3conv`` with four heads."""


def published(name: str, seed: int = 0, std: float = 0.3) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """A random state dict of variant ``name`` in the published layout, with its buffers."""
    return published_in(name, seed, std, VARIANTS, PUBLISHED)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_published_layout_loads_strictly_without_the_buffers(name: str) -> None:
    family, cfg, sd = published(name)
    assert_published_layout(family, cfg, sd, PUBLISHED[family][0](cfg))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_equals_the_published_definition(name: str) -> None:
    family, cfg, sd = published(name)
    # RGT's net does not pad, ATD's pads symmetrically: multiples of 16 and of the window
    size = {"rgt": (16, 32), "atd": (12, 16)}.get(family, (10, 13))
    assert_forward_equals(family, cfg, sd, PUBLISHED[family][1], size)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_detection_and_kwargs_round_trip(name: str) -> None:
    family, cfg, sd = published(name)
    assert_detection_round_trip(family, cfg, sd)


def test_published_configurations_build_with_the_published_head_counts() -> None:
    """DRCT and DRCT-L (embed 180, gc 32, 6 heads): dense widths 180..308 split into 6, 4, 2,
    6, 4 heads; six and twelve groups.  A group's last layer and the next one's first share the
    unshifted grid, so each group widens the field by four half windows: 15 + 8 * 4 * groups,
    plus the convs."""
    arch = get_arch("drct")
    for groups, radius in ((6, 212), (12, 404)):
        kwargs = {**arch.default_kwargs, "num_heads": [6] * groups}
        with torch.device("meta"):
            sd = arch.build(scale=4, **kwargs).state_dict()
        tables = [sd[f"layers.0.swin{k}.attn.relative_position_bias_table"].shape for k in range(1, 6)]
        assert [t[1] for t in tables] == [6, 4, 2, 6, 4] and tables[0][0] == 31**2
        assert len({key.split(".")[1] for key in sd if key.startswith("layers.")}) == groups
        assert (arch.radius(kwargs, 4), arch.size_multiple(kwargs, 4)) == (radius, 16)


def test_rgt_recursions_follow_the_published_rule() -> None:
    from upscale_cli.models.rgt import recursions

    for side in (16, 32, 48, 64, 100, 256, 1024, 1100, 4096):
        for training in (False, True):
            assert recursions(side, 64, training) == _published_time(side, 64, training), (side, training)


def _neutralise_global(module: torch.nn.Module) -> None:
    """Make the global paths constant: RGT's RG-SA (zero values and position encoding: its
    output is proj's bias), ATD's dictionary attention (zero values) and AC-MSA (zero proj
    weight); the dictionary refinement then reaches nothing."""
    from upscale_cli.models.atd import CategoryAttention, DictionaryAttention
    from upscale_cli.models.rgt import RGSA

    for m in module.modules():
        params: list[torch.nn.Parameter] = []
        if isinstance(m, RGSA):
            params = [*m.v.parameters(), *m.cpe.parameters()]
        elif isinstance(m, DictionaryAttention):
            params = list(m.wv.parameters())
        elif isinstance(m, CategoryAttention):
            params = [m.proj.weight]
        for p in params:
            torch.nn.init.zeros_(p)


@pytest.mark.parametrize("family", ["rgt", "atd"])
def test_radius_is_the_exact_field_of_the_local_paths(family: str) -> None:
    """With the global paths made constant, a one-pixel change reaches exactly the declared
    radius (the registry contract test only bounds the leak of the global ones)."""
    arch = get_arch(family)
    kwargs, s = arch.test_configs[0]
    kw = {**arch.default_kwargs, **kwargs}
    radius, m = arch.radius(kw, s), arch.size_multiple(kw, s)
    torch.manual_seed(0)
    net = arch.build(scale=s, **kw).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
        _neutralise_global(net)
    n = -(-(2 * radius + 2 * m) // m) * m
    x = torch.rand(1, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c0, reach = n // 2 // 4 * 4, 0
    with torch.no_grad():
        y = net(x)
        for c in range(c0, c0 + 4):  # the windows' phases (RGT split 2 x 4, ATD window 4)
            x2 = x.clone()
            x2[..., c, c] += 1.0
            ys, xs = torch.nonzero((net(x2) - y).abs().sum(1)[0] > 0, as_tuple=True)
            reach = max(reach, int(max((ys // s - c).abs().max(), (xs // s - c).abs().max())))
    assert reach == radius


def test_rgt_published_configurations() -> None:
    """RGT (eight groups) and RGT-S (six) of six blocks, split 8 x 32: multiple 32, and the radii
    of the local paths (RGT-S: 311, beside 312 for DAT, whose channel blocks keep two convs
    locally where an RG-SA block keeps the SGFN's one)."""
    arch = get_arch("rgt")
    for groups, radius in ((8, 407), (6, 311)):
        kwargs = {**arch.default_kwargs, "depth": [6] * groups, "num_heads": [6] * groups}
        with torch.device("meta"):
            sd = arch.build(scale=4, **kwargs).state_dict()
        assert sd["layers.0.blocks.1.attn.conv.weight"].shape == (90, 180, 1, 1)
        assert (arch.radius(kwargs, 4), arch.size_multiple(kwargs, 4)) == (radius, 32)


def test_atd_published_configurations() -> None:
    """ATD and ATD-light build with the published shapes; radii of their local paths."""
    arch = get_arch("atd")
    for preset, embed, tokens, kernel, radius in ((None, 210, 128, 5, 303), ("atd-light", 48, 64, 7, 206)):
        kwargs = {**arch.default_kwargs, **(arch.variants[preset] if preset else {})}
        with torch.device("meta"):
            sd = arch.build(scale=4, **kwargs).state_dict()
        layer = "layers.0.residual_group.layers.0."
        assert sd["layers.0.residual_group.td"].shape == (tokens, embed)
        assert sd[layer + "convffn.dwconv.depthwise_conv.0.weight"].shape[-1] == kernel
        assert "layers.0.residual_group.layers.5.sigma" not in sd and layer + "sigma" in sd
        assert (arch.radius(kwargs, 4), arch.size_multiple(kwargs, 4)) == (radius, 16)


# --- tiling, the file alone, training -------------------------------------------------------------


# (the default overlap's tiles: test_transformers.py, parametrised over these families too)


@pytest.mark.parametrize("name", ["drct-x2", "rgt-s-x3", "atd-light-x4"])
def test_upscale_with_the_weights_file_alone(name: str, tmp_path: Path) -> None:
    family, cfg, sd = published(name)
    pads = {"rgt": (0, 15, 0, 12), "atd": (0, 3, 0, 0)}  # RGT, ATD: the published net on our padding
    assert_weights_file_alone(family, cfg, sd, PUBLISHED[family][1], pads.get(family), tmp_path)


TRAIN_KWARGS: dict[str, tuple[dict[str, Any], str, Any]] = {
    "drct": ({"embed_dim": 8, "num_heads": [2], "window_size": 4, "gc": 4}, "gc", 4),
    "rgt": ({"embed_dim": 32, "depth": [2], "num_heads": [2], "split_size": [2, 4]}, "depth", [2]),
    "atd": ({"embed_dim": 8, "depths": [2], "num_heads": [2], "window_size": 4, "num_tokens": 8}, "num_tokens", 8),
}
"""A tiny network per family, and one of its kwargs read back from the export."""


@pytest.mark.parametrize("family", sorted(TRAIN_KWARGS))
def test_upscale_train_trains_the_family_and_exports_it(family: str, tmp_path: Path) -> None:
    """Two steps in training mode (RGT's RG-SA pools by the training rule; gradients through
    ATD's sorted groups), then the export is detected from its keys alone."""
    need_shared(SET14)
    kwargs, key, value = TRAIN_KWARGS[family]
    result = run_train(
        tmp_path / "run",
        model=family,
        data=[str(SET14 / "baboon.png"), str(SET14 / "zebra.png")],
        model_kwargs=kwargs,
        steps=2,
    )
    model = load_model(weights=str(result.out_dir / "model.safetensors"))
    assert (model.arch.name, model.scale, model.kwargs[key]) == (family, 2, value)
