"""MATLAB ``imresize`` arithmetic, checked against taps and weights worked out by hand.

For each output sample the tables below list, by hand, the source positions ``i`` (1-based, as
MATLAB writes them) that fall inside the kernel's support around ``u = x/scale + 0.5(1 - 1/scale)``,
the distance ``u - i`` and the pixel that ``i`` mirrors to (``[1..n, n..1]`` repeated).  The
weights come from the kernel formulas restated here, normalised to sum to one.
"""

from __future__ import annotations

import math

import pytest
import torch

from upscale_cli import resize as resize_module
from upscale_cli.resize import imresize


def keys(d: float) -> float:
    """Keys (1981) cubic convolution, a = -0.5."""
    a = abs(d)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def lanczos3(d: float) -> float:
    if d == 0:
        return 1.0
    return 3 * math.sin(math.pi * d) * math.sin(math.pi * d / 3) / (math.pi * d) ** 2


# Each output: list of (distance u - i, 1-based source pixel after mirroring).
# 4 -> 2, scale 1/2, antialiased: kernel 0.5*keys(0.5 d), support |d| < 4.
#   x=1: u = 1.5, i = -2..5 ; mirror of -2, -1, 0 is 3, 2, 1; of 5 is 4.
#   x=2: u = 3.5, i = 0..7  ; mirror of 0 is 1; of 5, 6, 7 is 4, 3, 2.
SHRINK_4_TO_2 = [
    [(3.5, 3), (2.5, 2), (1.5, 1), (0.5, 1), (-0.5, 2), (-1.5, 3), (-2.5, 4), (-3.5, 4)],
    [(3.5, 1), (2.5, 1), (1.5, 2), (0.5, 3), (-0.5, 4), (-1.5, 4), (-2.5, 3), (-3.5, 2)],
]
# 5 -> 3 with scale 1/2 (output ceil(2.5) = 3; the geometry uses 1/2, not 3/5).
#   u = 1.5, 3.5, 5.5 (i = -2..5, 0..7, 2..9); -2, -1, 0 mirror to 3, 2, 1 and 6, 7, 8, 9 to 5, 4, 3, 2.
SHRINK_5_TO_3 = [
    [(3.5, 3), (2.5, 2), (1.5, 1), (0.5, 1), (-0.5, 2), (-1.5, 3), (-2.5, 4), (-3.5, 5)],
    [(3.5, 1), (2.5, 1), (1.5, 2), (0.5, 3), (-0.5, 4), (-1.5, 5), (-2.5, 5), (-3.5, 4)],
    [(3.5, 2), (2.5, 3), (1.5, 4), (0.5, 5), (-0.5, 5), (-1.5, 4), (-2.5, 3), (-3.5, 2)],
]
# 3 -> 6, scale 2, keys support |d| < 2; u = 0.75, 1.25, ..., 3.25.
ENLARGE_3_TO_6 = [
    [(1.75, 2), (0.75, 1), (-0.25, 1), (-1.25, 2)],
    [(1.25, 1), (0.25, 1), (-0.75, 2), (-1.75, 3)],
    [(1.75, 1), (0.75, 1), (-0.25, 2), (-1.25, 3)],
    [(1.25, 1), (0.25, 2), (-0.75, 3), (-1.75, 3)],
    [(1.75, 1), (0.75, 2), (-0.25, 3), (-1.25, 3)],
    [(1.25, 2), (0.25, 3), (-0.75, 3), (-1.75, 2)],
]
# 3 -> 6 with lanczos3 (|d| < 3): first output only, u = 0.75, i = -2..3.
LANCZOS_FIRST = [(2.75, 3), (1.75, 2), (0.75, 1), (-0.25, 1), (-1.25, 2), (-2.25, 3)]


def hand_matrix(table: list[list[tuple[float, int]]], n_in: int, kernel) -> torch.Tensor:
    m = torch.zeros(len(table), n_in, dtype=torch.float64)
    for row, taps in enumerate(table):
        w = [kernel(d) for d, _ in taps]
        total = sum(w)
        for wi, (_, src) in zip(w, taps):
            m[row, src - 1] += wi / total
    return m


