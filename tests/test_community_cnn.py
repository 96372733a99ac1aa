"""Community CNN families (issue 18) against their published definitions.

* key names and shapes: written here from the published layouts (SPAN: hongyuanyu/SPAN
  ``basicsr/archs/span_arch.py``; PLKSR: dslisleedh/PLKSR ``plksr/archs/plksr_arch.py``;
  RealPLKSR: the neosr / traiNNer-redux definition), never read off our own modules;
* forward: a random state dict in that layout, run through a functional re-implementation of
  the published forward (``torch.nn.functional`` on the state dict), equals our network's;
* detection from the keys alone and the kwargs read back, per variant.

The registry contract (tests/test_registry_contract.py) adds meta build, exclusive claim,
radius and tiling checks from each family's ``test_configs``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import upscale_cli.models.span  # noqa: F401 - registers the family (the package imports it too)
import upscale_cli.models.plksr  # noqa: F401
from upscale_cli.models import detect_arch, get_arch
from upscale_cli.models.detect import claims

Scheme = dict[str, tuple[int, ...]]
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # span_arch.py rgb_mean


def _conv(k: Scheme, name: str, cin: int, cout: int, size: int = 3) -> None:
    k[f"{name}.weight"] = (cout, cin, size, size)
    k[f"{name}.bias"] = (cout,)


def random_state(scheme: Scheme, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in scheme.items()}


def create_model(name: str, scale: int, **kwargs: object) -> torch.nn.Module:
    """The family's network (not a named model of the same name) with ``kwargs`` over its defaults."""
    arch = get_arch(name)
    return arch.build(scale=scale, **{**arch.default_kwargs, **kwargs})


def assert_layout(name: str, scale: int, kwargs: dict, scheme: Scheme) -> None:
    net = create_model(name, scale, **kwargs)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == scheme


def assert_detected(sd: dict[str, Tensor], name: str, kwargs: dict, scale: int) -> None:
    arch, found, found_scale = detect_arch(sd)
    assert arch.name == name and found_scale == scale
    assert {k: found[k] for k in kwargs} == kwargs


def assert_forward(name: str, scale: int, kwargs: dict, sd: dict[str, Tensor],
                   reference: Callable[[dict[str, Tensor], Tensor], Tensor], size: int = 16) -> None:
    """In fp64, so that 1e-5 is far above rounding even where SPAN works in 0..255."""
    net = create_model(name, scale, **kwargs).eval().double()
    sd = {k: v.double() for k, v in sd.items()}
    net.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, size, size + 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(sd, x), atol=1e-5, rtol=1e-5)


# --- SPAN (Wan et al., CVPRW 2024) ------------------------------------------------------------


def _conv3xc(k: Scheme, name: str, cin: int, cout: int) -> None:
    """span_arch.Conv3XC(gain1=2): sk 1x1, conv = 1x1 (x2 width), 3x3, 1x1; eval_conv 3x3."""
    _conv(k, f"{name}.sk", cin, cout, 1)
    _conv(k, f"{name}.conv.0", cin, 2 * cin, 1)
    _conv(k, f"{name}.conv.1", 2 * cin, 2 * cout, 3)
    _conv(k, f"{name}.conv.2", 2 * cout, cout, 1)
    _conv(k, f"{name}.eval_conv", cin, cout, 3)


def span_scheme(nf: int, blocks: int, scale: int, norm: bool = True) -> Scheme:
    k: Scheme = {}
    _conv3xc(k, "conv_1", 3, nf)
    for b in range(1, blocks + 1):
        for c in ("c1_r", "c2_r", "c3_r"):
            _conv3xc(k, f"block_{b}.{c}", nf, nf)
    _conv(k, "conv_cat", 4 * nf, nf, 1)
    _conv3xc(k, "conv_2", nf, nf)
    _conv(k, "upsampler.0", nf, 3 * scale * scale)
    if not norm:
        k["no_norm"] = (1,)
    return k


