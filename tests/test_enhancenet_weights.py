"""EnhanceNet-PAT (msmsajjadi/EnhanceNet-Code @ a7309caf): the authors' TensorFlow V1 checkpoint
read by the tensorflow reader, converted to the ``enhancenet`` family, loaded strictly, and
computing what the authors' ``enhancenet.py`` / ``nnlib.py`` compute - re-written here with
``torch.nn.functional`` on the raw TF tensors, TF 0.12's bicubic ``resize_images`` included
(written from ``resize_bicubic_op.cc``: coefficient table, ``in = floor(scale * out)``).

The real file is in ../shared/checkpoints (skipped when absent); a small checkpoint written in
the same layout with random weights covers the reader, the converter and the family without it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CHECKPOINTS, SET5, assert_tiled_equals_whole, need_shared
from PIL import Image
from test_format_tensorflow import checkpoint, entry, extents, msg, record, table
from torch import Tensor

from upscale_cli.color import rgb_to_y
from upscale_cli.engine import Upscaler
from upscale_cli.loader import load_model
from upscale_cli.models import create_model, detect_arch, get_arch, get_spec, list_archs
from upscale_cli.resize import imresize
from upscale_cli.weights import read_checkpoint

REAL = CHECKPOINTS / "enhancenet_pat_tf_weights"
PER_CHANNEL_MEANS = (0.47614917, 0.45001204, 0.40904046)  # enhancenet.py
StateDict = dict[str, Tensor]


# --- the authors' forward --------------------------------------------------------------------


def tf_resize_bicubic_matrix(n_in: int, n_out: int) -> Tensor:
    """TF 0.12 ResizeBicubic along one axis (align_corners=False) as an ``(n_out, n_in)`` matrix:
    ``scale = in / out`` (float32), ``in_loc = floor(scale * out_loc)``, weights from the
    1024-entry table of Keys' kernel with A = -0.75, indices clamped to the image."""
    a, size = -0.75, 1024
    table_ = np.zeros((size + 1) * 2, dtype=np.float32)
    for i in range(size + 1):
        x = float(np.float32(i / size))  # a float, promoted to double in the formulas
        table_[2 * i] = ((a + 2) * x - (a + 3)) * x * x + 1
        x += 1.0
        table_[2 * i + 1] = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    scale = np.float32(n_in) / np.float32(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for out_loc in range(n_out):
        in_loc = math.floor(np.float32(scale * out_loc))
        offset = round(float(np.float32(scale * out_loc) - in_loc) * size)
        weights = (table_[2 * offset + 1], table_[2 * offset],
                   table_[2 * (size - offset)], table_[2 * (size - offset) + 1])
        for tap, w in zip(range(in_loc - 1, in_loc + 3), weights):
            m[out_loc, min(max(tap, 0), n_in - 1)] += float(w)
    return m


def enhancenet_tf(t: StateDict, imgs: Tensor, blocks: int = 10) -> Tensor:
    """enhancenet.py: NN('generator', [conv, relu, rblock x 10, (upsample, conv, relu) x 2, conv,
    relu, conv 3]) on ``xs = imgs - PER_CHANNEL_MEANS``, plus ``resize_images(xs, BICUBIC)`` plus
    the means.  conv = convolution2d(3x3, SAME, bias); upsample = NEAREST_NEIGHBOR x2; rblock =
    h + conv(relu(conv(h))).  ``imgs`` is NCHW here (TF's NHWC, transposed)."""
    convs = iter(["Conv", *(f"Conv_{i}" for i in range(1, 2 * blocks + 5))])

    def conv(h: Tensor) -> Tensor:
        name = next(convs)
        w = t[f"generator/{name}/weights"].to(h.dtype).permute(3, 2, 0, 1)  # HWIO -> OIHW
        return F.conv2d(h, w, t[f"generator/{name}/biases"].to(h.dtype), padding=1)

    means = torch.tensor(PER_CHANNEL_MEANS, dtype=imgs.dtype).view(1, 3, 1, 1)
    xs = imgs - means
    h = F.relu(conv(xs))
    for _ in range(blocks):
        h = h + conv(F.relu(conv(h)))
    for _ in range(2):
        h = F.relu(conv(h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)))
    ys_est = conv(F.relu(conv(h)))
    height, width = imgs.shape[-2:]
    rows, cols = tf_resize_bicubic_matrix(height, 4 * height), tf_resize_bicubic_matrix(width, 4 * width)
    ys_res = torch.einsum("ph,nchw,qw->ncpq", rows.to(imgs.dtype), xs, cols.to(imgs.dtype))
    return ys_est + ys_res + means


# --- a checkpoint written in the authors' layout -----------------------------------------------


def tf_layout(blocks: int = 2, feats: int = 8) -> StateDict:
    """``generator/Conv{,_n}/{weights,biases}`` in creation order, HWIO kernels, random."""
    g = torch.Generator().manual_seed(5)
    chans = [(3, feats)] + [(feats, feats)] * (2 * blocks + 3) + [(feats, 3)]
    sd = {}
    for i, (cin, cout) in enumerate(chans):
        name = "Conv" if i == 0 else f"Conv_{i}"
        sd[f"generator/{name}/weights"] = torch.randn(3, 3, cin, cout, generator=g) / math.sqrt(9 * cin)
        sd[f"generator/{name}/biases"] = torch.randn(cout, generator=g) * 0.05
    return sd


