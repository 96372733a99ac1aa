"""The registry contract, in the timm pattern: every registered architecture gets the same checks
from its own tiny configurations (``Arch.test_configs``), so a new family is covered by adding
a file, with no list to edit here.

For every configuration: it builds on the meta device; its state dict is claimed by its own
family and by no other, and detection finds it (or, for kwargs the keys cannot tell, names
exactly the variants that fit); the kwargs and scale read back through ``infer_kwargs``; a bare
``.pth`` of it loads from the file alone; the receptive-field radius is exact under a one-pixel
perturbation; tiled output equals the whole-image output.  Families with global context
(``Arch.global_context``) get bounds on the leak instead of exactness.  A parameter-free family
(``resample``) is checked on its default kwargs for what applies to it (meta build, radius,
tiling): its test ids say ``no-parameters`` and the skipped checks say why.  Every named
model's published configuration builds on the meta device and is claimed by its family only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_tiled_equals_whole
from torch import Tensor, nn

from upscale_cli.errors import WeightsError
from upscale_cli.loader import load_model
from upscale_cli.models import (
    Arch,
    LoadedModel,
    candidates,
    create_model,
    detect_arch,
    get_arch,
    list_archs,
    list_specs,
)
from upscale_cli.models.detect import claims, describe
from upscale_cli.models.registry import variant_of

LEAK = 1e-2
"""Global-context families: largest change outside the radius window, relative to the largest."""


def _scale_of(arch: Arch) -> int:
    return next((s.scales[0] for s in list_specs() if s.arch == arch.name), 2)


def _has_parameters(arch: Arch) -> bool:
    with torch.device("meta"):
        return any(True for _ in arch.build(scale=_scale_of(arch), **arch.default_kwargs).parameters())


def _cases() -> list[Any]:
    out = []
    for arch in list_archs():
        if arch.test_configs:
            configs = enumerate(arch.test_configs)
            out += [pytest.param(arch.name, i, id=f"{arch.name}-{i}-x{s}") for i, (_, s) in configs]
        elif not _has_parameters(arch):
            out.append(pytest.param(arch.name, None, id=f"{arch.name}-no-parameters"))
    return out


CASES = _cases()


def config(name: str, index: int | None) -> tuple[Arch, dict[str, Any], dict[str, Any], int]:
    """The family, the config's own kwargs, the full kwargs (over the defaults) and the scale."""
    arch = get_arch(name)
    if index is None:
        return arch, {}, dict(arch.default_kwargs), _scale_of(arch)
    kwargs, scale = arch.test_configs[index]
    return arch, dict(kwargs), {**arch.default_kwargs, **kwargs}, scale


def random_module(arch: Arch, kwargs: Mapping[str, Any], scale: int, std: float | None = None) -> nn.Module:
    """The network with seeded random weights: its own initialisation, with the parameters it
    initialises to zero (residual branches, biases) drawn too, so that every path counts; with
    ``std``, in fp64 with every trainable parameter drawn from N(0, std^2), so that no path
    fades below the rounding of the far end of the receptive field."""
    torch.manual_seed(0)
    module = arch.build(scale=scale, **kwargs).eval()
    if std is not None:
        module.double()
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad and (std is not None or not p.any()):
                p.normal_(0.0, std or 0.1)
    return module


def loaded(arch: Arch, module: nn.Module, kwargs: Mapping[str, Any], scale: int) -> LoadedModel:
    return LoadedModel(name=arch.name, arch=arch, module=module, scale=scale, kwargs=dict(kwargs))


def _run(arch: Arch, module: nn.Module, scale: int) -> Callable[[Tensor], Tensor]:
    return (lambda x: module(x, scale)) if arch.multiscale else module


def needs_detection(arch: Arch, index: int | None) -> None:
    if index is None:
        pytest.skip(f"{arch.name} has no parameters: there is no state dict to detect or load")
    if arch.matches is None:
        pytest.skip(f"{arch.name} has no matcher: its files are named with --arch")


# --- build --------------------------------------------------------------------------------


