"""PLKSR and RealPLKSR: Lee, Yoon, Cho, "Partial Large Kernel CNNs for Efficient Super-Resolution",
arXiv:2404.11848, 2024.

PLKSR (Fig. 3): a 3x3 head, ``n_blocks`` PLK blocks and a 3x3 conv to ``3 * scale^2``
channels, plus the input repeated ``scale^2`` times per channel (a nearest-neighbour skip),
then a pixel shuffle.  A PLK block is ``x + refine(EA(PLK(CCM(x))))``: a convolutional channel
mixer (3x3 to twice the width, GELU, 1x1 back: ``CCM``; ``ICCM`` swaps the kernels, ``DCCM``
uses two 3x3), a ``kernel_size`` conv on the first ``split_ratio`` of the channels only (the
partial large kernel; the rest pass through), element-wise attention ``x * sigmoid(conv3x3(x))``
and a 1x1 refinement.

RealPLKSR (the authors' real-world variant, published with neosr / traiNNer-redux): DCCM with
Mish, a GroupNorm (``norm_groups`` groups, over the whole map) after the refinement, or a
channel LayerNorm before the mixer instead (``layer_norm``), a Dropout2d before the tail, and
optionally the DySample upsampler (Liu et al., "Learning to Upsample by Learning to Sample",
ICCV 2023) instead of the pixel shuffle: each output pixel bilinearly samples the LR map at
its sub-pixel position plus a learned offset, then a 1x1 conv to RGB.

RGB in 0..1.  Key layout = the published definitions: ``feats.0``, ``feats.{1..n}`` blocks
(PLKSR: ``channe_mixer`` - the typo is the published name -, ``lk.conv``, ``attn.f.0``,
``refine``; RealPLKSR: ``layer_norm``, ``channel_mixer``, ``lk.conv``, ``attn.f.0``,
``refine``, ``norm``), the tail ``feats.{n+1}`` (RealPLKSR ``feats.{n+2}``, after the
dropout), DySample ``to_img.{offset,scope,end_conv}`` and ``to_img.init_pos``.  Only the
released PLK large-kernel layer is supported (not the paper's sparse/rectangular ablations).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv, has, indices, receptive_radius, shape, shuffle_scale
from .registry import Arch, ModelSpec, register_arch, register_model

MIXER_KERNELS: dict[str, tuple[int, int]] = {"CCM": (3, 1), "ICCM": (1, 3), "DCCM": (3, 3)}
"""``ccm_type``: kernel sizes of the channel mixer's two convs (Lee et al. 2024, Sec. 3.2)."""

DYSAMPLE_REACH = 8
"""LR pixels a DySample offset is assumed to stay within, for the tiling radius: the offsets
are learned and unbounded (``0.5 * offset * sigmoid(scope)``); trained models keep them within
a pixel or two, so this is a margin, not a guarantee: tiled DySample output can differ from the
whole image where an offset reaches farther.  The registry contract's exact-radius check cannot
hold for it, so the DySample form is tested in tests/test_community_cnn.py instead."""


class ChannelMixer(nn.Sequential):
    """conv(dim -> 2 dim), activation, conv(2 dim -> dim), kernels per ``ccm_type``."""

    def __init__(self, dim: int, ccm_type: str, act: Callable[[], nn.Module]) -> None:
        if ccm_type not in MIXER_KERNELS:
            raise ValueError(f"ccm_type must be one of {', '.join(MIXER_KERNELS)}, not {ccm_type!r}")
        k1, k2 = MIXER_KERNELS[ccm_type]
        super().__init__(conv(dim, 2 * dim, k1), act(), conv(2 * dim, dim, k2))


class PartialLargeKernel(nn.Module):
    """A ``kernel_size`` conv on the first ``pdim`` channels (plus them when ``with_idt``);
    the other channels pass unchanged."""

    def __init__(self, pdim: int, kernel_size: int, with_idt: bool = False) -> None:
        super().__init__()
        self.conv = conv(pdim, pdim, kernel_size)
        self.pdim = pdim
        self.with_idt = with_idt

    def forward(self, x: Tensor) -> Tensor:
        part, rest = x[:, : self.pdim], x[:, self.pdim :]
        out = self.conv(part)
        return torch.cat([out + part if self.with_idt else out, rest], 1)


