"""alexsim and LPIPS-Alex against functional computations of their definitions, on random weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from upscale_cli.errors import WeightsError
from upscale_cli.perceptual import (
    ALEXNET_ENV,
    LPIPS_ENV,
    TAP_CHANNELS,
    AlexMetrics,
    load_alex_metrics,
    load_lpips_heads,
)


def _net(seed: int = 0) -> AlexMetrics:
    torch.manual_seed(seed)
    heads = [torch.rand(1, c, 1, 1) for c in TAP_CHANNELS]
    return AlexMetrics(None, heads).double()


def _conv_stack(net: AlexMetrics, x: torch.Tensor) -> list[torch.Tensor]:
    """conv1..conv5 outputs after ReLU, by hand from the weights (Krizhevsky et al. 2012 single tower)."""
    f = net.features
    r1 = F.relu(F.conv2d(x, f[0].weight, f[0].bias, stride=4, padding=2))
    r2 = F.relu(F.conv2d(F.max_pool2d(r1, 3, 2), f[3].weight, f[3].bias, padding=2))
    r3 = F.relu(F.conv2d(F.max_pool2d(r2, 3, 2), f[6].weight, f[6].bias, padding=1))
    r4 = F.relu(F.conv2d(r3, f[8].weight, f[8].bias, padding=1))
    r5 = F.relu(F.conv2d(r4, f[10].weight, f[10].bias, padding=1))
    return [r1, r2, r3, r4, r5]


def test_alexsim_is_cosine_of_9216_vectors() -> None:
    net = _net()
    g = torch.Generator().manual_seed(1)
    sr, hr = torch.rand(2, 3, 90, 70, generator=g, dtype=torch.float64), torch.rand(2, 3, 90, 70, generator=g,
                                                                                      dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)

    def vec(x: torch.Tensor) -> torch.Tensor:
        v = F.adaptive_avg_pool2d(F.max_pool2d(_conv_stack(net, (x - mean) / std)[-1], 3, 2), 6).flatten(1)
        assert v.shape[1] == 9216
        return v

    a, b = vec(sr), vec(hr)
    want = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(net.alexsim(sr, hr), want)
    torch.testing.assert_close(net.alexsim(hr, hr), torch.ones(2, dtype=torch.float64))


def test_lpips_is_normalise_subtract_square_weight_average() -> None:
    net = _net(2)
    g = torch.Generator().manual_seed(3)
    sr, hr = torch.rand(1, 3, 64, 80, generator=g, dtype=torch.float64), torch.rand(1, 3, 64, 80, generator=g,
                                                                                      dtype=torch.float64)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    fa = _conv_stack(net, (sr * 2 - 1 - shift) / scale)
    fb = _conv_stack(net, (hr * 2 - 1 - shift) / scale)
    want = torch.zeros(1, dtype=torch.float64)
    for a, b, w in zip(fa, fb, net.heads):
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        want += ((na - nb) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    got = net.lpips(sr, hr)
    torch.testing.assert_close(got, want)
    assert float(got) > 0
    assert float(net.lpips(hr, hr)) == pytest.approx(0.0, abs=1e-12)


def test_missing_weights_error_names_download_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(ALEXNET_ENV, raising=False)
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    with pytest.raises(WeightsError, match=r"alex\.pth.*offline.*download https://raw\.githubusercontent\.com/.*--lpips-weights"):
        load_alex_metrics()
    monkeypatch.setenv(ALEXNET_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match=r"nope\.pth: no such AlexNet weights file"):
        load_alex_metrics(with_lpips=False)


def test_heads_loaded_from_env_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
    torch.save(heads, tmp_path / "alex.pth")
    monkeypatch.setenv(LPIPS_ENV, str(tmp_path))
    got = load_lpips_heads()
    assert all(torch.equal(g, heads[f"lin{k}.model.1.weight"]) for k, g in enumerate(got))
    heads["lin2.model.1.weight"] = torch.rand(1, 7, 1, 1)
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(WeightsError, match=r"expected \(1, 384, 1, 1\)"):
        load_lpips_heads()


@pytest.mark.skipif(not (os.environ.get(ALEXNET_ENV) and os.environ.get(LPIPS_ENV)),
                    reason=f"real weights absent: set ${ALEXNET_ENV} and ${LPIPS_ENV}")
def test_real_weights_rank_blur_below_identity() -> None:
    net = load_alex_metrics()
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 96, 96, generator=g)
    blur = F.avg_pool2d(hr, 5, 1, 2, count_include_pad=False)
    assert float(net.lpips(blur, hr)) > float(net.lpips(hr, hr))
    assert float(net.alexsim(blur, hr)) < float(net.alexsim(hr, hr))



def test_heads_come_from_the_manifest_asset_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server,
                                                     online: None) -> None:
    """Nothing local: the manifest's ``lpips-alex`` asset is downloaded into the weights cache and
    checked by sha256; a server giving other bytes is refused."""
    import hashlib
    import io
    import json

    from conftest import REPO

    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
    buf = io.BytesIO()
    torch.save(heads, buf)
    payload = buf.getvalue()
    server.files["/lpips/alex.pth"] = payload
    manifest = json.loads((REPO / "weights_manifest.json").read_text())
    manifest["assets"]["lpips-alex"].update(sources=[{"url": f"{server.base}/lpips/alex.pth"}],
                                            sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("UPSCALE_MANIFEST", str(tmp_path / "m.json"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    got = load_lpips_heads()
    assert all(torch.equal(g, heads[f"lin{k}.model.1.weight"]) for k, g in enumerate(got))
    cached = Path(os.environ["UPSCALE_CACHE"]) / "alex.pth"
    assert cached.read_bytes() == payload
    cached.unlink()
    server.files["/lpips/alex.pth"] = payload[:-1] + b"x"  # same size, other bytes
    with pytest.raises(WeightsError, match=r"alex\.pth"):
        load_lpips_heads()
    assert not cached.exists()
