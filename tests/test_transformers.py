"""SwinIR, HAT and DAT: published key layouts, forwards equal to the published definitions,
detection from the keys alone, receptive fields, tiling, loading from the file and training.

The key layouts and the functional forwards below are written from the authors' code
(JingyunLiang/SwinIR ``models/network_swinir.py``, XPixelGroup/HAT ``hat/archs/hat_arch.py``,
zhengchen1999/DAT ``basicsr/archs/dat_arch.py``), never read off our modules: the published
state dicts hold the published buffers (relative position indices, attention masks for the
training patch), and the forwards follow the published order of operations with
``torch.nn.functional`` on the state dict (explicit softmax, the published mask slicing, HAT's
``unfold`` and wrapped-around index, DAT's zero padding to the split size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import SET14, assert_tiled_equals_whole, need_shared
from PIL import Image
from torch import Tensor
from train_helpers import run_train

from upscale_cli.cli import main
from upscale_cli.engine import Upscaler, default_overlap
from upscale_cli.io import read_image
from upscale_cli.loader import load_model
from upscale_cli.models import LoadedModel, detect_arch, get_arch
from upscale_cli.models.dat import AdaptiveChannelAttention
from upscale_cli.models.hat import ChannelAttention
from upscale_cli.weights import convert_for, load_strict

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
Layout = dict[str, tuple[int, ...]]


# --- shared published pieces ---------------------------------------------------------------------


def _ln(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])


def _lin(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def _conv(x: Tensor, sd: dict[str, Tensor], p: str, groups: int = 1) -> Tensor:
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, sd.get(f"{p}.bias"), padding=w.shape[-1] // 2, groups=groups)


def _bn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False)


def _resi(x: Tensor, sd: dict[str, Tensor], p: str, kind: str) -> Tensor:
    if kind == "1conv":
        return _conv(x, sd, p)
    if kind == "identity":
        return x
    x = F.leaky_relu(_conv(x, sd, f"{p}.0"), 0.2)
    x = F.leaky_relu(_conv(x, sd, f"{p}.2"), 0.2)
    return _conv(x, sd, f"{p}.4")


def _resi_layout(p: str, e: int, kind: str) -> Layout:
    if kind == "1conv":
        return {f"{p}.weight": (e, e, 3, 3), f"{p}.bias": (e,)}
    if kind == "identity":
        return {}
    q = e // 4
    shapes = {0: (q, e, 3, 3), 2: (q, q, 1, 1), 4: (e, q, 3, 3)}
    return {k: v for i, s in shapes.items() for k, v in {f"{p}.{i}.weight": s, f"{p}.{i}.bias": (s[0],)}.items()}


def _norm(p: str, e: int) -> Layout:
    return {f"{p}.weight": (e,), f"{p}.bias": (e,)}


def _linear(p: str, out: int, inp: int, bias: bool = True) -> Layout:
    return {f"{p}.weight": (out, inp), **({f"{p}.bias": (out,)} if bias else {})}


def _conv_layout(p: str, out: int, inp: int, k: int = 3) -> Layout:
    return {f"{p}.weight": (out, inp, k, k), f"{p}.bias": (out,)}


def _tail_layout(c: dict[str, Any], e: int) -> Layout:
    """SwinIR's (and HAT's, DAT's) reconstruction modules."""
    up, s, ch, nf = c["upsampler"], c["scale"], c["in_chans"], 64
    if up == "pixelshuffle":
        out = _conv_layout("conv_before_upsample.0", nf, e)
        steps = [9] if s == 3 else [4] * int(math.log2(s))
        for i, r in enumerate(steps):
            out |= _conv_layout(f"upsample.{2 * i}", r * nf, nf)
        return out | _conv_layout("conv_last", ch, nf)
    if up == "pixelshuffledirect":
        return _conv_layout("upsample.0", s * s * ch, e)
    if up == "nearest+conv":
        out = _conv_layout("conv_before_upsample.0", nf, e) | _conv_layout("conv_up1", nf, nf)
        if s == 4:
            out |= _conv_layout("conv_up2", nf, nf)
        return out | _conv_layout("conv_hr", nf, nf) | _conv_layout("conv_last", ch, nf)
    return _conv_layout("conv_last", ch, e)


def _tail(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor, feat: Tensor) -> Tensor:
    up, s = c["upsampler"], c["scale"]
    if up == "pixelshuffle":
        feat = F.leaky_relu(_conv(feat, sd, "conv_before_upsample.0"), 0.01)
        for i, r in enumerate([3] if s == 3 else [2] * int(math.log2(s))):
            feat = F.pixel_shuffle(_conv(feat, sd, f"upsample.{2 * i}"), r)
        return _conv(feat, sd, "conv_last")
    if up == "pixelshuffledirect":
        return F.pixel_shuffle(_conv(feat, sd, "upsample.0"), s)
    if up == "nearest+conv":
        feat = F.leaky_relu(_conv(feat, sd, "conv_before_upsample.0"), 0.01)
        feat = F.leaky_relu(_conv(F.interpolate(feat, scale_factor=2, mode="nearest"), sd, "conv_up1"), 0.2)
        if s == 4:
            feat = F.leaky_relu(_conv(F.interpolate(feat, scale_factor=2, mode="nearest"), sd, "conv_up2"), 0.2)
        return _conv(F.leaky_relu(_conv(feat, sd, "conv_hr"), 0.2), sd, "conv_last")
    return x + _conv(feat, sd, "conv_last")