def write_tf(path: Path, sd: StateDict) -> Path:
    """``sd`` as a TF V1 checkpoint (float_val packed, whole-tensor slices)."""
    entries, data = [], []
    for name, v in sd.items():
        whole = extents([None] * v.ndim)
        entries.append(entry(name, tuple(v.shape), 1, [whole]))
        data.append(record(name, whole, msg(5, v.numpy().astype("<f4").tobytes())))
    path.write_bytes(table(checkpoint(entries, data)))
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[StateDict, Path]:
    sd = tf_layout()
    return sd, write_tf(tmp_path_factory.mktemp("enet") / "weights", sd)


def rgb(h: int, w: int, seed: int) -> Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- tests -----------------------------------------------------------------------------------


def test_written_checkpoint_is_detected_and_computes_the_authors_forward(written: tuple[StateDict, Path]) -> None:
    sd, path = written
    tensors, _ = read_checkpoint(path)
    arch, kwargs, scale = detect_arch(tensors)  # the TF names alone: no other family claims them
    assert (arch.name, kwargs, scale) == ("enhancenet", {"blocks": 2, "feats": 8}, 4)
    model = load_model(weights=str(path), progress=False)
    assert model.arch.name == "enhancenet" and model.scale == 4
    x = rgb(9, 13, seed=1)
    with torch.no_grad():
        out = model.module.double()(x.double())
    torch.testing.assert_close(out, enhancenet_tf(sd, x.double(), blocks=2), atol=1e-6, rtol=0)


def test_real_weights_compute_the_authors_forward() -> None:
    path = need_shared(REAL)
    model = load_model(weights=str(path), progress=False)
    assert (model.arch.name, dict(model.kwargs), model.scale) == ("enhancenet", {"blocks": 10, "feats": 64}, 4)
    assert model.params == 852_867
    raw, _ = read_checkpoint(path)
    x = rgb(10, 14, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), enhancenet_tf(raw, x.double()).float(), atol=2e-5, rtol=0)


def test_real_weights_on_a_set5_crop() -> None:
    """A GAN model: on a 96x96 crop of baby.png it stays within a dB or two of bicubic (a
    1.5 px misalignment of the bicubic branch would cost far more)."""
    img = np.array(Image.open(need_shared(SET5 / "baby.png")).convert("RGB"))
    hr = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None, :, 200:296, 200:296]
    lr = (imresize(hr, scale=0.25).clamp(0, 1) * 255).round() / 255
    model = load_model(weights=str(need_shared(REAL)), progress=False)
    with torch.no_grad():
        sr = model(lr).clamp(0, 1)

    def psnr(a: Tensor) -> float:
        return float(-10 * torch.log10((rgb_to_y(a) - rgb_to_y(hr))[..., 4:-4, 4:-4].pow(2).mean()))

    assert psnr(sr) > psnr(imresize(lr, scale=4).clamp(0, 1)) - 2.0
    assert psnr(sr) > 28


def test_tiled_equals_whole_image(written: tuple[StateDict, Path]) -> None:
    model = load_model(weights=str(written[1]), progress=False)
    tile = 2 * Upscaler(model, device="cpu", tile=0).radius + 5
    assert_tiled_equals_whole(model, rgb(2 * tile + 3, tile + 4, seed=7)[0], extra=5, min_tiles=4)


@pytest.mark.parametrize("scale", [2, 4])
def test_declared_radius_is_the_true_receptive_field(scale: int) -> None:
    arch, kwargs = get_arch("enhancenet"), {"blocks": 1, "feats": 4}
    radius = arch.radius(kwargs, scale)
    torch.manual_seed(0)
    net = arch.build(scale=scale, **kwargs).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    n = 2 * radius + 8
    x = torch.rand(1, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[..., n // 2, n // 2] += 1.0
    with torch.no_grad():
        d = (net(x2) - net(x)).abs().sum(1)[0]
    ys, xs = torch.nonzero(d > 0, as_tuple=True)
    assert int(max((ys // scale - n // 2).abs().max(), (xs // scale - n // 2).abs().max())) == radius
    assert get_arch("enhancenet").radius(get_spec("enhancenet-pat").kwargs, 4) == 23  # 21 LR convs + 2 + 3 HR


def test_converter_leaves_other_layouts_alone(written: tuple[StateDict, Path]) -> None:
    convert = get_arch("enhancenet").convert_keys
    own = create_model("enhancenet", 4, blocks=2, feats=8).state_dict()
    assert convert(dict(own)) == own
    foreign = {**written[0], "global_step": torch.tensor(3)}  # not only the generator's convs
    assert convert(dict(foreign)) == foreign
    for name in ("realesr-animevideov3", "srgan-5b", "edsr-baseline"):
        with torch.device("meta"):
            sd = create_model(name, 4).state_dict()
        assert convert(dict(sd)).keys() == sd.keys()
        assert not get_arch("enhancenet").matches(sd)
    assert [a.name for a in list_archs() if a.matches is not None and a.matches(own)] == ["enhancenet"]


def test_named_model_and_trainability() -> None:
    spec = get_spec("enhancenet-pat")
    assert spec.arch == "enhancenet" and spec.scales == (4,) and not spec.trainable_only
    assert "CC BY-NC-ND 4.0" in spec.description and "non-commercial" in spec.description
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model("enhancenet-pat", 4).parameters()) == 852_867
    net = create_model("enhancenet", 2, blocks=1, feats=8)
    x, target = rgb(6, 6, seed=4), rgb(12, 12, seed=5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.l1_loss(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
