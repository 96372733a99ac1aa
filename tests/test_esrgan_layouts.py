"""ESRGAN / RRDBNet and Compact (SRVGGNetCompact) files as the community shares them, loaded from
the file alone (issue 18), and the errors when the keys do not say enough.

The expected key layouts are written here from the published definitions, never read off our
modules: the original ESRGAN ``architecture.py`` sequential (``model.N``; ``n`` upconv triples
from ``model.2``, so upconvs at ``model.3``, ``model.6``, ``model.9``, then ``conv_hr`` at
``model.{3n+2}`` and ``conv_last`` at ``model.{3n+4}``, as spandrel's ESRGAN loader counts them),
xinntao/ESRGAN ``RRDBNet_arch.py`` and BSRGAN ``network_rrdbnet.py`` (``RRDB_trunk``, one
``upconv`` per x2), BasicSR ``rrdbnet_arch.py`` (``conv_up{k}``, pixel-unshuffled input for
Real-ESRGAN's x2 / x1), ESRGAN+ (a bias-free 1x1 ``conv1x1`` per RDB) and Real-ESRGAN
``srvgg_arch.py``.  Each is run by a functional forward written here from those definitions
(``torch.nn.functional`` on the state dict), which our loaded model must reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from upscale_cli.errors import UsageError, WeightsError
from upscale_cli.loader import load_model
from upscale_cli.models import split_overrides

Scheme = dict[str, tuple[int, ...]]
Rename = Callable[[str], str]


# --- the published layouts ------------------------------------------------------------------


def _conv(k: Scheme, name: str, cin: int, cout: int, size: int = 3, bias: bool = True) -> None:
    k[f"{name}.weight"] = (cout, cin, size, size)
    if bias:
        k[f"{name}.bias"] = (cout,)


def basicsr_scheme(nb: int, nf: int, gc: int, ups: int, in_ch: int = 3, plus: bool = False) -> Scheme:
    """BasicSR ``RRDBNet`` (``in_ch`` = 3 * unshuffle^2) with ``ups`` upconvs ``conv_up1..``."""
    k: Scheme = {}
    _conv(k, "conv_first", in_ch, nf)
    for i in range(nb):
        for r in (1, 2, 3):
            p = f"body.{i}.rdb{r}"
            if plus:
                _conv(k, f"{p}.conv1x1", nf, gc, 1, bias=False)
            for j in range(1, 5):
                _conv(k, f"{p}.conv{j}", nf + (j - 1) * gc, gc)
            _conv(k, f"{p}.conv5", nf + 4 * gc, nf)
    _conv(k, "conv_body", nf, nf)
    for u in range(1, ups + 1):
        _conv(k, f"conv_up{u}", nf, nf)
    _conv(k, "conv_hr", nf, nf)
    _conv(k, "conv_last", nf, 3)
    return k


def original_name(nb: int, ups: int) -> Rename:
    """BasicSR name -> ESRGAN ``architecture.py`` name: ``model.0`` conv, ``model.1`` the
    ShortcutBlock (``sub.{i}`` RRDBs, each conv a ``conv_block`` sequential: ``.0``; ``sub.{nb}``
    the trunk conv), then (Upsample, conv, LeakyReLU) per x2, HR conv, LeakyReLU, last conv."""
    tail = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}", "conv_hr": f"model.{3 * ups + 2}",
            "conv_last": f"model.{3 * ups + 4}"}
    tail.update({f"conv_up{u}": f"model.{3 * u}" for u in range(1, ups + 1)})

    def rename(key: str) -> str:
        module, param = key.rsplit(".", 1)
        if module in tail:
            return f"{tail[module]}.{param}"
        _, i, rdb, conv = module.split(".")
        inner = conv if conv == "conv1x1" else f"{conv}.0"
        return f"model.1.sub.{i}.RDB{rdb[3:]}.{inner}.{param}"

    return rename


def trunk_name(key: str) -> str:
    """BasicSR name -> xinntao/ESRGAN ``RRDBNet_arch.py`` / BSRGAN name."""
    module, param = key.rsplit(".", 1)
    if module.startswith("body."):
        _, i, rdb, conv = module.split(".")
        return f"RRDB_trunk.{i}.RDB{rdb[3:]}.{conv}.{param}"
    renames = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}
    if module.startswith("conv_up"):
        return f"upconv{module[7:]}.{param}"
    return f"{renames.get(module, module)}.{param}"


def random_sd(scheme: Scheme, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:]) if len(s) > 1 else 4)
            for k, s in scheme.items()}


# --- the published forwards, on the state dict ----------------------------------------------


def c(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    w = sd[f"{name}.weight"].double()
    b = sd.get(f"{name}.bias")
    return F.conv2d(x, w, None if b is None else b.double(), padding=w.shape[-1] // 2)


def lrelu(x: Tensor, slope: float = 0.2) -> Tensor:
    return torch.where(x >= 0, x, slope * x)


def pixel_unshuffle(x: Tensor, f: int) -> Tensor:
    """BasicSR ``arch_util.pixel_unshuffle``: (C, f*H, f*W) -> (C*f*f, H, W), channel c*f*f + i*f + j."""
    b, ch, h, w = x.shape
    return x.view(b, ch, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * f * f, h // f, w // f)


def rrdb_reference(sd: dict[str, Tensor], x: Tensor, nb: int, ups: int, unshuffle: int, plus: bool) -> Tensor:
    """ESRGAN: conv, RRDB trunk with a skip, (nearest x2, conv, LeakyReLU 0.2) per upconv, HR
    conv + LeakyReLU, last conv; an RDB is ``x + 0.2 * conv5(cat)`` of four LeakyReLU convs,
    with ESRGAN+ ``x2 += conv1x1(x)``, ``x4 += x2``; an RRDB ``x + 0.2 * RDB3(RDB2(RDB1(x)))``."""
    h = c(sd, "conv_first", pixel_unshuffle(x, unshuffle) if unshuffle > 1 else x)
    t = h
    for i in range(nb):
        out = t
        for r in (1, 2, 3):
            p = f"body.{i}.rdb{r}"
            xs = [out]
            for j in range(1, 5):
                y = lrelu(c(sd, f"{p}.conv{j}", torch.cat(xs, 1)))
                if plus and j == 2:
                    y = y + c(sd, f"{p}.conv1x1", out)
                if plus and j == 4:
                    y = y + xs[2]
                xs.append(y)
            out = out + 0.2 * c(sd, f"{p}.conv5", torch.cat(xs, 1))
        t = t + 0.2 * out
    h = h + c(sd, "conv_body", t)
    for u in range(1, ups + 1):
        h = lrelu(c(sd, f"conv_up{u}", h.repeat_interleave(2, -2).repeat_interleave(2, -1)))
    return c(sd, "conv_last", lrelu(c(sd, "conv_hr", h)))


# --- ESRGAN in every layout, from the file alone ----------------------------------------------

LAYOUTS = [
    # (id, layout, upconvs, pixel-unshuffle, ESRGAN+, scale)
    ("original-x1", "original", 0, 1, False, 1),
    ("original-x2", "original", 1, 1, False, 2),
    ("original-x4", "original", 2, 1, False, 4),
    ("original-x8", "original", 3, 1, False, 8),
    ("original-unshuffle-x2", "original", 2, 2, False, 2),
    ("original-plus-x4", "original", 2, 1, True, 4),
    ("bsrgan-x2", "trunk", 1, 1, False, 2),
    ("esrgan-repo-x4", "trunk", 2, 1, False, 4),
    ("basicsr-x4", "basicsr", 2, 1, False, 4),
    ("basicsr-x8", "basicsr", 3, 1, False, 8),
    ("real-esrgan-x2", "basicsr", 2, 2, False, 2),
    ("real-esrgan-x1", "basicsr", 2, 4, False, 1),
]


def esrgan_file(tmp_path: Path, layout: str, nb: int, ups: int, unshuffle: int, plus: bool) -> tuple[Path, dict]:
    """A random-weight ESRGAN checkpoint in ``layout``; returns it and its BasicSR-named weights."""
    sd = random_sd(basicsr_scheme(nb, 8, 4, ups, 3 * unshuffle**2, plus))
    rename = {"original": original_name(nb, ups), "trunk": trunk_name, "basicsr": str}[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save({"params_ema": {rename(k): v for k, v in sd.items()}}, path)
    return path, sd


@pytest.mark.parametrize(("layout", "ups", "unshuffle", "plus", "scale"), [p[1:] for p in LAYOUTS],
                         ids=[p[0] for p in LAYOUTS])
def test_esrgan_loads_from_the_file_alone_and_computes_the_published_forward(
    tmp_path: Path, layout: str, ups: int, unshuffle: int, plus: bool, scale: int
) -> None:
    nb = 2
    path, sd = esrgan_file(tmp_path, layout, nb, ups, unshuffle, plus)
    model = load_model(weights=str(path))
    assert (model.arch.name, model.scale) == ("rrdbnet", scale)
    assert {k: model.kwargs[k] for k in ("num_feat", "num_block", "num_grow_ch", "unshuffle", "plus")} == {
        "num_feat": 8, "num_block": nb, "num_grow_ch": 4, "unshuffle": unshuffle, "plus": plus}
    assert model.size_multiple == unshuffle
    x = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), rrdb_reference(sd, x.double(), nb, ups, unshuffle, plus),
                                   atol=1e-5, rtol=0)


def test_esrgan_safetensors_file_loads_alone_or_with_the_family_named(tmp_path: Path) -> None:
    sd = random_sd(basicsr_scheme(1, 8, 4, 1))
    path = tmp_path / "2x_community.safetensors"
    save_file({original_name(1, 1)(k): v for k, v in sd.items()}, str(path))
    for arch in (None, "esrgan", "rrdbnet:num_block=1"):  # --arch esrgan is the family: kwargs from the file
        model = load_model(weights=str(path), arch=arch)
        facts = (model.arch.name, model.scale, model.kwargs["unshuffle"], model.kwargs["num_block"])
        assert facts == ("rrdbnet", 2, 1, 1)


def test_esrgan_radius_follows_the_upconvs() -> None:
    """Per layout: 1 + 15 nb + 1 convs on the (unshuffled) input grid, one per x2 step, two at
    the end (the formula of the zoo's RRDBNet, written out here for 23 blocks)."""
    from upscale_cli.models import get_arch

    radius = get_arch("rrdbnet").radius
    lr = 1 + 15 * 23 + 1
    assert radius({"num_block": 23, "unshuffle": 1}, 1) == lr + 2
    assert radius({"num_block": 23, "unshuffle": 1}, 2) == lr + 2  # conv_up1, conv_hr, conv_last: 3 HR px
    assert radius({"num_block": 23}, 4) == 349
    assert radius({"num_block": 23}, 2) == 698  # Real-ESRGAN x2: unshuffled by 2


# --- the error when nothing fits --------------------------------------------------------------


def test_truncated_esrgan_names_the_closest_family_and_the_missing_keys(tmp_path: Path) -> None:
    sd = random_sd(basicsr_scheme(2, 8, 4, 2))
    old = {original_name(2, 2)(k): v for k, v in sd.items() if not k.startswith("conv_hr.")}
    old["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(old, path)
    with pytest.raises(WeightsError) as err:
        load_model(weights=str(path))
    text = str(err.value)
    n = len(sd)
    assert text == (
        f"{path}: cannot tell the architecture from the keys: no known family has exactly them ({n - 1} tensors; "
        f"first keys: model.0.weight, model.0.bias, model.1.sub.0.RDB1.conv1.0.weight); closest: rrdbnet, with "
        f"{n - 2} of its {n} keys (2 missing: conv_hr.weight, conv_hr.bias; 1 unexpected: extra.weight)"
    )
    assert "--arch" not in text  # no name would help


def test_unknown_keys_say_so_without_suggesting_arch() -> None:
    from upscale_cli.models import detect_arch

    with pytest.raises(WeightsError) as err:
        detect_arch({"foo.weight": torch.ones(1)})
    assert str(err.value) == (
        "cannot tell the architecture from the keys: no known family has any of them "
        "(1 tensors; first keys: foo.weight)"
    )


# --- Compact with every activation ------------------------------------------------------------


def compact_scheme(nf: int, nc: int, scale: int, prelu: bool) -> Scheme:
    """Real-ESRGAN ``SRVGGNetCompact``: ``body`` = conv, act, (conv, act) * nc, conv to 3 s^2."""
    k: Scheme = {}
    _conv(k, "body.0", 3, nf)
    for i in range(1, nc + 1):
        _conv(k, f"body.{2 * i}", nf, nf)
    _conv(k, f"body.{2 * nc + 2}", nf, 3 * scale * scale)
    if prelu:
        for i in range(nc + 1):
            k[f"body.{2 * i + 1}.weight"] = (nf,)
    return k


def compact_reference(sd: dict[str, Tensor], x: Tensor, nc: int, scale: int, act: str) -> Tensor:
    """``PixelShuffle(body(x)) + nearest(x)``; PReLU per channel, ReLU, or LeakyReLU 0.1."""
    h = x
    for i in range(nc + 1):
        h = c(sd, f"body.{2 * i}", h)
        if act == "prelu":
            h = torch.where(h >= 0, h, sd[f"body.{2 * i + 1}.weight"].double().view(1, -1, 1, 1) * h)
        else:
            h = lrelu(h, 0.1) if act == "lrelu" else h.clamp(min=0)
    h = F.pixel_shuffle(c(sd, f"body.{2 * nc + 2}", h), scale)
    return h + x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def compact_file(tmp_path: Path, prelu: bool, scale: int = 2) -> tuple[Path, dict[str, Tensor]]:
    sd = random_sd(compact_scheme(8, 3, scale, prelu), seed=2)
    path = tmp_path / ("compact-prelu.pth" if prelu else "compact-relu-or-lrelu.pth")
    torch.save({"params": sd}, path)
    return path, sd


def _same(model, sd: dict[str, Tensor], act: str, scale: int = 2) -> None:
    x = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = compact_reference(sd, x.double(), 3, scale, act)
        torch.testing.assert_close(model(x).double(), expected, atol=1e-5, rtol=0)


def test_compact_prelu_loads_from_the_file_alone(tmp_path: Path) -> None:
    path, sd = compact_file(tmp_path, prelu=True)
    model = load_model(weights=str(path))
    assert (model.arch.name, model.scale) == ("srvgg", 2)
    assert model.kwargs == {"num_feat": 8, "num_conv": 3, "act": "prelu"}
    _same(model, sd, "prelu")


AMBIGUOUS = "compact-relu (srvgg:act=relu), compact-lrelu (srvgg:act=lrelu)"


def test_compact_without_prelu_weights_names_exactly_the_variants_that_fit(tmp_path: Path) -> None:
    path, _ = compact_file(tmp_path, prelu=False)
    with pytest.raises(WeightsError) as err:
        load_model(weights=str(path))
    assert str(err.value) == (
        f"{path}: cannot tell the architecture from the keys: they fit 2 networks: {AMBIGUOUS}; "
        "pass one of them with --arch"
    )
    for family in ("srvgg", "compact"):  # the family alone does not say more than the keys
        with pytest.raises(UsageError) as err:
            load_model(weights=str(path), arch=family)
        assert str(err.value) == (
            f"{path.name}: the keys and --arch srvgg fit 2 networks: {AMBIGUOUS}; pass one of them with --arch"
        )


@pytest.mark.parametrize(("arch", "act"), [("compact-relu", "relu"), ("compact:act=relu", "relu"),
                                           ("compact-lrelu", "lrelu"), ("srvgg:act=lrelu", "lrelu"),
                                           ("compact:act='lrelu'", "lrelu")])
def test_compact_variant_named_with_arch(tmp_path: Path, arch: str, act: str) -> None:
    path, sd = compact_file(tmp_path, prelu=False)
    model = load_model(weights=str(path), arch=arch)
    assert (model.arch.name, model.scale, model.kwargs["act"]) == ("srvgg", 2, act)
    _same(model, sd, act)


def test_compact_variant_that_does_not_fit_says_what_differs(tmp_path: Path) -> None:
    path, _ = compact_file(tmp_path, prelu=False)
    with pytest.raises(WeightsError, match=r"do not fit the network \(4 missing: body\.1\.weight, body\.3\.weight"):
        load_model(weights=str(path), arch="compact-prelu")


def test_random_variant_for_training() -> None:
    model = load_model(arch="compact:act=lrelu,num_conv=2", scale=3, pretrained=False)
    assert (model.arch.name, model.scale) == ("srvgg", 3)
    assert model.kwargs == {"num_feat": 64, "num_conv": 2, "act": "lrelu"}
    assert isinstance(model.module.body[1], torch.nn.LeakyReLU) and model.module.body[1].negative_slope == 0.1


# --- the NAME:key=value syntax ----------------------------------------------------------------


def test_arch_overrides_are_python_literals_or_words() -> None:
    assert split_overrides("srvgg") == ("srvgg", {})
    assert split_overrides("swinir:depths=(6, 6), window_size=8, upsampler=pixelshuffle, img_range=1.0, ok=True") == (
        "swinir", {"depths": (6, 6), "window_size": 8, "upsampler": "pixelshuffle", "img_range": 1.0, "ok": True})
    for bad in ("srvgg:act", "srvgg:", "srvgg:relu", "srvgg:act=relu)", "srvgg:act=leaky-relu", "srvgg:**x",
                "srvgg:act=relu), print(1"):
        with pytest.raises(UsageError, match="expected NAME:key=value"):
            split_overrides(bad)


def test_unknown_arch_or_kwarg_is_a_usage_error_before_any_download(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.pth")  # never read: the name fails first
    with pytest.raises(UsageError, match="unknown architecture 'compact-gelu'"):
        load_model(weights=missing, arch="compact-gelu")
    with pytest.raises(UsageError, match="act must be one of prelu, relu, lrelu"):
        load_model(arch="srvgg:act=gelu", scale=2, pretrained=False)


# --- on the command line ----------------------------------------------------------------------


def test_command_line_loads_a_community_file_with_no_other_flag(tmp_path: Path, capfd) -> None:
    from PIL import Image
    from test_cli import make_png, run

    path, _ = esrgan_file(tmp_path, "original", 1, 1, 1, False)  # an old-layout x2 ESRGAN file
    src = make_png(tmp_path / "a.png", (12, 10))
    code, _, err = run([src, "--weights", path, "-o", tmp_path / "o.png"], capfd)
    assert code == 0, err
    assert Image.open(tmp_path / "o.png").size == (24, 20)


def test_command_line_ambiguous_compact_one_line_exit_3_then_arch_picks(tmp_path: Path, capfd) -> None:
    from test_cli import errors, make_png, run

    from upscale_cli.errors import EXIT_USAGE, EXIT_WEIGHTS

    path, _ = compact_file(tmp_path, prelu=False)
    src = make_png(tmp_path / "a.png", (12, 10))
    code, _, err = run([src, "--weights", path, "-o", tmp_path / "o.png"], capfd)
    assert code == EXIT_WEIGHTS and len(errors(err)) == 1 and AMBIGUOUS in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
    code, _, err = run([src, "--weights", path, "--arch", "compact-gelu", "-o", tmp_path / "o.png"], capfd)
    assert code == EXIT_USAGE and "unknown architecture 'compact-gelu'" in err
    code, _, err = run([src, "--weights", path, "--arch", "compact:act=lrelu", "-o", tmp_path / "o.png"], capfd)
    assert code == 0, err
    assert (tmp_path / "o.png").exists()
