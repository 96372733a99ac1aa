"""ONNX and OpenVINO export (issue 17): dynamic sizes, metadata, checks, the ``upscale export`` command.

Numeric checks run the exported graph at a size (and batch) other than the export's and compare
with PyTorch fp32 within 1e-4.  Every registry family is traced (the tracer OpenVINO's
``convert_model`` and the ONNX exporter use) and run at another size; the OpenVINO conversion
itself is exercised on a few small nets, as converting all 32 families takes about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from upscale_cli import export as ex
from upscale_cli.commands import export as export_cmd
from upscale_cli.loader import load_model
from upscale_cli.models import Arch, LoadedModel, list_archs, list_specs

SMALL = ["fsrcnn", "espcn", "realesr-animevideov3", "default"]
"""Zoo nets exported in full: Y-only (bicubic chroma in the graph), RGB (Compact, srvgg), and the packaged model."""


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here on one intra-op thread (2-core CI machines)."""


def _model(name: str) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(name, pretrained=name == "default", progress=False)


def _x(h: int, w: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(1))


def _ours(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", SMALL)
def test_onnx_dynamic_sizes_match_torch(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _model(name)
    result = ex.write_onnx(model, tmp_path / "m.onnx", side=32)
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] <= ex.TOLERANCE
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _x(21, 38, batch=3)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    want = _ours(model, x)
    assert got.shape == want.shape == (3, 3, 21 * model.scale, 38 * model.scale)
    assert (got - want).abs().max().item() < 1e-4


def test_onnx_metadata_and_opset(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = _model("default")
    ex.write_onnx(model, tmp_path / "m.onnx", side=16)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["scale"] == str(model.scale)
    assert meta["input_convention"] == "RGB, NCHW, float32"
    assert meta["value_range"] == "0..1 in, 0..1 out (not clamped)"
    assert meta["size_multiple"] == "1"
    assert meta["model"] == "default"
    assert meta["weights_sha256"] == model.sha256 and len(model.sha256 or "") == 64
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {ex.ONNX_OPSET}
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]


@pytest.mark.parametrize("name", ["espcn", "default"])
def test_openvino_ir_round_trip(name: str, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    model = _model(name)
    result = ex.write_openvino(model, tmp_path / "m.xml", side=32)
    assert result["max_abs_diff"] <= ex.TOLERANCE
    assert (tmp_path / "m.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no staging left behind
    read = ov.Core().read_model(str(tmp_path / "m.xml"))
    assert read.get_rt_info(["upscale_cli", "scale"]).astype(str) == str(model.scale)
    assert read.get_rt_info(["upscale_cli", "input_convention"]).astype(str) == "RGB, NCHW, float32"
    compiled = ov.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _x(27, 19)
    got = torch.from_numpy(compiled(x.numpy())[0])
    assert (got - _ours(model, x)).abs().max().item() < 1e-4


def test_openvino_model_has_dynamic_batch_and_spatial_shapes() -> None:
    pytest.importorskip("openvino")
    ov_model = ex.openvino_model(_model("fsrcnn"), example_side=16)
    shape = ov_model.inputs[0].get_partial_shape()
    assert shape[1].get_length() == 3
    assert all(shape[i].is_dynamic for i in (0, 2, 3))
    assert ov_model.inputs[0].get_names() == {"input"} and ov_model.outputs[0].get_names() == {"output"}


def _family_model(arch: Arch) -> LoadedModel:
    if arch.test_configs:
        kwargs, scale = arch.test_configs[0]
        kwargs = {**arch.default_kwargs, **kwargs}
    else:
        kwargs, scale = dict(arch.default_kwargs), next((s.scales[0] for s in list_specs() if s.arch == arch.name), 2)
    torch.manual_seed(0)
    return LoadedModel(arch.name, arch, arch.build(scale=scale, **kwargs).eval(), scale, kwargs)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("arch", list_archs(), ids=lambda a: a.name)
def test_every_family_traces_with_dynamic_sizes(arch: Arch) -> None:
    """The traced graph (what OpenVINO and the ONNX exporter convert) holds at another size and batch."""
    model = _family_model(arch)
    side = ex.traced_side(model, 16)
    with torch.no_grad():
        traced = torch.jit.trace(ex.export_module(model), _x(side, side, batch=1), check_trace=False)
        h, w = ex.check_side(model, side)
        x = _x(h, w)
        got = traced(x)
    assert (got - _ours(model, x)).abs().max().item() < 1e-4


def test_size_multiple_model_exports_for_multiples(tmp_path: Path) -> None:
    """SwinIR-style window models: H and W multiples of size_multiple, stored in the metadata."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _family_model(next(a for a in list_archs() if a.name == "swinir"))
    m = model.size_multiple
    assert m > 1
    ex.write_onnx(model, tmp_path / "s.onnx", side=2 * m)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert meta["size_multiple"] == str(m)
    x = _x(3 * m, 5 * m)
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (got - _ours(model, x)).abs().max().item() < 1e-4


class _BakesItsSize(torch.nn.Module):
    """An RGB net whose output uses the input width as a Python int: the trace bakes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2.0) * (int(x.shape[-1]) / 16)


def _baking_model() -> LoadedModel:
    arch = next(a for a in list_archs() if a.name == "srvgg")
    return LoadedModel("bakes", arch, _BakesItsSize(), 2, {})


def test_graph_wrong_at_other_sizes_is_an_export_error(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ex.ExportError) as err:
        ex.write_onnx(_baking_model(), tmp_path / "b.onnx", side=16)
    assert "\n" not in str(err.value) and str(err.value).startswith("bakes: ONNX Runtime output differs")
    assert list(tmp_path.iterdir()) == []


def test_openvino_wrong_graph_is_an_export_error() -> None:
    pytest.importorskip("openvino")
    with pytest.raises(ex.ExportError, match=r"^bakes: OpenVINO output differs"):
        ex.openvino_model(_baking_model(), example_side=16)


def test_conversion_failure_is_one_line_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator aten::foo\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ex.ExportError) as err:
        ex.write_onnx(_model("fsrcnn"), tmp_path / "f.onnx")
    assert str(err.value) == "fsrcnn: ONNX export failed: unsupported operator aten::foo"
    assert err.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ex.importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name))
    with pytest.raises(ex.UsageError, match=r"pip install 'upscale-cli\[openvino\]'"):
        ex.openvino_model(_model("fsrcnn"))


