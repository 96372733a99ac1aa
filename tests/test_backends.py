"""Backends (upscale_cli/backends): choosing one, OpenVINO equal to PyTorch fp32, the IR cache,
the engine's NaN rule on any backend, and --compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from upscale_cli import backends
from upscale_cli.backends import Setting, make_backend
from upscale_cli.backends import openvino_cpu
from upscale_cli.backends.pytorch import TorchBackend
from upscale_cli.engine import Upscaler
from upscale_cli.errors import UsageError
from upscale_cli.loader import load_model

CPU = torch.device("cpu")
SMALL_NETS = [("fsrcnn", 2), ("espcn", 3), ("realesr-animevideov3", 4), ("carn-m", 2), ("edsr-baseline", 2)]
"""Small zoo nets, random weights, one per family kind (transposed conv, pixel shuffle, PReLU, groups)."""


def _fp32() -> Setting:
    return Setting(CPU, "fp32", True)


def _net(name: str, scale: int):
    torch.manual_seed(0)
    return load_model(name, scale, pretrained=False)


def test_unknown_backend_and_bad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net("fsrcnn", 2)
    with pytest.raises(UsageError, match="unknown backend 'tensorrt'"):
        make_backend("tensorrt", model, _fp32())
    monkeypatch.setenv(backends.ENV_VAR, "onnx")
    with pytest.raises(UsageError, match="UPSCALE_BACKEND='onnx'"):
        make_backend("auto", model, _fp32())
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    backend, note = make_backend("auto", model, _fp32())
    assert isinstance(backend, TorchBackend) and note is None


def test_auto_without_openvino_is_torch_quietly_and_explicit_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.ENV_VAR)
    monkeypatch.setattr(openvino_cpu, "available", lambda: openvino_cpu.NOT_INSTALLED)
    model = _net("fsrcnn", 2)
    backend, note = make_backend("auto", model, _fp32())
    assert backend.name == "torch" and note is None
    with pytest.raises(UsageError, match=r"--backend openvino: not installed \(pip install 'upscale-cli\[openvino\]'\)"):
        make_backend("openvino", model, _fp32())


def test_openvino_is_for_the_cpu_and_not_with_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.ENV_VAR)
    model = _net("fsrcnn", 2)
    backend, note = make_backend("auto", model, Setting(CPU, "fp32", True, compile=True))
    assert backend.name == "torch" and "--compile is a PyTorch option" in note
    with pytest.raises(UsageError, match="runs on the CPU, not on cuda"):
        make_backend("openvino", model, Setting(torch.device("cuda"), "fp16", True))


def test_a_model_that_does_not_convert_falls_back_to_torch_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from upscale_cli import export

    def refuse(model, *args, **kwargs):
        raise export.ExportError(f"{model.name}: OpenVINO conversion failed: aten::sparse_coo_tensor")

    monkeypatch.delenv(backends.ENV_VAR)
    monkeypatch.setattr(export, "openvino_model", refuse)
    monkeypatch.setattr(openvino_cpu, "_REFUSED", {})
    up = Upscaler(_net("fsrcnn", 2), device="cpu", backend="auto")
    assert up.backend.name == "torch"
    assert up.backend_note == ("OpenVINO not used (fsrcnn: OpenVINO conversion failed: aten::sparse_coo_tensor); "
                               "running on PyTorch")
    monkeypatch.setattr(export, "openvino_model", lambda *a, **k: pytest.fail("converted again"))
    with pytest.raises(UsageError, match="^--backend openvino: fsrcnn: OpenVINO conversion failed"):
        Upscaler(_net("fsrcnn", 2), device="cpu", backend="openvino")  # remembered: not tried again


@pytest.mark.parametrize(("name", "scale"), SMALL_NETS)
def test_openvino_equals_pytorch_fp32(name: str, scale: int) -> None:
    pytest.importorskip("openvino")
    model = _net(name, scale)
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
    ref = Upscaler(model, device="cpu", precision="fp32", backend="torch", tile=0).upscale(x)
    ov = Upscaler(model, device="cpu", precision="fp32", backend="openvino", tile=24, tile_overlap=4)
    assert ov.backend.name == "openvino"
    tiled_ref = Upscaler(model, device="cpu", precision="fp32", backend="torch", tile=24, tile_overlap=4).upscale(x)
    got = ov.upscale(x)  # tiles of one size and a smaller last batch: one compiled model serves both
    assert float((got - tiled_ref).abs().max()) <= 1e-4
    assert got.shape == ref.shape


def _openvino_error(model, size: tuple[int, int], precision: str) -> float:
    """Max abs difference of OpenVINO in ``precision`` from PyTorch fp32, whole image."""
    x = torch.rand(3, *size, generator=torch.Generator().manual_seed(2))
    ref = Upscaler(model, device="cpu", precision="fp32", backend="torch", tile=0).upscale(x)
    got = Upscaler(model, device="cpu", precision=precision, backend="openvino", tile=0).upscale(x)
    return float((got - ref).abs().max())


def test_the_shipped_default_model_runs_on_openvino() -> None:
    """``default`` resizes its chroma with the MATLAB bicubic: its exportable form must hold."""
    pytest.importorskip("openvino")
    assert _openvino_error(load_model("default", 4), (30, 41), "fp32") <= 1e-4


def test_the_converted_model_is_cached_by_weights_and_openvino_version(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from upscale_cli import export

    calls = []
    real = export.openvino_model
    monkeypatch.setattr(export, "openvino_model", lambda m, *a, **k: calls.append(m.name) or real(m, *a, **k))
    model = _net("fsrcnn", 2)
    first = Upscaler(model, device="cpu", precision="fp32", backend="openvino", tile=0)
    key = openvino_cpu.weights_key(model)
    assert (openvino_cpu.ir_dir() / f"{key}.xml").is_file() and (openvino_cpu.ir_dir() / f"{key}.bin").is_file()
    x = torch.rand(3, 20, 20)
    monkeypatch.setattr(openvino_cpu, "_COMPILED", type(openvino_cpu._COMPILED)())  # a new process
    second = Upscaler(model, device="cpu", precision="fp32", backend="openvino", tile=0)
    assert calls == ["fsrcnn"]  # read back, not converted again
    torch.testing.assert_close(second.upscale(x), first.upscale(x), rtol=0, atol=0)
    other = _net("fsrcnn", 2)
    with torch.no_grad():
        next(other.module.parameters()).add_(1.0)
    assert openvino_cpu.weights_key(other) != key  # other weights, other IR
    monkeypatch.setattr("openvino.__version__", "0.0-test")
    assert openvino_cpu.weights_key(model) != key  # another OpenVINO converts again


def test_openvino_bf16_hint_stays_close() -> None:
    pytest.importorskip("openvino")
    assert _openvino_error(_net("fsrcnn", 2), (32, 32), "bf16") < 0.05


class _Broken:
    """A backend whose first tile of every batch comes out NaN."""

    name = "broken"

    def __init__(self, inner: TorchBackend) -> None:
        self.inner = inner

    def __call__(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        y[0] = float("nan")
        return y


def test_non_finite_tiles_of_any_backend_are_redone_in_pytorch_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.engine as engine

    real = engine.make_backend
    monkeypatch.setattr(engine, "make_backend", lambda *a: (_Broken(real(*a)[0]), None))
    model = _net("fsrcnn", 2)
    x = torch.rand(3, 40, 40)
    got = Upscaler(model, device="cpu", precision="fp32", tile=24, tile_overlap=4, batch_size=2).upscale(x)
    monkeypatch.setattr(engine, "make_backend", real)
    want = Upscaler(model, device="cpu", precision="fp32", tile=24, tile_overlap=4, batch_size=2).upscale(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_compile_runs_the_network_through_torch_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile``: compiled once per Upscaler (dynamo's ``eager`` backend here: no C++ build)."""
    from upscale_cli.backends import pytorch

    compiled = []

    def spy(fn, **kwargs):
        compiled.append(fn)
        return torch.compile(fn, backend="eager")

    monkeypatch.setattr(pytorch, "_compile", spy)
    model = _net("fsrcnn", 2)
    x = torch.rand(3, 40, 40)
    up = Upscaler(model, device="cpu", precision="fp32", backend="torch", compile=True, tile=24, tile_overlap=4)
    got = up.upscale(x)
    assert len(compiled) == 1
    want = Upscaler(model, device="cpu", precision="fp32", backend="torch", tile=24, tile_overlap=4).upscale(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_cli_flags_reach_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import Image
    from test_cli import run

    src = tmp_path / "a.png"
    Image.new("RGB", (12, 10), (40, 90, 200)).save(src)
    seen = {}
    real = Upscaler.__init__

    def spy(self, model, options=None, /, **kw):
        seen.update(backend=options.backend, compile=options.compile)
        real(self, model, options, **kw)

    monkeypatch.setattr(Upscaler, "__init__", spy)
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--backend", "torch", "-o", tmp_path / "o.png"], capfd)
    assert code == 0, err
    assert seen == {"backend": "torch", "compile": False}
    code, _, err = run([src, "--model", "bicubic", "--scale", "2", "--backend", "tpu", "-o", tmp_path / "p.png"], capfd)
    assert code == 2 and "unknown backend 'tpu'" in err and not (tmp_path / "p.png").exists()


# --- measured precision costs reach the engine ------------------------------------------------


def test_manifest_precision_cost_reaches_the_model_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from upscale_cli import devices
    from upscale_cli.weights import manifest_entry

    model = load_model("default", 4)
    recorded = manifest_entry("default", 4)["precision_cost"]
    assert model.precision_cost == {p: m["db"] for p, m in recorded.items()}
    expected = "bf16" if recorded["bf16"]["db"] <= devices.MAX_COST_DB else "fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert Upscaler(model, device="cpu", backend="torch").precision == expected
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert Upscaler(model, device="cpu", backend="torch").precision == "fp32"


def test_precision_cost_from_a_files_metadata(tmp_path: Path) -> None:
    from upscale_cli.weights import save_weights

    model = _net("fsrcnn", 2)
    cost = {"bf16": {"db": 0.03, "device": "cpu", "measured_on": "test"}}
    save_weights(tmp_path / "f.safetensors", model.module.state_dict(), name="mine", arch="fsrcnn",
                 kwargs=dict(model.kwargs), scales=[2], scale=2, convention=model.convention,
                 extra={"precision_cost": cost})
    loaded = load_model(weights=str(tmp_path / "f.safetensors"))
    assert loaded.precision_cost == {"bf16": 0.03}
    assert "loses 0.030 dB on Set5 in bf16" in Upscaler(loaded, device="cpu", precision="bf16").precision_note
