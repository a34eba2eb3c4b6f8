"""The fused_decoder recipe (onnxruntime-genai's model builder) and the runner's in-place KV loop.

The tiny Llama is built into a GroupQueryAttention graph for real; the checks compare it with the
plain export of the same weights, step by step, so a graph or a KV loop that computes something
else fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tinymodel import build_suite
from edgegate.runner.backends import KvBuffer, KvBufferBackend, OnnxRuntimeBackend
from edgegate.session import decoder_backend

SUITE = """\
schema: 1
name: fused
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  fused_fp32: {recipe: fused_decoder, params: {precision: fp32}}
  fused_int8: {recipe: fused_decoder, params: {precision: int8, block_size: 32}}
"""
PROMPT = [5, 17, 42, 99, 7, 3, 250, 64, 11, 8]


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_cache: Path) -> dict:
    root = tmp_path_factory.mktemp("fused-suite")
    shutil.copytree(tiny_model_dir, root / "tiny_model")
    (root / "suite_fused.yaml").write_text(SUITE)
    return build_suite(root / "suite_fused.yaml", shared_cache)


def greedy_logits(backend: OnnxRuntimeBackend, steps: int) -> list[np.ndarray]:
    """The prompt's last logits, then each greedy step's, copied out."""
    logits, past, _ = backend.step(np.asarray([PROMPT], dtype=np.int64), backend.empty_past(), 0)
    found, length = [np.array(logits[0, -1])], len(PROMPT)
    for _ in range(steps):
        token = np.asarray([[int(np.argmax(found[-1]))]], dtype=np.int64)
        logits, past, _ = backend.step(token, past, length)
        found.append(np.array(logits[0, -1]))
        length += 1
    return found


def test_manifest_records_the_fused_operators(fused: dict) -> None:
    fp32_facts = fused["fused_fp32"].manifest["facts"]
    int8_facts = fused["fused_int8"].manifest["facts"]
    assert fp32_facts["fused_ops"]["GroupQueryAttention"] == 2  # one per layer of the tiny model
    assert fp32_facts["fused_ops"]["SkipSimplifiedLayerNormalization"] >= 2
    assert "MatMulNBits" not in fp32_facts["fused_ops"]
    assert int8_facts["fused_ops"]["MatMulNBits"] == 2 * 5 + 1  # per layer qkv (fused), o, gate, up, down; lm_head
    assert "-p int8" in int8_facts["builder"] and "block_size=32" in int8_facts["builder"]
    assert int8_facts["quantized_ops"] == {"Gather (uint8)": 1}  # the embedding, which the builder keeps in fp32
    assert set(fused["fused_int8"].manifest["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json", "genai_config.json"}
    import onnx

    plain_nodes = len(onnx.load(str(fused["fp32"].model), load_external_data=False).graph.node)
    assert fp32_facts["graph_nodes"] < plain_nodes / 2


def test_fused_graph_decodes_what_the_plain_export_decodes(fused: dict) -> None:
    plain = OnnxRuntimeBackend(str(fused["fp32"].model), ["CPUExecutionProvider"], 1)
    in_place = KvBufferBackend(str(fused["fused_fp32"].model), ["CPUExecutionProvider"], 1)
    expected, got = greedy_logits(plain, 12), greedy_logits(in_place, 12)
    for step, (want, have) in enumerate(zip(expected, got)):
        assert np.max(np.abs(want - have)) < 2e-3, f"step {step}: fused graph differs from the plain export"


def test_kv_cache_is_written_in_place_into_the_bound_buffer(fused: dict) -> None:
    backend = KvBufferBackend(str(fused["fused_fp32"].model), ["CPUExecutionProvider"], 1)
    past = backend.empty_past()
    key = next(iter(past.arrays))
    address = past.arrays[key].ctypes.data
    logits, after, _ = backend.step(np.asarray([PROMPT], dtype=np.int64), past, 0)
    logits, after, _ = backend.step(np.asarray([[int(np.argmax(logits[0, -1]))]], dtype=np.int64), after, len(PROMPT))
    written = np.abs(after.arrays[key][0]).sum(axis=(0, 2))  # per position, over heads and head dims
    assert after is past and after.arrays[key].ctypes.data == address
    assert np.all(written[: len(PROMPT) + 1] > 0) and np.all(written[len(PROMPT) + 1:] == 0)


def test_a_sequence_longer_than_the_buffer_grows_it_and_decodes_the_same(fused: dict,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    roomy = greedy_logits(KvBufferBackend(str(fused["fused_fp32"].model), ["CPUExecutionProvider"], 1), 20)
    monkeypatch.setattr(KvBufferBackend, "CAPACITY", 12)
    cramped = greedy_logits(KvBufferBackend(str(fused["fused_fp32"].model), ["CPUExecutionProvider"], 1), 20)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(roomy, cramped))


def test_kv_buffer_growth_keeps_what_was_written() -> None:
    small = KvBuffer({"past_key_values.0.key": (2, 4)}, 4, np.float32)
    small.arrays["past_key_values.0.key"][:] = 1.0
    bigger = small.grown(9)
    assert bigger.capacity == 16
    assert np.all(bigger.arrays["past_key_values.0.key"][:, :, :4] == 1.0)
    assert np.all(bigger.arrays["past_key_values.0.key"][:, :, 4:] == 0.0)


def test_int8_fused_graph_stays_close_to_fp32(fused: dict) -> None:
    fp32 = greedy_logits(KvBufferBackend(str(fused["fused_fp32"].model), ["CPUExecutionProvider"], 1), 8)
    int8 = greedy_logits(KvBufferBackend(str(fused["fused_int8"].model), ["CPUExecutionProvider"], 1), 8)
    agree = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(fp32, int8)])
    assert agree >= 0.75


def test_session_runs_fused_graphs_with_the_in_place_backend(fused: dict) -> None:
    assert decoder_backend(fused["fused_fp32"]) == "onnxruntime_kv_buffer"
    assert decoder_backend(fused["fp32"]) == "onnxruntime"