def test_every_family_with_parameters_declares_test_configs() -> None:
    missing = [a.name for a in list_archs() if not a.test_configs and _has_parameters(a)]
    assert not missing, f"declare Arch.test_configs (tiny (kwargs, scale) instances) for: {', '.join(missing)}"


@pytest.mark.parametrize(("name", "index"), CASES)
def test_builds_on_the_meta_device(name: str, index: int | None) -> None:
    arch, _, kwargs, scale = config(name, index)
    with torch.device("meta"):
        net = arch.build(scale=scale, **kwargs)
    off_meta = [k for k, t in net.state_dict().items() if not t.is_meta]
    assert not off_meta, f"{arch.name}: built off the meta device: {off_meta[:3]}"
    assert arch.radius(kwargs, scale) >= 0 and arch.size_multiple(kwargs, scale) >= 1


# --- detection and hyperparameters ------------------------------------------------------------


@pytest.mark.parametrize(("name", "index"), CASES)
def test_detection_claims_its_own_state_dict_and_no_other_family_does(name: str, index: int | None) -> None:
    arch, own, kwargs, scale = config(name, index)
    needs_detection(arch, index)
    sd = random_module(arch, kwargs, scale).state_dict()
    claimed = claims(sd)
    assert [a.name for a, _ in claimed] == [arch.name]
    found = candidates(arch, claimed[0][1])
    fits = [c for c in found if all(c[1].get(k) == v for k, v in own.items()) and c[2] in (scale, None)]
    assert fits, f"{arch.name}: no candidate reads back {own} x{scale}: {[(c[1], c[2]) for c in found]}"
    if len(found) == 1:
        assert detect_arch(sd)[0] is arch
    else:  # kwargs the keys cannot tell: detection names exactly the variants that fit
        with pytest.raises(WeightsError) as err:
            detect_arch(sd)
        assert f"fit {len(found)} networks: {', '.join(describe(c) for c in found)};" in str(err.value)


@pytest.mark.parametrize(("name", "index"), CASES)
def test_hyperparameters_round_trip_through_infer_kwargs(name: str, index: int | None) -> None:
    arch, own, kwargs, scale = config(name, index)
    if index is None or arch.infer_kwargs is None:
        pytest.skip(f"{arch.name} reads no kwargs off shapes (no parameters or no infer_kwargs)")
    sd = random_module(arch, kwargs, scale).state_dict()
    converted = arch.convert_keys(dict(sd)) if arch.convert_keys else sd
    inferred, inferred_scale = arch.infer_kwargs(converted)
    assert inferred_scale in (scale, None)
    unread = [k for k in own if k not in inferred]
    assert not unread, f"{arch.name}: kwargs {unread} of the config are not read off the shapes"
    differ = {k: (v, inferred[k]) for k, v in own.items() if inferred[k] != v}
    told_apart = set(differ) - {k for preset in arch.variants.values() for k in preset}
    assert not told_apart, f"{arch.name}: (config, inferred) {differ}"
    rebuilt = arch.build(scale=scale, **{**inferred, **{k: own[k] for k in differ}})
    rebuilt.load_state_dict(converted, strict=True)


@pytest.mark.parametrize(("name", "index"), CASES)
def test_loads_from_the_file_alone(name: str, index: int | None, tmp_path: Path) -> None:
    """A bare ``.pth`` of the state dict loads with no other flag (the variant's name when the
    keys cannot tell) and computes what the network it came from computes."""
    arch, _, kwargs, scale = config(name, index)
    needs_detection(arch, index)
    module = random_module(arch, kwargs, scale)
    sd = module.state_dict()
    found = candidates(arch, arch.convert_keys(dict(sd)) if arch.convert_keys else sd)
    plain = tmp_path / f"{arch.name}.pth"
    torch.save(sd, plain)
    model = load_model(weights=str(plain), scale=scale, arch=variant_of(arch, kwargs) if len(found) > 1 else None)
    assert model.arch is arch and model.scale == scale
    x = torch.rand(1, 3, 2 * model.size_multiple + 3, model.size_multiple + 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(arch, module, kwargs, scale)(x))