def half_keys(d: float) -> float:
    return 0.5 * keys(0.5 * d)


@pytest.mark.parametrize(
    ("n_in", "kwargs", "table", "kernel"),
    [
        (4, {"scale": 0.5}, SHRINK_4_TO_2, half_keys),
        (4, {"size": (1, 2)}, SHRINK_4_TO_2, half_keys),
        (5, {"scale": 0.5}, SHRINK_5_TO_3, half_keys),
        (3, {"scale": 2}, ENLARGE_3_TO_6, keys),
        (3, {"size": (1, 6)}, ENLARGE_3_TO_6, keys),
    ],
)
def test_cubic_1d_matches_hand_worked_matlab(n_in, kwargs, table, kernel) -> None:
    v = torch.tensor([[0.1, 0.9, 0.35, 0.6, 0.2][:n_in]], dtype=torch.float64)
    got = imresize(v, **kwargs)[-1]  # a 1-row image: every output row is that row resized
    want = hand_matrix(table, n_in, kernel) @ v[0]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_cubic_2d_is_the_two_hand_matrices_height_and_width() -> None:
    img = torch.rand(2, 3, 4, 3, dtype=torch.float64)  # N, C, H=4, W=3
    got = imresize(img, size=(2, 6))
    mh = hand_matrix(SHRINK_4_TO_2, 4, half_keys)
    mw = hand_matrix(ENLARGE_3_TO_6, 3, keys)
    want = mh @ img @ mw.T
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_lanczos3_first_sample() -> None:
    v = torch.tensor([[0.3, 0.8, 0.1]], dtype=torch.float64)
    got = imresize(v, size=(1, 6), kernel="lanczos3")[0, 0]
    want = hand_matrix([LANCZOS_FIRST], 3, lanczos3)[0] @ v[0]
    assert abs(float(got) - float(want)) < 1e-12


def test_nearest_picks_matlab_pixels() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # u = 1.5, 3.5 -> the box [-0.5, 0.5) around u selects pixels 2 and 4 (no antialiasing)
    assert imresize(v, size=(1, 2), kernel="nearest").tolist() == [[2.0, 4.0]]
    w = torch.tensor([[1.0, 2.0, 3.0]])
    assert imresize(w, size=(1, 6), kernel="nearest").tolist() == [[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]


def test_output_size_is_ceil_of_scale_times_input() -> None:
    x = torch.rand(3, 7, 10)
    assert imresize(x, scale=0.5).shape == (3, 4, 5)
    assert imresize(x, scale=1 / 3).shape == (3, 3, 4)
    assert imresize(x, scale=2.5).shape == (3, 18, 25)


def test_batched_equals_one_by_one_and_keeps_dtype() -> None:
    x = torch.rand(3, 2, 3, 9, 11)
    y = imresize(x, scale=0.5)
    for i in range(3):
        torch.testing.assert_close(y[i], imresize(x[i], scale=0.5))
    assert imresize(x.half(), scale=2).dtype == torch.float16
    assert imresize(x.double(), scale=2).dtype == torch.float64


def test_constant_image_stays_constant() -> None:
    x = torch.full((1, 3, 13, 17), 0.4, dtype=torch.float64)
    for kernel in ("cubic", "lanczos3", "nearest"):
        for scale in (0.3, 0.5, 2, 3):
            y = imresize(x, scale=scale, kernel=kernel)
            torch.testing.assert_close(y, torch.full_like(y, 0.4))


def test_antialias_off_samples_without_stretching() -> None:
    # 4 -> 2 without antialiasing: keys at distances around u = 1.5 / 3.5, support |d| < 2
    v = torch.tensor([[0.1, 0.9, 0.35, 0.6]], dtype=torch.float64)
    table = [
        [(1.5, 1), (0.5, 1), (-0.5, 2), (-1.5, 3)],
        [(1.5, 2), (0.5, 3), (-0.5, 4), (-1.5, 4)],
    ]
    want = hand_matrix(table, 4, keys) @ v[0]
    torch.testing.assert_close(imresize(v, size=(1, 2), antialias=False)[0], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [{}, {"scale": 2, "size": (4, 4)}, {"scale": 0}, {"scale": 2, "kernel": "bogus"}])
def test_bad_arguments(bad) -> None:
    with pytest.raises(ValueError):
        imresize(torch.rand(1, 4, 4), **bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    x = torch.rand(2, 3, 31, 45)
    torch.testing.assert_close(imresize(x.cuda(), scale=0.25).cpu(), imresize(x, scale=0.25), atol=1e-6, rtol=0)


# --- the classical models are this resize -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kernel", "radius"), [("bicubic", "cubic", 2), ("lanczos", "lanczos3", 3), ("nearest", "nearest", 0)]
)
def test_classical_models_are_imresize_at_any_integer_scale(name: str, kernel: str, radius: int) -> None:
    from upscale_cli.loader import load_model

    x = torch.rand(2, 3, 9, 7)
    for scale in (2, 5):
        model = load_model(name, scale)
        assert model.params == 0 and model.source == "none" and model.radius == radius
        torch.testing.assert_close(model(x), imresize(x, scale=scale, kernel=kernel), rtol=0, atol=0)


def test_nearest_model_replicates_pixels_and_aliases_resolve() -> None:
    from upscale_cli.models import create_model, get_spec

    x = torch.rand(1, 3, 4, 5)
    want = x.repeat_interleave(3, -1).repeat_interleave(3, -2)
    torch.testing.assert_close(create_model("nearest", 3)(x, 3), want, rtol=0, atol=0)
    assert get_spec("cubic").name == "bicubic" and get_spec("Lanczos3").name == "lanczos"


def test_runs_in_full_precision_inside_autocast() -> None:
    x = torch.rand(1, 3, 20, 18)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = imresize(x, scale=2)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, imresize(x, scale=2), rtol=0, atol=0)