def span_reference(sd: dict[str, Tensor], x: Tensor, blocks: int, scale: int, norm: bool = True) -> Tensor:
    """span_arch.SPAN.forward, each Conv3XC in its training form (the eval conv is folded from it)."""

    def c3xc(name: str, h: Tensor) -> Tensor:
        p = F.pad(h, (1, 1, 1, 1))
        for i in range(3):
            p = F.conv2d(p, sd[f"{name}.conv.{i}.weight"], sd[f"{name}.conv.{i}.bias"])
        return p + F.conv2d(h, sd[f"{name}.sk.weight"], sd[f"{name}.sk.bias"])

    def spab(b: int, h: Tensor) -> tuple[Tensor, Tensor]:
        out1 = c3xc(f"block_{b}.c1_r", h)
        out3 = c3xc(f"block_{b}.c3_r", F.silu(c3xc(f"block_{b}.c2_r", F.silu(out1))))
        return (out3 + h) * (torch.sigmoid(out3) - 0.5), out1

    if norm:
        x = (x - torch.tensor(DIV2K_MEAN, dtype=x.dtype).view(1, 3, 1, 1)) * 255.0
    feat = c3xc("conv_1", x)
    out, out1 = spab(1, feat)
    first = out
    for b in range(2, blocks + 1):
        out, out1 = spab(b, out)
    cat = torch.cat([feat, c3xc("conv_2", out), first, out1], 1)
    y = F.conv2d(cat, sd["conv_cat.weight"], sd["conv_cat.bias"])
    y = F.conv2d(y, sd["upsampler.0.weight"], sd["upsampler.0.bias"], padding=1)
    return F.pixel_shuffle(y, scale)


SPAN_CASES = [(8, 2, 4, True), (6, 3, 2, True), (4, 1, 3, False)]


@pytest.mark.parametrize(("nf", "blocks", "scale", "norm"), SPAN_CASES)
def test_span_layout_detection_and_forward(nf: int, blocks: int, scale: int, norm: bool) -> None:
    kwargs = {"feature_channels": nf, "num_blocks": blocks, "norm": norm}
    scheme = span_scheme(nf, blocks, scale, norm)
    assert_layout("span", scale, kwargs, scheme)
    sd = random_state(scheme)
    assert_detected(sd, "span", kwargs, scale)
    assert_forward("span", scale, kwargs, sd, lambda s, x: span_reference(s, x, blocks, scale, norm))


def test_span_published_size_is_read_from_the_file() -> None:
    """The released SPAN (48 channels, 6 blocks, x4) is recognised with no other flag."""
    sd = {k: torch.zeros(s) for k, s in span_scheme(48, 6, 4).items()}
    assert_detected(sd, "span", {"feature_channels": 48, "num_blocks": 6, "norm": True}, 4)


def test_span_training_form_equals_the_folded_eval_conv() -> None:
    """Training (branches) and eval (one folded 3x3 conv) compute the same function."""
    net = create_model("span", 2, feature_channels=4, num_blocks=1).double()
    net.load_state_dict(random_state(span_scheme(4, 1, 2)))
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net.train()(x), net.eval()(x), atol=1e-5, rtol=1e-5)


# --- PLKSR and RealPLKSR (Lee et al., 2024) ---------------------------------------------------

CCM_KERNELS = {"CCM": (3, 1), "ICCM": (1, 3), "DCCM": (3, 3)}  # plksr_arch.py CCM / ICCM / DCCM


def plksr_scheme(dim: int, blocks: int, scale: int, ccm: str, ks: int, pdim: int, ea: bool = True) -> Scheme:
    """plksr_arch.PLKSR: feats.0, feats.{1..n} PLKBlock (channe_mixer.{0,2}, lk.conv, attn.f.0,
    refine), feats.{n+1} to 3 * scale^2."""
    k: Scheme = {}
    _conv(k, "feats.0", 3, dim)
    k1, k2 = CCM_KERNELS[ccm]
    for b in range(1, blocks + 1):
        _conv(k, f"feats.{b}.channe_mixer.0", dim, 2 * dim, k1)
        _conv(k, f"feats.{b}.channe_mixer.2", 2 * dim, dim, k2)
        _conv(k, f"feats.{b}.lk.conv", pdim, pdim, ks)
        if ea:
            _conv(k, f"feats.{b}.attn.f.0", dim, dim)
        _conv(k, f"feats.{b}.refine", dim, dim, 1)
    _conv(k, f"feats.{blocks + 1}", dim, 3 * scale * scale)
    return k