def _partition(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _published_index(ws: int) -> Tensor:
    coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def _published_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    img_mask = torch.zeros((1, h, w, 1))
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for wsl in slices:
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _partition(img_mask, ws).view(-1, ws * ws)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _window_msa(
    x: Tensor, sd: dict[str, Tensor], p: str, ws: int, heads: int, index: Tensor, mask: Tensor | None
) -> Tensor:
    """Swin's WindowAttention.forward, as published."""
    b_, n, c = x.shape
    qkv = _lin(x, sd, f"{p}.qkv").reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = sd[f"{p}.relative_position_bias_table"][index.view(-1)].view(ws * ws, ws * ws, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
    attn = torch.softmax(attn, dim=-1)
    return _lin((attn @ v).transpose(1, 2).reshape(b_, n, c), sd, f"{p}.proj")


def _mlp(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return _lin(F.gelu(_lin(x, sd, f"{p}.fc1")), sd, f"{p}.fc2")


def _shifted_msa(
    x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], ws: int, shift: int, heads: int, index: Tensor
) -> Tensor:
    """The (S)W-MSA part of SwinTransformerBlock / HAB: roll, windows, attention, back."""
    h, w = hw
    b, _, c = x.shape
    x = x.view(b, h, w, c)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = _partition(x, ws).view(-1, ws * ws, c)
    mask = _published_mask(h, w, ws, shift) if shift else None
    out = _reverse(_window_msa(windows, sd, p, ws, heads, index, mask).view(-1, ws, ws, c), ws, h, w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out.reshape(b, h * w, c)


def _randomise(layout: Layout, seed: int, buffers: dict[str, Tensor], std: float = 0.3) -> dict[str, Tensor]:
    """Random tensors in the published layout (norm weights around 1, BN variances positive)
    and the published buffers."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for key, shp in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shp, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shp, generator=g) * std
            if len(shp) == 1 and key.endswith("weight"):  # layer / batch norms
                sd[key] += 1
    return {**sd, **buffers}


# --- SwinIR (network_swinir.py) ------------------------------------------------------------------


def swinir_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    """Keys and shapes of a published SwinIR, and its buffers."""
    e, ws = c["embed_dim"], c["window_size"]
    hidden = int(e * c["mlp_ratio"])
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("patch_embed.norm", e)
    buffers = {}
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            out |= _norm(p + "norm1", e) | {p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, heads)}
            out |= _linear(p + "attn.qkv", 3 * e, e) | _linear(p + "attn.proj", e, e)
            out |= _norm(p + "norm2", e) | _linear(p + "mlp.fc1", hidden, e) | _linear(p + "mlp.fc2", e, hidden)
            buffers[p + "attn.relative_position_index"] = _published_index(ws)
            if j % 2:  # sized for the training patch (img_size 4 windows here)
                buffers[p + "attn_mask"] = _published_mask(4 * ws, 4 * ws, ws, ws // 2)
        out |= _resi_layout(f"layers.{i}.conv", e, c["resi_connection"])
    out |= _norm("norm", e) | _resi_layout("conv_after_body", e, c["resi_connection"]) | _tail_layout(c, e)
    return out, buffers


def swinir_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """SwinIR.forward as published (check_image_size, mean, the four reconstructions)."""
    h0, w0 = x.shape[2:]
    ws, resi = c["window_size"], c["resi_connection"]
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), "reflect")
    mean = MEAN if c["in_chans"] == 3 else torch.zeros(1, 1, 1, 1)
    x = (x - mean) * c.get("img_range", 1.0)
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        res = t
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            shift = ws // 2 if j % 2 else 0
            t = t + _shifted_msa(
                _ln(t, sd, f"{p}.norm1"),
                sd,
                f"{p}.attn",
                (h, w),
                ws,
                shift,
                heads,
                sd[f"{p}.attn.relative_position_index"],
            )
            t = t + _mlp(_ln(t, sd, f"{p}.norm2"), sd, f"{p}.mlp")
        t = _resi(t.transpose(1, 2).view(b, e, h, w), sd, f"layers.{i}.conv", resi).flatten(2).transpose(1, 2) + res
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    feat = _resi(feat, sd, "conv_after_body", resi) + first
    y = _tail(sd, c, x, feat) / c.get("img_range", 1.0) + mean
    return y[:, :, : h0 * c["scale"], : w0 * c["scale"]]


# --- HAT (hat_arch.py) ---------------------------------------------------------------------------


def _published_oca_index(ws: int, ow: int) -> Tensor:
    co = torch.flatten(torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")), 1)
    ce = torch.flatten(torch.stack(torch.meshgrid([torch.arange(ow), torch.arange(ow)], indexing="ij")), 1)
    rel = (ce[:, None, :] - co[:, :, None]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - ow + 1
    rel[:, :, 1] += ws - ow + 1
    rel[:, :, 0] *= ws + ow - 1
    return rel.sum(-1)


def hat_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    e, ws = c["embed_dim"], c["window_size"]
    ow = ws + int(ws * c["overlap_ratio"])
    hidden, mid, sq = int(e * c["mlp_ratio"]), e // c["compress_ratio"], e // c["squeeze_factor"]
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("patch_embed.norm", e)
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        g = f"layers.{i}.residual_group."
        for j in range(depth):
            p = f"{g}blocks.{j}."
            out |= _norm(p + "norm1", e) | {p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, heads)}
            out |= _linear(p + "attn.qkv", 3 * e, e) | _linear(p + "attn.proj", e, e)
            out |= _conv_layout(p + "conv_block.cab.0", mid, e) | _conv_layout(p + "conv_block.cab.2", e, mid)
            out |= _conv_layout(p + "conv_block.cab.3.attention.1", sq, e, 1)
            out |= _conv_layout(p + "conv_block.cab.3.attention.3", e, sq, 1)
            out |= _norm(p + "norm2", e) | _linear(p + "mlp.fc1", hidden, e) | _linear(p + "mlp.fc2", e, hidden)
        p = f"{g}overlap_attn."
        out |= _norm(p + "norm1", e) | _linear(p + "qkv", 3 * e, e)
        out |= {p + "relative_position_bias_table": ((ws + ow - 1) ** 2, heads)} | _linear(p + "proj", e, e)
        out |= _norm(p + "norm2", e) | _linear(p + "mlp.fc1", hidden, e) | _linear(p + "mlp.fc2", e, hidden)
        out |= _resi_layout(f"layers.{i}.conv", e, "1conv")
    out |= (
        _norm("norm", e)
        | _resi_layout("conv_after_body", e, "1conv")
        | _tail_layout({**c, "upsampler": "pixelshuffle"}, e)
    )
    buffers = {
        "relative_position_index_SA": _published_index(ws),
        "relative_position_index_OCA": _published_oca_index(ws, ow),
    }
    return out, buffers


def _ocab(
    x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], ws: int, ow: int, heads: int, index: Tensor
) -> Tensor:
    """OCAB.forward as published (unfold of the keys and values, the einops rearrange spelt out)."""
    h, w = hw
    b, _, c = x.shape
    shortcut = x
    qkv = _lin(_ln(x, sd, f"{p}.norm1").view(b, h, w, c), sd, f"{p}.qkv").reshape(b, h, w, 3, c).permute(3, 0, 4, 1, 2)
    q = qkv[0].permute(0, 2, 3, 1)
    kv = torch.cat((qkv[1], qkv[2]), dim=1)
    qw = _partition(q, ws).view(-1, ws * ws, c)
    kvw = F.unfold(kv, kernel_size=(ow, ow), stride=ws, padding=(ow - ws) // 2)  # b, 2c*ow*ow, nw
    nw = kvw.shape[-1]
    kvw = kvw.view(b, 2, c, ow * ow, nw).permute(1, 0, 4, 3, 2).reshape(2, b * nw, ow * ow, c)
    kw, vw = kvw[0], kvw[1]
    b_, nq, _ = qw.shape
    d = c // heads
    q = qw.reshape(b_, nq, heads, d).permute(0, 2, 1, 3)
    k = kw.reshape(b_, ow * ow, heads, d).permute(0, 2, 1, 3)
    v = vw.reshape(b_, ow * ow, heads, d).permute(0, 2, 1, 3)
    attn = (q * d**-0.5) @ k.transpose(-2, -1)
    bias = sd[f"{p}.relative_position_bias_table"][index.view(-1)].view(ws * ws, ow * ow, -1)
    attn = torch.softmax(attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0), dim=-1)
    out = _reverse((attn @ v).transpose(1, 2).reshape(b_, nq, c).view(-1, ws, ws, c), ws, h, w).view(b, h * w, c)
    x = _lin(out, sd, f"{p}.proj") + shortcut
    return x + _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")


def hat_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """HATModel.pre_process (reflect pad to the window) + HAT.forward + the crop, as published."""
    h0, w0 = x.shape[2:]
    ws = c["window_size"]
    ow = ws + int(ws * c["overlap_ratio"])
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), "reflect")
    x = x - MEAN
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
        res = t
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            xn = _ln(t, sd, f"{p}.norm1")
            img = xn.view(b, h, w, e).permute(0, 3, 1, 2)
            cab = _conv(F.gelu(_conv(img, sd, f"{p}.conv_block.cab.0")), sd, f"{p}.conv_block.cab.2")
            y = F.adaptive_avg_pool2d(cab, 1)
            y = torch.sigmoid(
                _conv(
                    F.relu(_conv(y, sd, f"{p}.conv_block.cab.3.attention.1")), sd, f"{p}.conv_block.cab.3.attention.3"
                )
            )
            conv_x = (cab * y).permute(0, 2, 3, 1).contiguous().view(b, h * w, e)
            attn_x = _shifted_msa(
                xn, sd, f"{p}.attn", (h, w), ws, ws // 2 if j % 2 else 0, heads, sd["relative_position_index_SA"]
            )
            t = t + attn_x + conv_x * 0.01
            t = t + _mlp(_ln(t, sd, f"{p}.norm2"), sd, f"{p}.mlp")
        t = _ocab(
            t, sd, f"layers.{i}.residual_group.overlap_attn", (h, w), ws, ow, heads, sd["relative_position_index_OCA"]
        )
        t = _conv(t.transpose(1, 2).reshape(b, e, h, w), sd, f"layers.{i}.conv").flatten(2).transpose(1, 2) + res
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    feat = _conv(feat, sd, "conv_after_body") + first
    y = _tail(sd, {**c, "upsampler": "pixelshuffle"}, x, feat) + MEAN
    return y[:, :, : h0 * c["scale"], : w0 * c["scale"]]


# --- DAT (dat_arch.py) ---------------------------------------------------------------------------


def _bn_layout(p: str, n: int) -> Layout:
    return {
        f"{p}.weight": (n,),
        f"{p}.bias": (n,),
        f"{p}.running_mean": (n,),
        f"{p}.running_var": (n,),
        f"{p}.num_batches_tracked": (),
    }


def _aim_layout(p: str, e: int) -> Layout:
    out = {f"{p}dwconv.0.weight": (e, 1, 3, 3), f"{p}dwconv.0.bias": (e,)} | _bn_layout(f"{p}dwconv.1", e)
    out |= _conv_layout(f"{p}channel_interaction.1", e // 8, e, 1) | _bn_layout(f"{p}channel_interaction.2", e // 8)
    out |= _conv_layout(f"{p}channel_interaction.4", e, e // 8, 1)
    out |= _conv_layout(f"{p}spatial_interaction.0", e // 16, e, 1) | _bn_layout(f"{p}spatial_interaction.1", e // 16)
    return out | _conv_layout(f"{p}spatial_interaction.3", 1, e // 16, 1)


def _published_dat_buffers(hsp: int, wsp: int) -> tuple[Tensor, Tensor]:
    """Spatial_Attention's ``rpe_biases`` and ``relative_position_index``, as published."""
    biases = torch.stack(torch.meshgrid([torch.arange(1 - hsp, hsp), torch.arange(1 - wsp, wsp)], indexing="ij"))
    biases = biases.flatten(1).transpose(0, 1).contiguous().float()
    coords = torch.flatten(torch.stack(torch.meshgrid([torch.arange(hsp), torch.arange(wsp)], indexing="ij")), 1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += hsp - 1
    rel[:, :, 1] += wsp - 1
    rel[:, :, 0] *= 2 * wsp - 1
    return biases, rel.sum(-1)


def _dat_shifted(rg: int, b: int) -> bool:
    return (rg % 2 == 0 and b > 0 and (b - 2) % 4 == 0) or (rg % 2 != 0 and b % 4 == 0)


def dat_layout(c: dict[str, Any]) -> tuple[Layout, dict[str, Tensor]]:
    e, (s0, s1) = c["embed_dim"], c["split_size"]
    hidden = int(e * c["expansion_factor"])
    out = _conv_layout("conv_first", e, c["in_chans"]) | _norm("before_RG.1", e)
    buffers = {}
    for i, (depth, heads) in enumerate(zip(c["depth"], c["num_heads"])):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            out |= _norm(p + "norm1", e) | _linear(p + "attn.qkv", 3 * e, e) | _linear(p + "attn.proj", e, e)
            if j % 2 == 0:
                pos = (e // 2 // 4) // 4
                for br, (hsp, wsp) in enumerate(((s0, s1), (s1, s0))):
                    q = f"{p}attn.attns.{br}."
                    out |= _linear(q + "pos.pos_proj", pos, 2)
                    for k in (1, 2, 3):
                        out |= _norm(f"{q}pos.pos{k}.0", pos) | _linear(
                            f"{q}pos.pos{k}.2", heads // 2 if k == 3 else pos, pos
                        )
                    buffers[q + "rpe_biases"], buffers[q + "relative_position_index"] = _published_dat_buffers(hsp, wsp)
                if _dat_shifted(i, j):  # sized for the training patch (img_size 16 here)
                    buffers[p + "attn.attn_mask_0"] = torch.zeros(16 // s0 * 16 // s1, s0 * s1, s0 * s1)
                    buffers[p + "attn.attn_mask_1"] = torch.zeros(16 // s0 * 16 // s1, s0 * s1, s0 * s1)
            else:
                out |= {p + "attn.temperature": (heads, 1, 1)}
            out |= _aim_layout(p + "attn.", e)
            out |= _norm(p + "norm2", e) | _linear(p + "ffn.fc1", hidden, e) | _norm(p + "ffn.sg.norm", hidden // 2)
            out |= {p + "ffn.sg.conv.weight": (hidden // 2, 1, 3, 3), p + "ffn.sg.conv.bias": (hidden // 2,)}
            out |= _linear(p + "ffn.fc2", e, hidden // 2)
        out |= _resi_layout(f"layers.{i}.conv", e, c["resi_connection"])
    out |= _norm("norm", e) | _resi_layout("conv_after_body", e, c["resi_connection"]) | _tail_layout(c, e)
    return out, buffers


def _dat_mask(h: int, w: int, split: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Adaptive_Spatial_Attention.calculate_mask, as published."""
    m0, m1 = torch.zeros((1, h, w, 1)), torch.zeros((1, h, w, 1))
    sl = [(slice(0, -s), slice(-s, -t), slice(-t, None)) for s, t in zip(split, shift)]
    for m, (hs, wsl) in ((m0, (sl[0], sl[1])), (m1, (sl[1], sl[0]))):
        cnt = 0
        for a in hs:
            for bb in wsl:
                m[:, a, bb, :] = cnt
                cnt += 1
    out = []
    for m, (a, bb) in ((m0, split), (m1, split[::-1])):
        mw = m.view(1, h // a, a, w // bb, bb, 1).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, a * bb)
        mask = mw.unsqueeze(1) - mw.unsqueeze(2)
        out.append(mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0))
    return out[0], out[1]


def _dat_window_attn(
    qkv: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], hsp: int, wsp: int, heads: int, mask: Tensor | None
) -> Tensor:
    """Spatial_Attention.forward, as published."""
    h, w = hw
    q, k, v = qkv[0], qkv[1], qkv[2]
    b, _, c = q.shape

    def im2win(x: Tensor) -> Tensor:
        x = x.transpose(-2, -1).contiguous().view(b, c, h, w)
        x = x.view(b, c, h // hsp, hsp, w // wsp, wsp).permute(0, 2, 4, 3, 5, 1).contiguous().reshape(-1, hsp * wsp, c)
        return x.reshape(-1, hsp * wsp, heads, c // heads).permute(0, 2, 1, 3).contiguous()

    q, k, v = im2win(q), im2win(k), im2win(v)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    pos = _lin(sd[f"{p}.rpe_biases"], sd, f"{p}.pos.pos_proj")
    for kk in (1, 2, 3):
        pos = _lin(F.relu(_ln(pos, sd, f"{p}.pos.pos{kk}.0")), sd, f"{p}.pos.pos{kk}.2")
    bias = pos[sd[f"{p}.relative_position_index"].view(-1)].view(hsp * wsp, hsp * wsp, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    n = attn.shape[3]
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
    attn = torch.softmax(attn, dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(-1, hsp * wsp, c)
    x = x.view(b, h // hsp, w // wsp, hsp, wsp, -1).permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)
    return x


def _dwconv(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.gelu(_bn(_conv(x, sd, f"{p}dwconv.0", groups=x.shape[1]), sd, f"{p}dwconv.1"))


def _channel_map(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    y = F.gelu(
        _bn(_conv(F.adaptive_avg_pool2d(x, 1), sd, f"{p}channel_interaction.1"), sd, f"{p}channel_interaction.2")
    )
    return _conv(y, sd, f"{p}channel_interaction.4")


def _spatial_map(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    y = F.gelu(_bn(_conv(x, sd, f"{p}spatial_interaction.0"), sd, f"{p}spatial_interaction.1"))
    return _conv(y, sd, f"{p}spatial_interaction.3")


def _dat_branches(
    x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], c: dict[str, Any], heads: int, shifted: bool
) -> tuple[Tensor, Tensor]:
    """The two window branches of Adaptive_Spatial_Attention.forward (and RGT's L_SA.forward), as
    published (zero padding to the split size, the rolls): their output ``(B, N, C)`` and the
    values ``(B, C, H, W)``."""
    h, w = hw
    b, n, ch = x.shape
    split = tuple(c["split_size"])
    shift = (split[0] // 2, split[1] // 2)
    qkv = _lin(x, sd, f"{p}qkv").reshape(b, -1, 3, ch).permute(2, 0, 1, 3)
    v = qkv[2].transpose(-2, -1).contiguous().view(b, ch, h, w)
    m = max(split)
    pad_r, pad_b = (m - w % m) % m, (m - h % m) % m
    qkv = (
        F.pad(qkv.reshape(3 * b, h, w, ch).permute(0, 3, 1, 2), (0, pad_r, 0, pad_b))
        .reshape(3, b, ch, -1)
        .transpose(-2, -1)
    )
    hh, ww = h + pad_b, w + pad_r
    half = ch // 2
    if shifted:
        qkv = qkv.view(3, b, hh, ww, ch)
        q0 = torch.roll(qkv[:, :, :, :, :half], shifts=(-shift[0], -shift[1]), dims=(2, 3)).view(3, b, hh * ww, half)
        q1 = torch.roll(qkv[:, :, :, :, half:], shifts=(-shift[1], -shift[0]), dims=(2, 3)).view(3, b, hh * ww, half)
        m0, m1 = _dat_mask(hh, ww, split, shift)
        x1 = _dat_window_attn(q0, sd, f"{p}attns.0", (hh, ww), split[0], split[1], heads // 2, m0)
        x2 = _dat_window_attn(q1, sd, f"{p}attns.1", (hh, ww), split[1], split[0], heads // 2, m1)
        x1 = torch.roll(x1, shifts=shift, dims=(1, 2))[:, :h, :w, :].reshape(b, n, half)
        x2 = torch.roll(x2, shifts=shift[::-1], dims=(1, 2))[:, :h, :w, :].reshape(b, n, half)
    else:
        x1 = _dat_window_attn(qkv[..., :half], sd, f"{p}attns.0", (hh, ww), split[0], split[1], heads // 2, None)
        x2 = _dat_window_attn(qkv[..., half:], sd, f"{p}attns.1", (hh, ww), split[1], split[0], heads // 2, None)
        x1, x2 = x1[:, :h, :w, :].reshape(b, n, half), x2[:, :h, :w, :].reshape(b, n, half)
    return torch.cat([x1, x2], dim=2), v


def _dat_spatial(
    x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], c: dict[str, Any], heads: int, shifted: bool
) -> Tensor:
    """Adaptive_Spatial_Attention.forward, as published: the branches, then the AIM."""
    h, w = hw
    b, n, ch = x.shape
    att, v = _dat_branches(x, sd, p, hw, c, heads, shifted)
    conv_x = _dwconv(v, sd, p)
    channel_map = _channel_map(conv_x, sd, p).permute(0, 2, 3, 1).contiguous().view(b, 1, ch)
    spatial_map = _spatial_map(att.transpose(-2, -1).contiguous().view(b, ch, h, w), sd, p)
    att = att * torch.sigmoid(channel_map)
    conv_x = (torch.sigmoid(spatial_map) * conv_x).permute(0, 2, 3, 1).contiguous().view(b, n, ch)
    return _lin(att + conv_x, sd, f"{p}proj")


def _dat_channel(x: Tensor, sd: dict[str, Tensor], p: str, hw: tuple[int, int], heads: int) -> Tensor:
    """Adaptive_Channel_Attention.forward, as published."""
    h, w = hw
    b, n, ch = x.shape
    qkv = _lin(x, sd, f"{p}qkv").reshape(b, n, 3, heads, ch // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0].transpose(-2, -1), qkv[1].transpose(-2, -1), qkv[2].transpose(-2, -1)
    v_ = v.reshape(b, ch, n).contiguous().view(b, ch, h, w)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * sd[f"{p}temperature"], dim=-1)
    att = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, ch)
    conv_x = _dwconv(v_, sd, p)
    channel_map = _channel_map(att.transpose(-2, -1).contiguous().view(b, ch, h, w), sd, p)
    spatial_map = _spatial_map(conv_x, sd, p).permute(0, 2, 3, 1).contiguous().view(b, n, 1)
    att = att * torch.sigmoid(spatial_map)
    conv_x = (conv_x * torch.sigmoid(channel_map)).permute(0, 2, 3, 1).contiguous().view(b, n, ch)
    return _lin(att + conv_x, sd, f"{p}proj")


def dat_reference(sd: dict[str, Tensor], c: dict[str, Any], x: Tensor) -> Tensor:
    """DAT.forward as published (no image padding: inputs here are multiples of the split)."""
    x = x - MEAN
    first = _conv(x, sd, "conv_first")
    b, e, h, w = first.shape
    t = _ln(first.flatten(2).transpose(1, 2), sd, "before_RG.1")
    for i, (depth, heads) in enumerate(zip(c["depth"], c["num_heads"])):
        res = t
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            xn = _ln(t, sd, p + "norm1")
            if j % 2 == 0:
                t = t + _dat_spatial(xn, sd, p + "attn.", (h, w), c, heads, _dat_shifted(i, j))
            else:
                t = t + _dat_channel(xn, sd, p + "attn.", (h, w), heads)
            y = F.gelu(_lin(_ln(t, sd, p + "norm2"), sd, p + "ffn.fc1"))
            y1, y2 = y.chunk(2, dim=-1)
            y2 = _ln(y2, sd, p + "ffn.sg.norm").transpose(1, 2).contiguous().view(b, -1, h, w)
            y2 = _conv(y2, sd, p + "ffn.sg.conv", groups=y2.shape[1]).flatten(2).transpose(-1, -2)
            t = t + _lin(y1 * y2, sd, p + "ffn.fc2")
        body = _resi(t.transpose(1, 2).reshape(b, e, h, w), sd, f"layers.{i}.conv", c["resi_connection"])
        t = res + body.flatten(2).transpose(1, 2)
    feat = _ln(t, sd, "norm").transpose(1, 2).reshape(b, e, h, w)
    feat = _resi(feat, sd, "conv_after_body", c["resi_connection"]) + first
    return _tail(sd, c, x, feat) + MEAN


# --- the variants under test ---------------------------------------------------------------------

PUBLISHED: dict[str, tuple[Callable[..., tuple[Layout, dict[str, Tensor]]], Callable[..., Tensor]]] = {
    "swinir": (swinir_layout, swinir_reference),
    "hat": (hat_layout, hat_reference),
    "dat": (dat_layout, dat_reference),
}
"""Per family: the published key layout (and buffers) and the published forward."""

_SW = {"in_chans": 3, "embed_dim": 8, "depths": [2, 2], "num_heads": [2, 1], "window_size": 4, "mlp_ratio": 2.0}
_SW |= {"resi_connection": "1conv"}
_HAT = {"in_chans": 3, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0}
_HAT |= {"overlap_ratio": 0.5, "compress_ratio": 3, "squeeze_factor": 6}
_DAT = {"in_chans": 3, "embed_dim": 32, "depth": [2, 2], "num_heads": [2, 2], "split_size": [2, 4]}
_DAT |= {"resi_connection": "1conv", "upsampler": "pixelshuffle", "expansion_factor": 2.0}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "swinir-classical-x2": ("swinir", {**_SW, "upsampler": "pixelshuffle", "scale": 2}),
    "swinir-classical-x3": ("swinir", {**_SW, "upsampler": "pixelshuffle", "scale": 3}),
    "swinir-lightweight-x4": ("swinir", {**_SW, "upsampler": "pixelshuffledirect", "scale": 4}),
    "swinir-real-x4-L": (
        "swinir",
        {**_SW, "embed_dim": 16, "upsampler": "nearest+conv", "resi_connection": "3conv", "scale": 4},
    ),
    "swinir-real-x2": ("swinir", {**_SW, "upsampler": "nearest+conv", "scale": 2}),
    "swinir-denoise-x1": ("swinir", {**_SW, "upsampler": "none", "scale": 1}),
    "hat-x2": ("hat", {**_HAT, "scale": 2}),
    "hat-s-x3": ("hat", {**_HAT, "compress_ratio": 6, "squeeze_factor": 4, "scale": 3}),
    "hat-l-x4": ("hat", {**_HAT, "depths": [2, 1, 1], "num_heads": [2, 2, 1], "scale": 4}),
    "dat-x2": ("dat", {**_DAT, "expansion_factor": 4.0, "scale": 2}),
    "dat-s-x3": ("dat", {**_DAT, "split_size": [2, 2], "scale": 3}),
    "dat-2-x4": ("dat", {**_DAT, "depth": [1, 3], "scale": 4}),
    "dat-light-x2": (
        "dat",
        {
            **_DAT,
            "depth": [3],
            "num_heads": [2],
            "resi_connection": "3conv",
            "upsampler": "pixelshuffledirect",
            "scale": 2,
        },
    ),
}
"""Tiny configurations of each published variant: SwinIR's four reconstructions (and ``3conv``,
SwinIR-L's), HAT / HAT-S (thin CAB) / HAT-L (more groups) and DAT (expansion 4) / DAT-S
(another split) / DAT-2 (expansion 2) / DAT-light (one group, ``3conv``, ``pixelshuffledirect``)."""


def published(
    name: str,
    seed: int = 0,
    std: float = 0.3,
    variants: dict[str, tuple[str, dict[str, Any]]] = VARIANTS,
    families: dict[str, tuple[Callable[..., tuple[Layout, dict[str, Tensor]]], Callable[..., Tensor]]] = PUBLISHED,
) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """A random state dict of variant ``name`` (of ``variants``, with the layouts of ``families``)
    in the published layout, with its buffers."""
    family, cfg = variants[name]
    keys, buffers = families[family][0](cfg)
    return family, cfg, _randomise(keys, seed, buffers, std)


def _double(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


def _kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "scale"}


def _load(family: str, sd: dict[str, Tensor], scale: int) -> LoadedModel:
    arch, kwargs, found = detect_arch(sd)
    assert arch.name == family and found == scale
    module = arch.build(scale=scale, **kwargs).eval()
    load_strict(module, convert_for(arch, sd), "published")
    return LoadedModel(family, arch, module, scale, kwargs)


def assert_published_layout(family: str, cfg: dict[str, Any], sd: dict[str, Tensor], layout: Layout) -> None:
    """Our state dict is the published ``layout`` less the buffers we recompute (DAT and RGT keep
    ``rpe_biases``), and ``sd`` converted has our keys."""
    arch = get_arch(family)
    module = arch.build(scale=cfg["scale"], **_kwargs(cfg))
    keys, buffers = layout
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    kept = {k: tuple(v.shape) for k, v in buffers.items() if k.endswith("rpe_biases")}
    assert ours == {**keys, **kept}
    assert set(convert_for(arch, sd)) == set(ours)


def assert_forward_equals(
    family: str, cfg: dict[str, Any], sd: dict[str, Tensor], reference: Callable[..., Tensor], size: tuple[int, int]
) -> None:
    """The network detected and loaded from ``sd`` equals ``reference`` (the published forward) on
    a random ``size`` input, in fp64: random weights make outputs of 10-1000, beyond fp32's 1e-5."""
    model = _load(family, sd, cfg["scale"])
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = reference(_double(sd), cfg, x)
        ours = model.module.double()(x)
    assert ours.shape == (1, 3, size[0] * cfg["scale"], size[1] * cfg["scale"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def assert_detection_round_trip(family: str, cfg: dict[str, Any], sd: dict[str, Tensor]) -> None:
    """``sd`` is detected as ``family`` with ``cfg``'s kwargs and scale, and so is a file of our own
    export layout (no buffers) built from them."""
    arch, kwargs, scale = detect_arch(sd)
    assert (arch.name, scale) == (family, cfg["scale"])
    assert {k: kwargs[k] for k in _kwargs(cfg)} == _kwargs(cfg)
    module = arch.build(scale=scale, **kwargs)
    again, kwargs2, scale2 = detect_arch(module.state_dict())
    assert (again.name, kwargs2, scale2) == (family, kwargs, scale)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_published_layout_loads_strictly_without_the_buffers(name: str) -> None:
    family, cfg, sd = published(name)
    assert_published_layout(family, cfg, sd, PUBLISHED[family][0](cfg))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_equals_the_published_definition(name: str) -> None:
    family, cfg, sd = published(name)
    size = (8, 12) if family == "dat" else (10, 13)  # DAT's test code does not pad: a multiple of the split
    assert_forward_equals(family, cfg, sd, PUBLISHED[family][1], size)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_detection_and_kwargs_round_trip(name: str) -> None:
    family, cfg, sd = published(name)
    assert_detection_round_trip(family, cfg, sd)


def test_swinir_jpeg_grey_window7_runs_on_each_channel_at_img_range_255() -> None:
    cfg = {**_SW, "in_chans": 1, "window_size": 7, "upsampler": "none", "resi_connection": "1conv", "scale": 1}
    keys, buffers = swinir_layout(cfg)
    sd = _randomise(keys, 0, buffers)
    arch, kwargs, scale = detect_arch(sd)
    assert (arch.name, scale, kwargs["in_chans"], kwargs["img_range"]) == ("swinir", 1, 1, 255.0)
    module = arch.build(scale=1, **kwargs).eval()
    load_strict(module, convert_for(arch, sd), "published")
    x = torch.rand(1, 3, 15, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        rgb = module.double()(x)
        per_channel = [swinir_reference(_double(sd), {**cfg, "img_range": 255.0}, x[:, i : i + 1]) for i in range(3)]
    torch.testing.assert_close(rgb, torch.cat(per_channel, dim=1), atol=1e-5, rtol=0)


# --- receptive field -------------------------------------------------------------------------------


def _neutralise_global(module: torch.nn.Module) -> None:
    """Make the global paths constant: HAT's channel attention (zero last 1x1 conv), DAT's
    channel self-attention (zero temperature: uniform) and its C-maps (zero last 1x1 conv)."""
    for m in module.modules():
        if isinstance(m, ChannelAttention):
            torch.nn.init.zeros_(m.attention[3].weight)
        if isinstance(m, AdaptiveChannelAttention):
            torch.nn.init.zeros_(m.temperature)
        if hasattr(m, "channel_interaction"):
            torch.nn.init.zeros_(m.channel_interaction[4].weight)


def _reach(family: str, cfg: dict[str, Any]) -> tuple[int, int]:
    """(declared radius, largest reach of a one-pixel change over the pixel's window phases),
    fp64, random weights, the global paths made constant."""
    arch = get_arch(family)
    kw, s = {**arch.default_kwargs, **_kwargs(cfg)}, cfg["scale"]
    radius, m = arch.radius(kw, s), arch.size_multiple(kw, s)
    torch.manual_seed(0)
    net = arch.build(scale=s, **kw).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
        _neutralise_global(net)
    n = -(-(2 * radius + 4 * m) // m) * m
    x = torch.rand(1, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c0 = n // 2 // m * m
    reach = 0
    with torch.no_grad():
        y = net(x)
        for c in range(c0, c0 + m):  # the field depends on where the pixel lies in its windows
            x2 = x.clone()
            x2[..., c, c] += 1.0
            d = (net(x2) - y).abs().sum(1)[0]
            ys, xs = torch.nonzero(d > 0, as_tuple=True)
            reach = max(reach, int(max((ys // s - c).abs().max(), (xs // s - c).abs().max())))
    return radius, reach


@pytest.mark.parametrize("family", ["hat", "dat"])
def test_hat_and_dat_radius_is_the_exact_field_of_their_local_paths(family: str) -> None:
    """With the global paths made constant the field is exactly the declared radius (the
    registry contract test checks SwinIR's exactness, and bounds HAT's and DAT's leak)."""
    kwargs, scale = get_arch(family).test_configs[0]
    radius, reach = _reach(family, {**kwargs, "scale": scale})
    assert reach == radius


def test_published_radii_and_size_multiples() -> None:
    """Radii of the published default configurations (exact for SwinIR; the local paths of HAT
    and DAT), from their layer counts and windows."""
    light = {"upsampler": "pixelshuffledirect", "embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4}
    expect = [
        ("swinir", 2, {}, 153, 8),  # ~ 7 + 35 * 4 for 36 windows of 8, + the convs
        ("swinir", 4, light, 103, 8),  # ~ 7 + 23 * 4 for 24 windows, + the convs
        ("hat", 4, {}, 389, 16),
        ("dat", 4, {}, 312, 32),
    ]
    for family, scale, extra, radius, multiple in expect:
        arch = get_arch(family)
        kwargs = {**arch.default_kwargs, **extra}
        assert (arch.radius(kwargs, scale), arch.size_multiple(kwargs, scale)) == (radius, multiple), family


# --- tiling ----------------------------------------------------------------------------------------


def _psnr(a: Tensor, b: Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


@pytest.mark.parametrize("name", ["swinir-classical-x2", "hat-x2", "dat-x2"])
def test_tiles_with_the_radius_as_overlap_equal_the_whole_image(name: str) -> None:
    family, cfg, sd = published(name, std=0.03)
    model = _load(family, sd, cfg["scale"])
    if family != "swinir":
        _neutralise_global(model.module)
    r, m = model.radius, model.size_multiple
    image = torch.rand(3, 2 * r + 3 * m + 3, 2 * r + 2 * m + 1, generator=torch.Generator().manual_seed(4))
    assert_tiled_equals_whole(model, image, extra=2 * m)


@pytest.mark.parametrize("family", ["swinir", "hat", "dat", "drct", "rgt", "atd"])
def test_default_overlap_keeps_tiles_within_45db_of_the_whole_image(family: str, set14: Path) -> None:
    """A tiny network of the family with random weights in the published initialisation, a 64 px
    crop of Set14 ``baboon`` in tiles, the engine's default overlap (the radius, at most 16 px).
    ``benchmarks/transformer_tiling.py`` measures the published sizes, and harder weights."""
    arch = get_arch(family)
    kwargs, scale = {**arch.default_kwargs, **arch.test_configs[0][0]}, 2
    torch.manual_seed(0)
    model = LoadedModel(family, arch, arch.build(scale=scale, **kwargs).eval(), scale, kwargs)
    image = read_image(set14 / "baboon.png").color[:, :64, :64]
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    overlap = default_overlap(model.radius, model.size_multiple)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=2 * overlap + 16)
    assert tiled.overlap == overlap == min(model.radius, 16) and tiled.plan(64, 64).count > 1
    assert _psnr(tiled.upscale(image), whole.upscale(image)) >= 45.0


# --- the file alone, and training ------------------------------------------------------------------


def assert_weights_file_alone(
    family: str,
    cfg: dict[str, Any],
    sd: dict[str, Tensor],
    reference: Callable[..., Tensor],
    pad: tuple[int, int, int, int] | None,
    tmp_path: Path,
) -> None:
    """``upscale IMG --weights FILE.pth`` with no other flag (a BasicSR file: EMA first), and the
    loaded model's output equals ``reference`` (the published forward) on the input padded by
    ``pad`` (reflect: the published net on our padding), or on the input as is."""
    weights = tmp_path / f"{family}_community.pth"
    torch.save({"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}}, weights)  # BasicSR: EMA first
    src = tmp_path / "in.png"
    Image.fromarray((torch.rand(20, 17, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()).save(src)
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exc:
        main([str(src), "--weights", str(weights), "-o", str(out), "--device", "cpu"])
    assert exc.value.code in (0, None)
    s = cfg["scale"]
    assert Image.open(out).size == (17 * s, 20 * s)
    loaded = load_model(weights=str(weights))
    assert (loaded.arch.name, loaded.scale) == (family, s)
    x = read_image(src).color[None].double()
    loaded.module.double()
    with torch.no_grad():
        expect = reference(_double(sd), cfg, F.pad(x, pad, "reflect") if pad else x)
        torch.testing.assert_close(loaded(x), expect[..., : 20 * s, : 17 * s], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["swinir-lightweight-x4", "hat-x2", "dat-light-x2"])
def test_upscale_with_the_weights_file_alone(name: str, tmp_path: Path) -> None:
    family, cfg, sd = published(name)
    pad = (0, 3, 0, 0) if family == "dat" else None
    assert_weights_file_alone(family, cfg, sd, PUBLISHED[family][1], pad, tmp_path)


def test_upscale_train_trains_a_transformer_family_and_exports_it(tmp_path: Path) -> None:
    need_shared(SET14)
    result = run_train(
        tmp_path / "run",
        model="swinir",
        data=[str(SET14 / "baboon.png"), str(SET14 / "zebra.png")],
        model_kwargs={
            "embed_dim": 8,
            "depths": [1],
            "num_heads": [2],
            "window_size": 4,
            "upsampler": "pixelshuffledirect",
        },
        steps=2,
    )
    model = load_model(weights=str(result.out_dir / "model.safetensors"))
    assert (model.arch.name, model.scale, model.kwargs["depths"]) == ("swinir", 2, [1])