@pytest.mark.parametrize("name", [s.name for s in list_specs()])
def test_every_named_model_builds_on_meta_and_is_claimed_by_its_family_only(name: str) -> None:
    """The published configurations (the contract's tiny ones aside): built on the meta device
    at their first scale, their keys are their family's and no other's."""
    spec = next(s for s in list_specs() if s.name == name)
    arch = get_arch(spec.arch)
    with torch.device("meta"):
        sd = create_model(name, spec.scales[0]).state_dict()
    assert arch.radius(spec.kwargs, spec.scales[0]) >= 0
    if not sd or arch.matches is None:
        pytest.skip(f"{name}: no parameters or no matcher, nothing to detect")
    assert [a.name for a, _ in claims(sd)] == [arch.name]


# --- receptive field and tiling -------------------------------------------------------------


def _changes(run: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, at: int) -> Tensor:
    """|f(x + e) - f(x)| summed over channels, e one pixel at (at, at) of ``x``; ``y = f(x)``."""
    x2 = x.clone()
    x2[..., at, at] += 1.0
    with torch.no_grad():
        return (run(x2) - y).abs().sum(1)[0]


def _reach(d: Tensor, at: int, scale: int, threshold: float) -> int:
    """Largest |parent(p) - at| over output pixels p that changed by more than ``threshold``."""
    ys, xs = torch.nonzero(d > threshold, as_tuple=True)
    return int(max((ys // scale - at).abs().max(), (xs // scale - at).abs().max()))


@pytest.mark.parametrize(("name", "index"), CASES)
def test_radius_holds_under_a_one_pixel_perturbation(name: str, index: int | None) -> None:
    """Perturb one input pixel of the fp64 random net, at every phase of the size multiple:
    no output beyond the declared radius changes, and the radius is reached (exact).  With
    global context the changes beyond it are only small."""
    arch, _, kwargs, scale = config(name, index)
    radius, m = arch.radius(kwargs, scale), arch.size_multiple(kwargs, scale)
    run = _run(arch, random_module(arch, kwargs, scale, std=0.5), scale)
    n = -(-(2 * radius + 8 + m) // m) * m
    x = torch.rand(1, 1 if arch.convention == "y" else 3, n, n, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = run(x)
    reach = 0
    for phase in range(m):
        at = n // 2 + phase
        d = _changes(run, x, y, at)
        assert d.shape == (n * scale, n * scale)
        threshold = LEAK * float(d.max()) if arch.global_context else 0.0
        reach = max(reach, _reach(d, at, scale, threshold))
        assert reach <= radius, f"{arch.name}: outputs {reach} px away change, the declared radius is {radius}"
    if not arch.global_context:
        assert reach == radius, f"{arch.name}: declared radius {radius}, measured {reach}"


@pytest.mark.parametrize(("name", "index"), CASES)
def test_tiled_output_equals_the_whole_image(name: str, index: int | None) -> None:
    """Through the engine, tiles overlapping by the radius (the smallest tile the size multiple
    allows, so that the image is cut in several) give the whole-image output: exactly, or
    within 45 dB PSNR for global-context families."""
    from upscale_cli.engine import Upscaler
    from upscale_cli.metrics import psnr

    arch, _, kwargs, scale = config(name, index)
    model = loaded(arch, random_module(arch, kwargs, scale), kwargs, scale)
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    m = model.size_multiple
    tile = -(-(2 * whole.radius + m + 4) // m) * m
    image = torch.rand(3, tile + m + 3, tile - m, generator=torch.Generator().manual_seed(5))  # 2 x 1 tiles
    if not arch.global_context:  # fp32 rounding relative to the output (random deep nets grow)
        with torch.no_grad():
            peak = max(1.0, float(model(image[None]).abs().max()))
        assert_tiled_equals_whole(model, image, atol=1e-5 * peak, extra=tile - 2 * whole.radius)
        return
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=tile, tile_overlap=whole.radius)
    assert tiled.plan(*image.shape[-2:]).count >= 2
    a, b = whole.upscale(image), tiled.upscale(image)
    assert float(psnr(b, a, data_range=float(a.abs().max()))) >= 45.0