def realplksr_scheme(dim: int, blocks: int, scale: int, ks: int, pdim: int, layer_norm: bool = False,
                     dysample: bool = False) -> Scheme:
    """RealPLKSR: blocks with layer_norm (or norm = GroupNorm), channel_mixer.{0,2} (3x3, 3x3),
    lk.conv, attn.f.0, refine; Dropout2d at feats.{n+1}, the tail conv at feats.{n+2}; DySample
    to_img.{offset, scope (no bias), end_conv} and the init_pos buffer."""
    k: Scheme = {}
    _conv(k, "feats.0", 3, dim)
    for b in range(1, blocks + 1):
        if layer_norm:
            k[f"feats.{b}.layer_norm.weight"] = k[f"feats.{b}.layer_norm.bias"] = (dim,)
        _conv(k, f"feats.{b}.channel_mixer.0", dim, 2 * dim)
        _conv(k, f"feats.{b}.channel_mixer.2", 2 * dim, dim)
        _conv(k, f"feats.{b}.lk.conv", pdim, pdim, ks)
        _conv(k, f"feats.{b}.attn.f.0", dim, dim)
        _conv(k, f"feats.{b}.refine", dim, dim, 1)
        if not layer_norm:
            k[f"feats.{b}.norm.weight"] = k[f"feats.{b}.norm.bias"] = (dim,)
    _conv(k, f"feats.{blocks + 2}", dim, 3 * scale * scale)
    if dysample:
        c, groups = 3 * scale * scale, 3 if scale % 2 else 4
        _conv(k, "to_img.offset", c, 2 * groups * scale * scale, 1)
        k["to_img.scope.weight"] = (2 * groups * scale * scale, c, 1, 1)
        _conv(k, "to_img.end_conv", c, 3, 1)
        k["to_img.init_pos"] = (1, 2 * groups * scale * scale, 1, 1)
    return k


def published_init_pos(scale: int, groups: int) -> Tensor:
    """DySample._init_pos as published."""
    h = torch.arange((-scale + 1) / 2, (scale - 1) / 2 + 1) / scale
    return torch.stack(torch.meshgrid([h, h], indexing="ij")).transpose(1, 2).repeat(1, groups, 1).reshape(1, -1, 1, 1)


def dysample_reference(sd: dict[str, Tensor], x: Tensor, scale: int) -> Tensor:
    """DySample.forward as published (Liu et al. 2023; the RealPLKSR version)."""
    groups = 3 if scale % 2 else 4
    offset = F.conv2d(x, sd["to_img.offset.weight"], sd["to_img.offset.bias"])
    scope = F.conv2d(x, sd["to_img.scope.weight"])
    offset = offset * scope.sigmoid() * 0.5 + sd["to_img.init_pos"]
    b, _, h, w = offset.shape
    offset = offset.view(b, 2, -1, h, w)
    coords_h, coords_w = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    coords = torch.stack(torch.meshgrid([coords_w, coords_h], indexing="ij")).transpose(1, 2)
    coords = coords.unsqueeze(1).unsqueeze(0).type(x.dtype)
    normalizer = torch.tensor([w, h], dtype=x.dtype).view(1, 2, 1, 1, 1)
    coords = 2 * (coords + offset) / normalizer - 1
    coords = F.pixel_shuffle(coords.reshape(b, -1, h, w), scale).view(b, 2, -1, scale * h, scale * w)
    coords = coords.permute(0, 2, 3, 4, 1).contiguous().flatten(0, 1)
    out = F.grid_sample(x.reshape(b * groups, -1, h, w), coords, mode="bilinear", align_corners=False,
                        padding_mode="border").view(b, -1, scale * h, scale * w)
    return F.conv2d(out, sd["to_img.end_conv.weight"], sd["to_img.end_conv.bias"])


