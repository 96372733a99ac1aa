"""PSNR, SSIM and the protocol's Y channel, against scikit-image and MATLAB's formulas."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from upscale_cli.metrics import (
    evaluate,
    gaussian_window,
    psnr,
    quantize,
    shave,
    ssim,
    to_eval_channel,
)


def _pair(h: int, w: int, seed: int, noise: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(h, w)).astype(np.float64)
    b = np.clip(a + rng.normal(0, noise, size=(h, w)), 0, 255).round()
    return a, b


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


@pytest.mark.parametrize(("h", "w", "seed"), [(37, 53, 0), (64, 64, 1), (11, 30, 2), (101, 77, 3)])
def test_ssim_and_psnr_match_scikit_image(h: int, w: int, seed: int) -> None:
    a, b = _pair(h, w, seed)
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    assert float(ssim(ta, tb)) == pytest.approx(_sk_ssim(a, b), abs=1e-12)
    assert float(psnr(ta, tb)) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-10)


def test_ssim_is_batched_and_averages_channels() -> None:
    pairs = [_pair(40, 45, s, noise=10.0 * (s + 1)) for s in range(6)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs])).reshape(2, 3, 40, 45)
    b = torch.from_numpy(np.stack([p[1] for p in pairs])).reshape(2, 3, 40, 45)
    got = ssim(a, b)
    assert got.shape == (2,)
    for n in range(2):
        want = np.mean([_sk_ssim(pairs[3 * n + c][0], pairs[3 * n + c][1]) for c in range(3)])
        assert float(got[n]) == pytest.approx(want, abs=1e-12)
    assert psnr(a, b).shape == (2,)


def test_ssim_of_identical_images_is_one_and_psnr_capped_at_100_db() -> None:
    a = torch.rand(1, 20, 20) * 255
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-12)
    assert float(psnr(a, a)) == 100.0  # not inf: JSON cannot hold it


def test_gaussian_window_is_matlab_fspecial() -> None:
    g = np.array(gaussian_window(11, 1.5))
    r = np.arange(-5, 6)
    want = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(np.outer(g, g), want / want.sum(), rtol=0, atol=1e-15)


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 10, 40), torch.zeros(1, 10, 40))


def test_y_channel_is_matlab_rgb2ycbcr() -> None:
    rgb = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 99]]
    rgb = torch.tensor(rgb, dtype=torch.float64)
    img = rgb.T.reshape(3, 1, 6)
    # MATLAB rgb2ycbcr on double input in 0..1: Y = 16 + 65.481 R + 128.553 G + 24.966 B (on 0..255)
    r, g, b = rgb.unbind(1)
    want = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    got = to_eval_channel(img)
    assert got.shape == (1, 1, 6)
    torch.testing.assert_close(got[0, 0], want, rtol=0, atol=1e-10)
    assert got[0, 0, 0].item() == pytest.approx(16.0) and got[0, 0, 1].item() == pytest.approx(235.0)
    grey = torch.rand(1, 4, 4) * 255
    assert torch.equal(to_eval_channel(grey), grey)


def test_quantize_clamps_and_rounds_halves_up() -> None:
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.999, 1.7])
    assert quantize(x).tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 255.0, 255.0]


def test_shave() -> None:
    x = torch.arange(2 * 6 * 7).reshape(2, 6, 7)
    assert torch.equal(shave(x, 2), x[:, 2:4, 2:5])
    assert torch.equal(shave(x, 0), x)


def test_evaluate_follows_the_protocol() -> None:
    torch.manual_seed(0)
    hr = torch.floor(torch.rand(3, 30, 34) * 256).clamp(max=255) / 255
    sr = hr + 0.02 * torch.randn_like(hr)
    sr[:, :2] = 5.0  # garbage in the 2 px border that the x2 shave removes; also beyond 0..1
    p, s = evaluate(sr, hr, 2)
    ya = shave(to_eval_channel(torch.floor(sr.double().clamp(0, 1) * 255 + 0.5)), 2)
    yb = shave(to_eval_channel((hr.double() * 255).round()), 2)  # hr is exactly 8-bit
    assert float(p) == pytest.approx(peak_signal_noise_ratio(yb[0].numpy(), ya[0].numpy(), data_range=255), abs=1e-9)
    assert float(s) == pytest.approx(_sk_ssim(yb[0].numpy(), ya[0].numpy()), abs=1e-12)
    # grey images are scored on their own channel; batches give one score per image
    pg, sg = evaluate(sr[None, :1].expand(2, 1, -1, -1), hr[None, :1].expand(2, 1, -1, -1), 2)
    assert pg.shape == sg.shape == (2,)
    ga, gb = shave(quantize(sr[:1]), 2), shave(quantize(hr[:1]), 2)
    assert float(pg[0]) == pytest.approx(peak_signal_noise_ratio(gb[0].numpy(), ga[0].numpy(), data_range=255))