class ElementAttention(nn.Module):
    """``x * sigmoid(conv3x3(x))`` (the paper's element-wise attention, EA)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.f = nn.Sequential(conv(dim, dim), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.f(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (eps 1e-6, RealPLKSR's ``layer_norm``), its
    statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics, as Fp32GroupNorm
        y = F.layer_norm(x.permute(0, 2, 3, 1).to(dtype), x.shape[1:2], self.weight.to(dtype), self.bias.to(dtype),
                         self.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm with its statistics in fp32 (at least), whatever the input dtype: in fp16 the
    squares of large activations overflow 65504, the reason RealPLKSR was run in fp32 only."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return y.to(x.dtype)


def _pdim(dim: int, split_ratio: float) -> int:
    """Channels of the large kernel: ``int(dim * split_ratio)`` as published (the epsilon keeps
    a ratio read back as ``pdim / dim`` from rounding one channel down)."""
    return int(dim * split_ratio + 1e-6)


class PLKBlock(nn.Module):
    """``x + refine(EA(PLK(CCM(x))))`` (Lee et al. 2024, Fig. 3)."""

    def __init__(self, dim: int, ccm_type: str, kernel_size: int, split_ratio: float, with_idt: bool,
                 use_ea: bool) -> None:
        super().__init__()
        self.channe_mixer = ChannelMixer(dim, ccm_type, nn.GELU)
        self.lk = PartialLargeKernel(_pdim(dim, split_ratio), kernel_size, with_idt)
        self.attn = ElementAttention(dim) if use_ea else nn.Identity()
        self.refine = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.refine(self.attn(self.lk(self.channe_mixer(x))))


class RealPLKBlock(nn.Module):
    """``x + norm(refine(EA(PLK(DCCM(layer_norm(x))))))``, Mish in the mixer; GroupNorm or
    (``layer_norm``) a channel LayerNorm before the mixer."""

    def __init__(self, dim: int, kernel_size: int, split_ratio: float, use_ea: bool, norm_groups: int,
                 layer_norm: bool) -> None:
        super().__init__()
        self.layer_norm = ChannelLayerNorm(dim) if layer_norm else nn.Identity()
        self.channel_mixer = ChannelMixer(dim, "DCCM", nn.Mish)
        self.lk = PartialLargeKernel(_pdim(dim, split_ratio), kernel_size)
        self.attn = ElementAttention(dim) if use_ea else nn.Identity()
        self.refine = nn.Conv2d(dim, dim, 1)
        self.norm = nn.Identity() if layer_norm else Fp32GroupNorm(norm_groups, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm(self.refine(self.attn(self.lk(self.channel_mixer(self.layer_norm(x))))))


class DySample(nn.Module):
    """DySample (Liu et al., ICCV 2023) as RealPLKSR uses it: ``groups`` channel groups; for
    each, every output pixel samples (bilinear, border padding) the LR map at its sub-pixel
    centre plus ``0.5 * offset(x) * sigmoid(scope(x))`` LR pixels; then ``end_conv`` to RGB."""

    def __init__(self, channels: int, scale: int, groups: int, out_ch: int = 3) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"DySample: {channels} channels do not split in {groups} groups")
        self.scale, self.groups = scale, groups
        self.offset = nn.Conv2d(channels, 2 * groups * scale * scale, 1)
        self.scope = nn.Conv2d(channels, 2 * groups * scale * scale, 1, bias=False)
        nn.init.trunc_normal_(self.offset.weight, std=0.02)  # the published initialisation
        nn.init.zeros_(self.scope.weight)
        if scale != 1:
            self.end_conv = nn.Conv2d(channels, out_ch, 1)
        self.register_buffer("init_pos", self._sub_pixel_centres(scale, groups))

    @staticmethod
    def _sub_pixel_centres(scale: int, groups: int) -> Tensor:
        """The (x, y) offsets of the ``scale x scale`` sub-pixels of a cell from its centre, in
        LR pixels, row-major, for each group: shape ``(1, 2 * groups * scale^2, 1, 1)``."""
        h = (torch.arange(scale, dtype=torch.float32) - (scale - 1) / 2) / scale
        rows, cols = torch.meshgrid(h, h, indexing="ij")
        xy = torch.stack([cols, rows]).reshape(2, 1, scale * scale).expand(2, groups, scale * scale)
        return xy.reshape(1, -1, 1, 1).clone()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos.to(x.dtype)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                                torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
        pos = offset.view(b, 2, g * s * s, h, w) + torch.stack([xs, ys]).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
        grid = (2 * pos / size - 1).reshape(b, 2 * g * s * s, h, w)
        grid = F.pixel_shuffle(grid, s).view(b, 2, g, s * h, s * w).permute(0, 2, 3, 4, 1).flatten(0, 1)
        out = F.grid_sample(x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="border",
                            align_corners=False).view(b, c, s * h, s * w)
        return self.end_conv(out) if s != 1 else out


class PLKSR(nn.Module):
    """PLKSR (Lee et al. 2024, Fig. 3); RGB 0..1 in and out."""

    def __init__(self, scale: int = 4, dim: int = 64, n_blocks: int = 28, ccm_type: str = "CCM",
                 kernel_size: int = 17, split_ratio: float = 0.25, with_idt: bool = False,
                 use_ea: bool = True) -> None:
        super().__init__()
        blocks = [PLKBlock(dim, ccm_type, kernel_size, split_ratio, with_idt, use_ea) for _ in range(n_blocks)]
        self.feats = nn.Sequential(conv(3, dim), *blocks, conv(dim, 3 * scale * scale))
        self.to_img = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.to_img(self.feats(x) + x.repeat_interleave(self.scale**2, dim=1))


class RealPLKSR(nn.Module):
    """RealPLKSR; RGB 0..1 in and out.  ``dropout`` acts in training only."""

    def __init__(self, scale: int = 4, dim: int = 64, n_blocks: int = 28, kernel_size: int = 17,
                 split_ratio: float = 0.25, use_ea: bool = True, norm_groups: int = 4, layer_norm: bool = False,
                 dysample: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        blocks = [RealPLKBlock(dim, kernel_size, split_ratio, use_ea, norm_groups, layer_norm) for _ in range(n_blocks)]
        self.feats = nn.Sequential(conv(3, dim), *blocks, nn.Dropout2d(dropout), conv(dim, 3 * scale * scale))
        self.to_img: nn.Module = (
            DySample(3 * scale * scale, scale, groups=3 if scale % 2 else 4) if dysample else nn.PixelShuffle(scale)
        )
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.to_img(self.feats(x) + x.repeat_interleave(self.scale**2, dim=1))


def _radius(kwargs: Mapping[str, Any], scale: int, mixer: int, ea: bool) -> int:
    block = mixer + kwargs.get("kernel_size", 17) // 2 + (1 if ea else 0)
    lr = 1 + kwargs.get("n_blocks", 28) * block + 1  # head, blocks, tail conv
    return receptive_radius([("conv", lr), ("up", scale)], scale)


def _plksr_radius(kwargs: Mapping[str, Any], scale: int) -> int:
    k1, k2 = MIXER_KERNELS[kwargs.get("ccm_type", "CCM")]
    return _radius(kwargs, scale, k1 // 2 + k2 // 2, kwargs.get("use_ea", True))


def _realplksr_radius(kwargs: Mapping[str, Any], scale: int) -> int:
    """DCCM reaches 2; DySample reads the two LR pixels around each sample point, which is
    its cell plus an offset (assumed within :data:`DYSAMPLE_REACH`)."""
    radius = _radius(kwargs, scale, 2, kwargs.get("use_ea", True))
    return radius + 1 + DYSAMPLE_REACH if kwargs.get("dysample", False) else radius


def _common(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    dim = shape(sd, "feats.0.weight")[0]
    lk = shape(sd, "feats.1.lk.conv.weight")
    return {
        "dim": dim,
        "n_blocks": len(indices(sd, "feats.", "refine.weight")),
        "kernel_size": lk[2],
        "split_ratio": lk[0] / dim,
        "use_ea": "feats.1.attn.f.0.weight" in sd,
    }


def _tail(sd: Mapping[str, Tensor]) -> int:
    return max(indices(sd, "feats.", "weight"))


def _plksr_infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    kernels = (shape(sd, "feats.1.channe_mixer.0.weight")[2], shape(sd, "feats.1.channe_mixer.2.weight")[2])
    ccm = next(name for name, ks in MIXER_KERNELS.items() if ks == kernels)
    tail = _tail(sd)
    return {**_common(sd), "ccm_type": ccm}, shuffle_scale(shape(sd, f"feats.{tail}.weight")[0], 3)


def _realplksr_infer(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int | None]:
    tail = _tail(sd)
    kwargs = {
        **_common(sd),
        "layer_norm": "feats.1.layer_norm.weight" in sd,
        "dysample": "to_img.init_pos" in sd,
    }
    return kwargs, shuffle_scale(shape(sd, f"feats.{tail}.weight")[0], 3)


_BLOCK_KEYS = ("feats.0.weight", "feats.1.lk.conv.weight", "feats.1.refine.weight")

PLKSR_ARCH = register_arch(
    Arch(
        name="plksr",
        build=PLKSR,
        convention="rgb",
        radius=_plksr_radius,
        paper="Lee et al., PLKSR, arXiv 2024",
        fp16=True,
        bf16=True,
        matches=lambda sd: has(sd, *_BLOCK_KEYS, "feats.1.channe_mixer.0.weight"),
        infer_kwargs=_plksr_infer,
        default_kwargs={"dim": 64, "n_blocks": 28, "ccm_type": "CCM", "kernel_size": 17, "split_ratio": 0.25},
        test_configs=(
            ({"dim": 8, "n_blocks": 1, "kernel_size": 5, "ccm_type": "CCM"}, 4),
            ({"dim": 8, "n_blocks": 2, "kernel_size": 3, "ccm_type": "DCCM", "split_ratio": 0.5, "use_ea": False}, 2),
            ({"dim": 4, "n_blocks": 1, "kernel_size": 5, "ccm_type": "ICCM", "split_ratio": 0.25}, 3),
        ),
    )
)

REALPLKSR_ARCH = register_arch(
    Arch(
        name="realplksr",
        build=RealPLKSR,
        convention="rgb",
        radius=_realplksr_radius,
        paper="Lee et al., PLKSR (RealPLKSR), arXiv 2024",
        fp16=True,
        bf16=True,
        matches=lambda sd: has(sd, *_BLOCK_KEYS, "feats.1.channel_mixer.0.weight"),
        infer_kwargs=_realplksr_infer,
        default_kwargs={"dim": 64, "n_blocks": 28, "kernel_size": 17, "split_ratio": 0.25, "norm_groups": 4},
        test_configs=(
            ({"dim": 8, "n_blocks": 1, "kernel_size": 5}, 4),
            ({"dim": 8, "n_blocks": 2, "kernel_size": 3, "layer_norm": True}, 2),
        ),  # no DySample config: its reach is data-dependent, no radius is exact (DYSAMPLE_REACH)
        global_context=True,  # GroupNorm normalises over the whole map (the layer_norm form is local)
        recipe="plksr",  # no paper of its own: PLKSR's fidelity recipe (the community adds GAN stages)
    )
)

for _spec in (
    ModelSpec(
        name="plksr",
        arch="plksr",
        kwargs={"dim": 64, "n_blocks": 28, "kernel_size": 17, "split_ratio": 0.25},
        scales=(2, 3, 4),
        description="PLKSR: 64 channels, 28 blocks, 17x17 partial kernel (Lee et al. 2024)",
        trainable_only=True,
    ),
    ModelSpec(
        name="plksr-tiny",
        arch="plksr",
        kwargs={"dim": 64, "n_blocks": 12, "kernel_size": 13, "split_ratio": 0.25},
        scales=(2, 3, 4),
        description="PLKSR-tiny: 64 channels, 12 blocks, 13x13 partial kernel (Lee et al. 2024)",
        trainable_only=True,
    ),
    ModelSpec(
        name="realplksr",
        arch="realplksr",
        kwargs={"dim": 64, "n_blocks": 28, "kernel_size": 17, "split_ratio": 0.25},
        scales=(2, 4),
        description="RealPLKSR: PLKSR for real-world SR, GroupNorm (or LayerNorm), optional DySample",
        trainable_only=True,
    ),
):
    register_model(_spec)