def plksr_reference(sd: dict[str, Tensor], x: Tensor, blocks: int, scale: int, real: bool = False,
                    layer_norm: bool = False, dysample: bool = False) -> Tensor:
    """PLKSR.forward / RealPLKSR.forward as published (eval mode: dropout off, with_idt off)."""

    def c(name: str, h: Tensor) -> Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(h, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)

    mixer, act = ("channel_mixer", F.mish) if real else ("channe_mixer", F.gelu)
    h = c("feats.0", x)
    for b in range(1, blocks + 1):
        p = f"feats.{b}"
        skip = h
        if layer_norm:
            u = h.mean(1, keepdim=True)
            s = (h - u).pow(2).mean(1, keepdim=True)
            h = sd[f"{p}.layer_norm.weight"][:, None, None] * (h - u) / torch.sqrt(s + 1e-6)
            h = h + sd[f"{p}.layer_norm.bias"][:, None, None]
        h = c(f"{p}.{mixer}.2", act(c(f"{p}.{mixer}.0", h)))
        pdim = sd[f"{p}.lk.conv.weight"].shape[0]
        h = torch.cat([c(f"{p}.lk.conv", h[:, :pdim]), h[:, pdim:]], 1)
        if f"{p}.attn.f.0.weight" in sd:
            h = h * torch.sigmoid(c(f"{p}.attn.f.0", h))
        h = c(f"{p}.refine", h)
        if real and not layer_norm:
            h = F.group_norm(h, 4, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"])
        h = h + skip
    y = c(f"feats.{blocks + (2 if real else 1)}", h) + torch.repeat_interleave(x, scale * scale, dim=1)
    return dysample_reference(sd, y, scale) if dysample else F.pixel_shuffle(y, scale)


PLKSR_CASES = [  # dim, blocks, scale, ccm, kernel, pdim, ea
    (8, 2, 4, "CCM", 5, 2, True),
    (8, 1, 2, "ICCM", 7, 4, True),
    (4, 2, 3, "DCCM", 3, 1, False),
]


@pytest.mark.parametrize(("dim", "blocks", "scale", "ccm", "ks", "pdim", "ea"), PLKSR_CASES)
def test_plksr_layout_detection_and_forward(dim: int, blocks: int, scale: int, ccm: str, ks: int, pdim: int,
                                            ea: bool) -> None:
    kwargs = {"dim": dim, "n_blocks": blocks, "ccm_type": ccm, "kernel_size": ks, "split_ratio": pdim / dim,
              "use_ea": ea}
    scheme = plksr_scheme(dim, blocks, scale, ccm, ks, pdim, ea)
    assert_layout("plksr", scale, kwargs, scheme)
    sd = random_state(scheme)
    assert_detected(sd, "plksr", kwargs, scale)
    assert_forward("plksr", scale, kwargs, sd, lambda s, x: plksr_reference(s, x, blocks, scale))


REALPLKSR_CASES = [  # dim, blocks, scale, kernel, pdim, layer_norm, dysample
    (8, 2, 4, 5, 2, False, False),
    (8, 1, 2, 3, 2, True, False),
    (8, 1, 4, 5, 2, False, True),
    (4, 1, 3, 3, 1, True, True),
    (8, 1, 2, 3, 2, True, True),
]


@pytest.mark.parametrize(("dim", "blocks", "scale", "ks", "pdim", "ln", "dys"), REALPLKSR_CASES)
def test_realplksr_layout_detection_and_forward(dim: int, blocks: int, scale: int, ks: int, pdim: int, ln: bool,
                                                dys: bool) -> None:
    kwargs = {"dim": dim, "n_blocks": blocks, "kernel_size": ks, "split_ratio": pdim / dim, "layer_norm": ln,
              "dysample": dys}
    scheme = realplksr_scheme(dim, blocks, scale, ks, pdim, ln, dys)
    assert_layout("realplksr", scale, kwargs, scheme)
    sd = random_state(scheme)
    if dys:
        groups = 3 if scale % 2 else 4
        own = create_model("realplksr", scale, **kwargs).state_dict()["to_img.init_pos"]
        torch.testing.assert_close(own, published_init_pos(scale, groups))
        sd["to_img.init_pos"] = published_init_pos(scale, groups)
    assert_detected(sd, "realplksr", kwargs, scale)
    assert [a.name for a, _ in claims(sd)] == ["realplksr"]  # the contract checks the configs it has
    assert_forward("realplksr", scale, kwargs, sd,
                   lambda s, x: plksr_reference(s, x, blocks, scale, real=True, layer_norm=ln, dysample=dys))


def test_plksr_released_sizes_are_read_from_the_file() -> None:
    """PLKSR (64 dim, 28 blocks, kernel 17) and PLKSR-tiny (64, 12, kernel 13), both split
    0.25 (the authors' option files), and RealPLKSR 64/28/17 with DySample x4."""
    for blocks, ks in ((28, 17), (12, 13)):
        sd = {k: torch.zeros(s) for k, s in plksr_scheme(64, blocks, 4, "CCM", ks, 16).items()}
        assert_detected(sd, "plksr", {"n_blocks": blocks, "kernel_size": ks, "split_ratio": 0.25}, 4)
    sd = {k: torch.zeros(s) for k, s in realplksr_scheme(64, 28, 4, 17, 16, dysample=True).items()}
    assert_detected(sd, "realplksr", {"n_blocks": 28, "dysample": True, "layer_norm": False}, 4)
