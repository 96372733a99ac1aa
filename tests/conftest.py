"""Shared test fixtures: paths to ../shared and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from loopback import Loopback

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
SET5 = SHARED / "datasets" / "bench" / "Set5"
SET14 = SHARED / "datasets" / "bench" / "Set14"
TRAIN = SHARED / "datasets" / "train"
CHECKPOINTS = SHARED / "checkpoints"

# Under pytest-xdist every worker gets one thread: two workers fill the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def need_shared(path: Path) -> Path:
    """Return ``path`` or skip the test, saying which ../shared file is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside the repository)")
    return path


@pytest.fixture
def set5() -> Path:
    return need_shared(SET5)


@pytest.fixture
def set14() -> Path:
    return need_shared(SET14)


@pytest.fixture
def checkpoints() -> Path:
    return need_shared(CHECKPOINTS)


@pytest.fixture
def train_dir() -> Path:
    return need_shared(TRAIN)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real weights cache or the network."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
    # --backend auto would convert every test's model to OpenVINO where it is installed; the
    # engine's tests are about PyTorch, and tests/test_backends.py asks for OpenVINO itself.
    monkeypatch.setenv("UPSCALE_BACKEND", "torch")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: fast on a shared 2-core machine and equal to the subprocesses'."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def server() -> Iterator[Loopback]:
    """A loopback HTTP server (tests/loopback.py), closed after the test."""
    srv = Loopback()
    yield srv
    srv.close()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network allowed (``_isolated_cache`` sets HF_HUB_OFFLINE=1 for every test)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("UPSCALE_OFFLINE", raising=False)


def assert_tiled_equals_whole(
    model, image: torch.Tensor, atol: float = 1e-5, extra: int = 4, min_tiles: int = 2
) -> None:
    """Tiles of side ``2 * radius + extra`` overlapping by the model's receptive-field radius
    give exactly the whole-image output (fp32, CPU), and the image really is cut in tiles."""
    from upscale_cli.engine import Upscaler

    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=2 * whole.radius + extra, tile_overlap=whole.radius)
    assert tiled.plan(*image.shape[-2:]).count >= min_tiles
    with torch.no_grad():
        torch.testing.assert_close(tiled.upscale(image), whole.upscale(image), atol=atol, rtol=0)
