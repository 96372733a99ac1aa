"""The zoo's architectures against their published schemes (issue 3, "Architectures").

* key names and shapes: the expected lists are written here from the published layouts
  (EDSR-PyTorch, RCAN, BasicSR RRDBNet and MSRResNet), never read off our own modules;
* forward: checkpoints written in those schemes compute what the published forwards compute,
  re-implemented here with ``torch.nn.functional`` on the state dict;
* the published models' radii and parameter counts, RCAN's attention leak.

Building, detection from keys, kwargs read off shapes, the exactness of every radius and
tiling are the registry contract's (tests/test_registry_contract.py); the ESRGAN and Compact
community layouts are tests/test_esrgan_layouts.py's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upscale_cli.models import LoadedModel, create_model, get_arch, get_spec

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR-PyTorch / RCAN option.py rgb_mean

Scheme = dict[str, tuple[int, ...]]


# --- the published schemes ------------------------------------------------------------------


def _conv(k: Scheme, name: str, cin: int, cout: int, size: int = 3) -> None:
    k[f"{name}.weight"] = (cout, cin, size, size)
    k[f"{name}.bias"] = (cout,)


def _mean_shift_and_tail(k: Scheme, nf: int, scale: int) -> None:
    """EDSR-PyTorch common.MeanShift / Upsampler + final conv (tail.0.{0,2,..}, tail.1)."""
    _conv(k, "sub_mean", 3, 3, 1)
    _conv(k, "add_mean", 3, 3, 1)
    if scale == 3:
        _conv(k, "tail.0.0", nf, 9 * nf)
    else:
        for j in range(int(math.log2(scale))):  # conv at 0, PixelShuffle at 1, conv at 2, ...
            _conv(k, f"tail.0.{2 * j}", nf, 4 * nf)
    _conv(k, "tail.1", nf, 3)


def edsr_scheme(nb: int, nf: int, scale: int) -> Scheme:
    k: Scheme = {}
    _mean_shift_and_tail(k, nf, scale)
    _conv(k, "head.0", 3, nf)
    for i in range(nb):
        _conv(k, f"body.{i}.body.0", nf, nf)
        _conv(k, f"body.{i}.body.2", nf, nf)
    _conv(k, f"body.{nb}", nf, nf)
    return k


def rcan_scheme(groups: int, blocks: int, nf: int, reduction: int, scale: int) -> Scheme:
    k: Scheme = {}
    _mean_shift_and_tail(k, nf, scale)
    _conv(k, "head.0", 3, nf)
    for g in range(groups):
        for b in range(blocks):
            p = f"body.{g}.body.{b}.body"
            _conv(k, f"{p}.0", nf, nf)
            _conv(k, f"{p}.2", nf, nf)
            _conv(k, f"{p}.3.conv_du.0", nf, nf // reduction, 1)
            _conv(k, f"{p}.3.conv_du.2", nf // reduction, nf, 1)
        _conv(k, f"body.{g}.body.{blocks}", nf, nf)
    _conv(k, f"body.{groups}", nf, nf)
    return k


def rrdbnet_scheme(nb: int, nf: int, gc: int, scale: int) -> Scheme:
    k: Scheme = {}
    _conv(k, "conv_first", 3 * {4: 1, 2: 4, 1: 16}[scale], nf)
    for i in range(nb):
        for r in (1, 2, 3):
            for j in range(1, 5):
                _conv(k, f"body.{i}.rdb{r}.conv{j}", nf + (j - 1) * gc, gc)
            _conv(k, f"body.{i}.rdb{r}.conv5", nf + 4 * gc, nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(k, name, nf, nf)
    _conv(k, "conv_last", nf, 3)
    return k


def srresnet_scheme(nb: int, nf: int, scale: int) -> Scheme:
    k: Scheme = {}
    _conv(k, "conv_first", 3, nf)
    for i in range(nb):
        _conv(k, f"body.{i}.conv1", nf, nf)
        _conv(k, f"body.{i}.conv2", nf, nf)
    if scale == 4:
        _conv(k, "upconv1", nf, 4 * nf)
        _conv(k, "upconv2", nf, 4 * nf)
    else:
        _conv(k, "upconv1", nf, nf * scale * scale)
    _conv(k, "conv_hr", nf, nf)
    _conv(k, "conv_last", nf, 3)
    return k


def shapes_of(model: nn.Module) -> Scheme:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def meta_model(name: str, scale: int) -> nn.Module:
    """The named model built without allocating its weights (shapes only; cached, read-only)."""
    with torch.device("meta"):
        return create_model(name, scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_keys_follow_the_official_scheme(scale: int) -> None:
    assert shapes_of(meta_model("edsr-baseline", scale)) == edsr_scheme(16, 64, scale)
    assert shapes_of(meta_model("edsr", scale)) == edsr_scheme(32, 256, scale)


@pytest.mark.parametrize("scale", [3, 4])  # x2 is the first step of x4's upsampler
def test_rcan_keys_follow_the_official_scheme(scale: int) -> None:
    assert shapes_of(meta_model("rcan", scale)) == rcan_scheme(10, 20, 64, 16, scale)


def test_rrdbnet_keys_follow_basicsr() -> None:
    assert shapes_of(meta_model("realesrgan-x4plus", 4)) == rrdbnet_scheme(23, 64, 32, 4)
    assert shapes_of(meta_model("esrgan", 4)) == rrdbnet_scheme(23, 64, 32, 4)
    assert shapes_of(meta_model("realesrgan-x2plus", 2)) == rrdbnet_scheme(23, 64, 32, 2)
    assert shapes_of(get_arch("rrdbnet").build(scale=1, num_block=2)) == rrdbnet_scheme(2, 64, 32, 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_srresnet_keys_follow_basicsr_msrresnet(scale: int) -> None:
    assert shapes_of(meta_model("srresnet", scale)) == srresnet_scheme(16, 64, scale)


def test_mean_shift_holds_the_div2k_mean_in_0_255() -> None:
    sd = create_model("edsr-baseline", 2).state_dict()
    mean = torch.tensor(DIV2K_MEAN)
    assert torch.equal(sd["sub_mean.weight"], torch.eye(3).view(3, 3, 1, 1))
    assert torch.allclose(sd["sub_mean.bias"], -255 * mean)
    assert torch.allclose(sd["add_mean.bias"], 255 * mean)
    assert not any(p.requires_grad for n, p in meta_model("rcan", 2).named_parameters() if "_mean" in n)


# --- the published forwards, re-implemented on the state dict -------------------------------


def random_sd(scheme: Scheme, dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, Tensor]:
    """Random weights in a scheme (He-like scale) with the official mean-shift values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shp in scheme.items():
        fan_in = math.prod(shp[1:]) if len(shp) > 1 else 10
        sd[key] = torch.randn(shp, generator=g, dtype=dtype) / math.sqrt(fan_in)
    if "sub_mean.weight" in sd:
        mean = torch.tensor(DIV2K_MEAN, dtype=dtype)
        for name, sign in (("sub_mean", -1), ("add_mean", 1)):
            sd[f"{name}.weight"] = torch.eye(3, dtype=dtype).view(3, 3, 1, 1)
            sd[f"{name}.bias"] = sign * 255.0 * mean
    return sd