# --- the command ---------------------------------------------------------------------------


def _cli(args: list[str]) -> Any:
    app = typer.Typer()
    export_cmd.register(app)
    app.command("noop", hidden=True)(lambda: None)  # a group of two, so the subcommand name is parsed
    return CliRunner().invoke(app, ["export", *args])


def test_cli_writes_onnx_with_default_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    result = _cli(["default", "--format", "onnx"])
    assert result.exit_code == 0, result.output
    name = "default_x4.onnx"  # the main command's default scale
    assert (tmp_path / name).is_file()
    line = result.stdout.strip()
    assert "\n" not in line and name in line and f"opset {ex.ONNX_OPSET}" in line


def test_cli_openvino_json(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    result = _cli(["default", "--format", "openvino", "-o", str(tmp_path / "f.xml"), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["format"] == "openvino" and facts["max_abs_diff"] <= ex.TOLERANCE
    assert (tmp_path / "f.xml").is_file() and (tmp_path / "f.bin").is_file()


def test_cli_bad_model_name_is_usage_error(tmp_path: Path) -> None:
    result = _cli(["no-such-model", "--format", "onnx", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "no-such-model" in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite_and_wrong_suffix(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"keep")
    result = _cli(["default", "--format", "onnx", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "x.onnx").read_bytes() == b"keep"
    result = _cli(["default", "--format", "openvino", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "ends in .xml" in result.output


def test_cli_failing_conversion_one_line_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Exporting the operator 'aten::bar' is not supported\nmore")

    monkeypatch.setattr(torch.onnx, "export", fail)
    result = _cli(["default", "--format", "onnx", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: default: ONNX export failed: Exporting the operator 'aten::bar' is not supported"
    ]
    assert list(tmp_path.iterdir()) == []
