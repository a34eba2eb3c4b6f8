"""The int8 recipes on the tiny Llama: what each one writes, and the `variants` command line."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgegate.cli import variants as variants_cli
from edgegate.errors import ConfigError
from edgegate.runner.backends import OnnxRuntimeBackend
from edgegate.suites import load_suite
from edgegate.variants.factory import VariantFactory
from edgegate.variants.graph_passes import mlp_down_projections

pytestmark = pytest.mark.slow

SUITE = """\
schema: 1
name: int8s
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  dyn_channel: {recipe: int8_dynamic, params: {per_channel: true}}
  dyn_keep_down: {recipe: int8_dynamic, params: {keep_fp32: [mlp_down]}}
  weight_only: {recipe: int8_weight_only}
  static: {recipe: int8_static, params: {calibration_windows: 2, window_tokens: 32, method: MinMax}}
  static_too_long: {recipe: int8_static, params: {calibration_windows: 100000, window_tokens: 32}}
"""


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_cache: Path) -> VariantFactory:
    root = tmp_path_factory.mktemp("int8s")
    shutil.copytree(tiny_model_dir, root / "tiny_model")
    (root / "suite_int8s.yaml").write_text(SUITE)
    return VariantFactory(load_suite(root / "suite_int8s.yaml"), shared_cache)


def build(factory: VariantFactory, name: str):  # noqa: ANN201 - an Artifact
    return factory.artifact(factory.suite.variant(name))


def weight_matmuls(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def logits(model: Path, ids: np.ndarray) -> np.ndarray:
    backend = OnnxRuntimeBackend(str(model), ["CPUExecutionProvider"], threads=1)
    return backend.step(ids, backend.empty_past(), 0)[0]


def test_mlp_down_projections_found_by_graph_shape(factory: VariantFactory) -> None:
    model = onnx.load(str(build(factory, "fp32").model))
    config_layers = len([n for n in model.graph.node if n.op_type == "Pow"]) - 1  # one RMS norm per half-layer + final
    down = mlp_down_projections(model)
    assert len(down) == config_layers // 2
    weights = weight_matmuls(model)
    hidden = weights[down[0]].dims[1]
    assert all(weights[name].dims[0] == 2 * hidden and weights[name].dims[1] == hidden for name in down)


def test_per_channel_dynamic_keeps_weights_to_seven_bits(factory: VariantFactory) -> None:
    artifact = build(factory, "dyn_channel")
    assert artifact.manifest["facts"]["reduce_range"] is True
    model = onnx.load(str(artifact.model))
    quantized = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized")]
    signed = [q for q in quantized if q.dtype == np.int8]  # MatMul weights; the embedding is uint8 per tensor
    assert signed and max(int(np.abs(q.astype(np.int32)).max()) for q in signed) <= 64


def test_keep_fp32_leaves_the_down_projections_unquantized(factory: VariantFactory) -> None:
    fp32 = onnx.load(str(build(factory, "fp32").model))
    kept = onnx.load(str(build(factory, "dyn_keep_down").model))
    assert set(weight_matmuls(kept)) == set(mlp_down_projections(fp32))
    assert build(factory, "dyn_keep_down").manifest["facts"]["kept_fp32"] == len(mlp_down_projections(fp32))


def test_weight_only_int8_is_closer_to_fp32_than_dynamic(factory: VariantFactory) -> None:
    ids = np.arange(3, 40, dtype=np.int64)[None, :]
    reference = logits(build(factory, "fp32").model, ids)
    weight_only = build(factory, "weight_only")
    nodes = onnx.load(str(weight_only.model)).graph.node
    assert all(a.i == 8 for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits")
    assert weight_only.manifest["facts"]["quantized_ops"]["Gather (uint8)"] == 1  # the embedding, in 8 bits too
    error_weight_only = np.abs(logits(weight_only.model, ids) - reference).max()
    error_dynamic = np.abs(logits(build(factory, "dyn_keep_down").model, ids) - reference).max()
    assert 0 < error_weight_only < error_dynamic


def test_static_qdq_is_calibrated_and_runs(factory: VariantFactory) -> None:
    artifact = build(factory, "static")
    ops = artifact.manifest["facts"]["quantized_ops"]
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert artifact.manifest["facts"]["calibration_windows"] == 2
    ids = np.arange(3, 40, dtype=np.int64)[None, :]
    assert np.isfinite(logits(artifact.model, ids)).all()


def test_too_little_calibration_text_names_the_field(factory: VariantFactory) -> None:
    with pytest.raises(ConfigError, match=r"suite_int8s.yaml.*variants.static_too_long.params.calibration_windows"):
        build(factory, "static_too_long")


def test_variants_cli_lists_then_builds(factory: VariantFactory, tmp_path: Path) -> None:
    lines: list[str] = []
    suite = factory.suite.path
    args = argparse.Namespace(action="list", suite=suite, cache=tmp_path)
    variants_cli.run(args, lines.append)
    assert lines[-1].count("not built") == len(factory.suite.variants)
    variants_cli.run(argparse.Namespace(action="build", suite=suite, cache=tmp_path, only=["fp32"]), lines.append)
    assert any(line.startswith("  building export_fp32") for line in lines)
    lines.clear()
    variants_cli.run(args, lines.append)
    fp32_row = next(line for line in lines[-1].splitlines() if line.startswith("fp32"))
    assert "not built" not in fp32_row and factory.planned(factory.suite.variant("fp32"))[0][:16] in fp32_row