def c(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)


def nearest2(x: Tensor) -> Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def unshuffle(x: Tensor, f: int) -> Tensor:
    """BasicSR arch_util.pixel_unshuffle."""
    b, ch, h, w = x.shape
    return x.view(b, ch, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * f * f, h // f, w // f)


def edsr_tail(sd: dict[str, Tensor], r: Tensor, scale: int) -> Tensor:
    """EDSR-PyTorch: tail = [Upsampler (conv, PixelShuffle)*, conv]; then add_mean."""
    steps = [3] if scale == 3 else [2] * int(math.log2(scale))
    for j, f in enumerate(steps):
        r = F.pixel_shuffle(c(sd, f"tail.0.{2 * j}", r), f)
    return c(sd, "add_mean", c(sd, "tail.1", r))


def edsr_reference(sd: dict[str, Tensor], x255: Tensor, nb: int, scale: int, res_scale: float) -> Tensor:
    """EDSR-PyTorch edsr.py forward: sub_mean, head, body (+skip), tail, add_mean; 0..255."""
    h = c(sd, "head.0", c(sd, "sub_mean", x255))
    r = h
    for i in range(nb):
        r = r + res_scale * c(sd, f"body.{i}.body.2", F.relu(c(sd, f"body.{i}.body.0", r)))
    return edsr_tail(sd, c(sd, f"body.{nb}", r) + h, scale)


def rcan_reference(sd: dict[str, Tensor], x255: Tensor, groups: int, blocks: int, scale: int) -> Tensor:
    """RCAN rcan.py forward (Eqs. 5-11): RCAB = x + CA(conv(relu(conv(x))))."""
    h = c(sd, "head.0", c(sd, "sub_mean", x255))
    r = h
    for g in range(groups):
        g_in = r
        for b in range(blocks):
            p = f"body.{g}.body.{b}.body"
            y = c(sd, f"{p}.2", F.relu(c(sd, f"{p}.0", r)))
            pooled = y.mean((2, 3), keepdim=True)
            att = torch.sigmoid(c(sd, f"{p}.3.conv_du.2", F.relu(c(sd, f"{p}.3.conv_du.0", pooled))))
            r = r + y * att
        r = c(sd, f"body.{g}.body.{blocks}", r) + g_in
    return edsr_tail(sd, c(sd, f"body.{groups}", r) + h, scale)


def rrdbnet_reference(sd: dict[str, Tensor], x: Tensor, nb: int, scale: int) -> Tensor:
    """BasicSR RRDBNet.forward: pixel-unshuffle (x2: 2, x1: 4), RRDB trunk, nearest x2 twice."""
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    f = {4: 1, 2: 2, 1: 4}[scale]
    feat = c(sd, "conv_first", unshuffle(x, f) if f > 1 else x)
    t = feat
    for i in range(nb):
        out = t
        for r in (1, 2, 3):
            xs = [out]
            for j in range(1, 5):
                xs.append(lrelu(c(sd, f"body.{i}.rdb{r}.conv{j}", torch.cat(xs, 1))))
            out = c(sd, f"body.{i}.rdb{r}.conv5", torch.cat(xs, 1)) * 0.2 + xs[0]
        t = out * 0.2 + t
    feat = feat + c(sd, "conv_body", t)
    feat = lrelu(c(sd, "conv_up1", nearest2(feat)))
    feat = lrelu(c(sd, "conv_up2", nearest2(feat)))
    return c(sd, "conv_last", lrelu(c(sd, "conv_hr", feat)))


def srresnet_reference(sd: dict[str, Tensor], x: Tensor, nb: int, scale: int) -> Tensor:
    """BasicSR MSRResNet.forward: lrelu 0.1, residual blocks, pixel shuffle, + bilinear base."""
    lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    out = lrelu(c(sd, "conv_first", x))
    for i in range(nb):
        out = out + c(sd, f"body.{i}.conv2", F.relu(c(sd, f"body.{i}.conv1", out)))
    if scale == 4:
        out = lrelu(F.pixel_shuffle(c(sd, "upconv1", out), 2))
        out = lrelu(F.pixel_shuffle(c(sd, "upconv2", out), 2))
    else:
        out = lrelu(F.pixel_shuffle(c(sd, "upconv1", out), scale))
    out = c(sd, "conv_last", lrelu(c(sd, "conv_hr", out)))
    return out + F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def loaded(arch: str, sd: dict[str, Tensor], scale: int, **kwargs: Any) -> LoadedModel:
    module = get_arch(arch).build(scale=scale, **kwargs).to(sd[next(iter(sd))].dtype)
    module.load_state_dict(sd, strict=True)
    return LoadedModel(arch, get_arch(arch), module.eval(), scale, kwargs)


def close(a: Tensor, b: Tensor, tol: float = 1e-9) -> bool:
    return a.shape == b.shape and bool(((a - b).abs().max() <= tol * (1 + b.abs().max())).item())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_baseline_computes_the_published_forward(scale: int) -> None:
    sd = random_sd(edsr_scheme(16, 64, scale), seed=scale)
    net = loaded("edsr", sd, scale, n_resblocks=16, n_feats=64, res_scale=1.0)
    x = torch.rand(1, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = edsr_reference(sd, x * 255, 16, scale, 1.0)
        assert close(net.module(x * 255), ref)
        # the descriptor hides the 0..255 convention: RGB 0..1 in and out
        assert net.convention == "rgb255"
        assert close(net(x), ref / 255)


def test_edsr_full_computes_the_published_forward_with_residual_scaling() -> None:
    sd = random_sd(edsr_scheme(32, 256, 3), dtype=torch.float32, seed=7)
    net = loaded("edsr", sd, 3, **get_spec("edsr").kwargs)
    x = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        ref = edsr_reference(sd, x, 32, 3, 0.1)
        assert close(net.module(x), ref, tol=1e-5)
        assert not close(net.module(x), edsr_reference(sd, x, 32, 3, 1.0), tol=1e-3)


def test_edsr_trained_on_0_1_range_is_rescaled() -> None:
    """EDSR-PyTorch --rgb_range 1: the mean shift bias is -mean; inferred and honoured."""
    sd = random_sd(edsr_scheme(2, 8, 2))
    sd["sub_mean.bias"] = sd["sub_mean.bias"] / 255
    sd["add_mean.bias"] = sd["add_mean.bias"] / 255
    kwargs, scale = get_arch("edsr").infer_kwargs(sd)
    assert kwargs["rgb_range"] == 1.0 and scale == 2
    net = loaded("edsr", sd, 2, **kwargs)
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert close(net(x), edsr_reference(sd, x, 2, 2, 1.0))


@pytest.mark.parametrize("scale", [2, 4])
def test_rcan_computes_the_published_forward(scale: int) -> None:
    sd = random_sd(rcan_scheme(2, 3, 16, 4, scale), seed=scale)
    net = loaded("rcan", sd, scale, n_resgroups=2, n_resblocks=3, n_feats=16, reduction=4)
    x = torch.rand(1, 3, 6, 7, dtype=torch.float64) * 255
    with torch.no_grad():
        assert close(net.module(x), rcan_reference(sd, x, 2, 3, scale))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_computes_the_basicsr_forward(scale: int) -> None:
    sd = random_sd(rrdbnet_scheme(2, 16, 8, scale), seed=scale)
    net = loaded("rrdbnet", sd, scale, num_block=2, num_feat=16, num_grow_ch=8)
    assert net.size_multiple == {4: 1, 2: 2, 1: 4}[scale]
    x = torch.rand(1, 3, 8, 12, dtype=torch.float64)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, 8 * scale, 12 * scale)
        assert close(y, rrdbnet_reference(sd, x, 2, scale))
        # odd sizes are padded to the unshuffle multiple and cropped back
        assert net(x[..., :7, :11]).shape == (1, 3, 7 * scale, 11 * scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_srresnet_computes_the_basicsr_forward(scale: int) -> None:
    sd = random_sd(srresnet_scheme(3, 16, scale), seed=scale)
    net = loaded("srresnet", sd, scale, num_block=3, num_feat=16)
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        assert close(net(x), srresnet_reference(sd, x, 3, scale))


# --- receptive field ------------------------------------------------------------------------


def _random_net(arch: str, kwargs: dict[str, Any], scale: int) -> Callable[[Tensor], Tensor]:
    """The fp64 network with every trainable parameter drawn from N(0, 0.25), in eval mode."""
    torch.manual_seed(0)
    module = get_arch(arch).build(scale=scale, **kwargs).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.5)
    if get_arch(arch).multiscale:
        return lambda x: module(x, scale)
    return module


def _perturbation(net: Callable[[Tensor], Tensor], channels: int, n: int, scale: int) -> Tensor:
    """|f(x + e_c) - f(x)| summed over channels, for the centre pixel c of an n x n input."""
    x = torch.rand(1, channels, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[..., n // 2, n // 2] += 1.0
    with torch.no_grad():
        d = (net(x2) - net(x)).abs().sum(1)[0]
    assert d.shape == (n * scale, n * scale)
    return d


def _reach(d: Tensor, centre: int, scale: int) -> int:
    """Largest |parent(p) - centre| over output pixels p that changed (parent = p // scale)."""
    ys, xs = torch.nonzero(d > 0, as_tuple=True)
    return int(max((ys // scale - centre).abs().max(), (xs // scale - centre).abs().max()))


def test_rcan_radius_is_exact_with_constant_channel_attention() -> None:
    """RCAN has global context (``Arch.global_context``): the contract bounds its leak; with the
    attention made constant (the squeeze conv zeroed) its declared radius is exact."""
    kwargs = {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 8, "reduction": 4}
    radius = get_arch("rcan").radius(kwargs, 2)
    net = _random_net("rcan", kwargs, 2)
    for m in net.modules():
        if hasattr(m, "conv_du"):
            nn.init.zeros_(m.conv_du[2].weight)
    n = 2 * radius + 8
    assert _reach(_perturbation(net, 3, n, 2), n // 2, 2) == radius


def test_rcan_global_attention_leaks_little_beyond_the_radius() -> None:
    kwargs = {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4}
    radius = get_arch("rcan").radius(kwargs, 2)
    torch.manual_seed(0)
    module = get_arch("rcan").build(scale=2, **kwargs).double().eval()
    n = 2 * radius + 8
    d = _perturbation(lambda x: module(x * 255), 3, n, 2)
    c = n // 2
    inside = torch.zeros_like(d, dtype=torch.bool)
    inside[2 * (c - radius) : 2 * (c + radius + 1), 2 * (c - radius) : 2 * (c + radius + 1)] = True
    assert d[~inside].max() > 0  # global pooling: not exactly local
    assert d[~inside].max() < 1e-3 * d[inside].max()


def test_published_radii() -> None:
    """Radii of the named models, from their layer counts (documented in the report)."""
    expect = {
        ("edsr-baseline", 4): 36,  # 1 + 2*16 + 1 LR convs, +1 upsampler/last conv
        ("edsr", 2): 68,
        ("rcan", 2): 414,  # 1 + 10*(2*20 + 1) + 1 + 1
        ("realesrgan-x4plus", 4): 349,  # 1 + 23*15 + 1, + 2 for the HR convs
        ("realesrgan-x2plus", 2): 698,
        ("carn-m", 2): 21,
        ("fsrcnn", 2): 8,
        ("fsrcnn", 4): 7,
        ("realesr-animevideov3", 4): 18,
        ("srcnn", 3): 4,
        ("espcn", 3): 4,
        ("srresnet", 4): 35,
    }
    for (name, scale), radius in expect.items():
        spec = get_spec(name)
        assert get_arch(spec.arch).radius(spec.kwargs, scale) == radius, name


# --- kwargs read off shapes that the contract's tiny configs do not reach ----------------------


def test_edsr_residual_scaling_is_read_off_the_width() -> None:
    """EDSR's 256-channel model scales its residuals by 0.1 (Sec. 3.2); the shapes say 256."""
    sd = get_arch("edsr").build(scale=4, n_resblocks=1, n_feats=256, res_scale=0.1).state_dict()
    assert get_arch("edsr").infer_kwargs(sd) == ({"n_resblocks": 1, "n_feats": 256, "res_scale": 0.1}, 4)


# --- parameter counts -----------------------------------------------------------------------


def _params(name: str, scale: int) -> int:
    return sum(p.numel() for p in meta_model(name, scale).parameters())


def test_parameter_counts_match_the_papers() -> None:
    # EDSR Table 1 / Fig. 1: 43M (x4) and 1.5M (baseline); +24 for the frozen mean shifts
    assert round(_params("edsr", 4) / 1e6) == 43
    assert round(_params("edsr-baseline", 4) / 1e5) == 15
    # RCAN Fig. 1/Sec. 4.5: about 16M
    assert 15e6 < _params("rcan", 4) < 16e6
    # ESRGAN/Real-ESRGAN RRDBNet: 16.7M
    assert round(_params("realesrgan-x4plus", 4) / 1e5) == 167
    # CARN Table 5: 1,592K; CARN-M: 412K (plus our count of its 1x1 convs' biases & mean shifts)
    assert round(_params("carn", 2) / 1e3) == 1592
    assert _params("carn-m", 2) == 414_811
    # SRCNN 9-5-5 (Sec. 4.3.2): n1*f1^2 + n1*n2*f2^2 + n2*f3^2 weights, plus biases
    assert _params("srcnn", 2) == 64 * 81 + 64 * 32 * 25 + 32 * 25 + (64 + 32 + 1)
    # FSRCNN(56,12,4): Sec. 3.3 counts 12,464 weights; + 173 biases + 172 PReLU slopes
    weights = 56 * 25 + 56 * 12 + 4 * 12 * 12 * 9 + 12 * 56 + 56 * 81
    assert weights == 12_464 and _params("fsrcnn", 2) == weights + 173 + 172
    # ESPCN x3 (Sec. 3.2): 5*5*64 + 3*3*64*32 + 3*3*32*9 weights + biases
    assert _params("espcn", 3) == 25 * 64 + 9 * 64 * 32 + 9 * 32 * 9 + (64 + 32 + 9)
    # SRVGGNetCompact (64 feats, 16 convs, x4): 18 convs, 17 PReLUs
    assert _params("realesr-animevideov3", 4) == (27 * 64 + 64) + 16 * (576 * 64 + 64) + (576 * 48 + 48) + 17 * 64
    # MSRResNet x4 (BasicSR): 1.52M
    assert round(_params("srresnet", 4) / 1e4) == 152


def test_unsupported_scales_are_refused() -> None:
    with pytest.raises(ValueError):
        get_arch("edsr").build(scale=5)
    with pytest.raises(ValueError):
        get_arch("rrdbnet").build(scale=3)
    carn = get_arch("carn").build(scale=2, feats=8)
    with pytest.raises(ValueError):
        carn(torch.rand(1, 3, 4, 4), 8)


def test_indices_reads_block_numbers_at_dot_boundaries() -> None:
    from upscale_cli.models.layers import indices

    sd = dict.fromkeys(["a.0.weight", "a.1.x.weight", "a.2.bias", "a.10.xweight", "b.3.body.0.weight"], torch.zeros(1))
    assert indices(sd, "a.") == [0, 1, 2, 10]
    assert indices(sd, "a.", "weight") == [0, 1]
    assert indices(sd, "b.", "body.0.weight") == indices(sd, "b.", "0.weight") == [3]
