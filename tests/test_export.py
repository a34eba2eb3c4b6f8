"""The exporter against torch itself, on the tiny model: same logits, prefill and decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegate.variants.graph_passes import fold_transposed_weights

pytestmark = pytest.mark.slow


def torch_logits(model_dir: Path, ids: np.ndarray, past_len: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits[:, past_len:].numpy()


def onnx_step(session: ort.InferenceSession, ids: np.ndarray, past: dict, past_len: int) -> tuple[np.ndarray, dict]:
    feeds = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], past_len + ids.shape[1]), np.int64), **past}
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds)))
    present = {n.replace("present.", "past_key_values."): v for n, v in outputs.items() if n.startswith("present.")}
    return outputs["logits"], present


def empty_past(session: ort.InferenceSession, batch: int) -> dict:
    return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}


def test_exported_graph_matches_torch_with_kv_cache(tiny_artifacts: dict, tiny_model_dir: Path) -> None:
    session = ort.InferenceSession(str(tiny_artifacts["fp32"].model), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(3, 300, size=(2, 12)).astype(np.int64)
    prefill, past = onnx_step(session, ids[:, :9], empty_past(session, 2), 0)
    decode, _ = onnx_step(session, ids[:, 9:], past, 9)
    expected = torch_logits(tiny_model_dir, ids, 0)
    np.testing.assert_allclose(prefill, expected[:, :9], atol=1e-4)
    np.testing.assert_allclose(decode, expected[:, 9:], atol=1e-4)


def test_lm_head_is_a_plain_matmul_the_quantizers_can_see(tiny_artifacts: dict) -> None:
    graph = onnx.load(str(tiny_artifacts["fp32"].model))
    inits = {i.name: i for i in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    logits_node = producers["logits"]
    assert logits_node.op_type == "MatMul" and logits_node.input[1] in inits
    quantized = onnx.load(str(tiny_artifacts["int4"].model))
    assert producers_of(quantized)["logits"].op_type == "MatMulNBits"


def producers_of(graph: onnx.ModelProto) -> dict:
    return {out: node for node in graph.graph.node for out in node.output}


def test_fold_transposed_weights_keeps_the_result() -> None:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "Wt"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.ones((2, 3), np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_transposed_weights(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)