# --- the dense form used while tracing / exporting (issue 17) ---------------------------------

@pytest.mark.parametrize("kernel", ["cubic", "lanczos3", "nearest"])
@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 5), (7, 4), (13, 9)])
def test_dense_upscale_equals_sparse(kernel: str, factor: int, size: tuple[int, int]) -> None:
    """Polyphase convolution == the sparse matrix, to 1e-6, down to 1-pixel images (mirroring wraps)."""
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(factor))
    dense = resize_module._traceable_upscale(x, (factor, factor), kernel)
    assert dense.shape == (2, 3, factor * size[0], factor * size[1])
    assert (dense - imresize(x, scale=factor, kernel=kernel)).abs().max().item() < 1e-6


def test_dense_upscale_unequal_factors_and_leading_dims() -> None:
    """``size=`` with different integer factors per dimension; any leading dimensions."""
    x = torch.rand(5, 7)
    dense = resize_module._traceable_upscale(x, (2, 3), "cubic")
    assert (dense - imresize(x, size=(10, 21))).abs().max().item() < 1e-6


class _Chroma(torch.nn.Module):
    """Both ways the models call imresize inside a forward: ``scale=s`` and ``size=`` a multiple."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, scale=3) + imresize(x, size=(3 * x.shape[-2], 3 * x.shape[-1]))


def test_traced_resize_is_dynamic_and_exact() -> None:
    """Traced at 16 px, the graph runs at 11 x 20 (batch 3) and equals the eager (sparse) resize."""
    traced = torch.jit.trace(_Chroma(), torch.rand(1, 2, 16, 16))
    assert "sparse" not in str(traced.graph)
    x = torch.rand(3, 2, 11, 20)
    assert (traced(x) - _Chroma()(x)).abs().max().item() < 1e-6


def test_traced_resize_refuses_non_integer_factors() -> None:
    class Down(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return imresize(x, scale=0.5)

    with pytest.raises(ValueError, match="only integer upscales can be exported"):
        torch.jit.trace(Down(), torch.rand(1, 1, 8, 8))


def test_eager_keeps_the_sparse_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("dense path used in eager mode")

    monkeypatch.setattr(resize_module, "_traceable_upscale", refuse)
    assert not resize_module.exporting()
    assert imresize(torch.rand(1, 1, 4, 4), scale=2).shape == (1, 1, 8, 8)
