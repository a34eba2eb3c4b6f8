"""The litert_export recipe and the LiteRT backend, on the tiny Llama built for real.

The recipe converts the tiny model with litert-torch (fp32, and int8 weights); the checks run the
written files through the runner's backend and compare with transformers on the same weights:
the prefill signatures (padded, exact and chunked), the score signature behind
``window_logits``, and the KV cache carried over greedy decode steps.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinymodel import build_on_tiny
from edgegate.runner.backends import BACKENDS
from edgegate.runner.backends.litert import LiteRTBackend
from edgegate.variants.base_models import BaseModel
from edgegate.variants.recipes import RECIPES, litert_export
from edgegate.variants.recipes._context import BuildContext

pytest.importorskip("ai_edge_litert", reason="the LiteRT backend needs ai-edge-litert (pip install ai-edge-litert==2.3.0)")
pytest.importorskip("litert_torch", reason="the litert_export recipe needs litert-torch (pip install litert-torch==0.10.0)")

PARAMS = {"prefill_lengths": [8, 16], "score_length": 32, "cache_length": 64}  # small: the tiny model is quick
BOUND = 1e-4  # fp32 logits vs torch; the tiny model's logits are about 1 in size
PROMPT = [5, 17, 42, 99, 7, 3, 250, 64, 11, 8]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_cache: Path) -> dict[str, Any]:
    """fp32 and int8, built by the factory into the session's cache (tests/test_runtimes_end_to_end.py
    measures the same fp32 build through pytest)."""
    flow = ", ".join(f"{k}: {v}" for k, v in PARAMS.items())
    artifacts = build_on_tiny(tmp_path_factory.mktemp("litert"), tiny_model_dir, shared_cache,
                              f"{{fp32: {{recipe: litert_export, params: {{{flow}}}}}, "
                              f"int8: {{recipe: litert_export, params: {{{flow}, quantization: dynamic_wi8_afp32}}}}}}")
    return {name: (artifact.folder, artifact.manifest["facts"]) for name, artifact in artifacts.items()}


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    """Logits [positions, vocab] of transformers on the whole sequence."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def backend(built: dict[str, Any], name: str) -> LiteRTBackend:
    return LiteRTBackend(str(built[name][0] / "model.tflite"), [], 1)


def test_the_recipe_is_found_and_names_its_runtime() -> None:
    assert RECIPES["litert_export"] is litert_export
    assert litert_export.RUNTIME == "litert" and litert_export.MODEL_FILE == "model.tflite"
    assert BACKENDS["litert"] is LiteRTBackend


def test_builds_write_the_model_and_the_tokenizer_and_pass_their_load_check(built: dict[str, Any]) -> None:
    for name, (folder, facts) in built.items():
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.tflite", "tokenizer.json"]
        assert facts["precision"] == name
        assert facts["signatures"] == {"prefill_8": 8, "prefill_16": 16, "score_32": 32, "decode": 1}
    assert "max |diff|" in built["fp32"][1]["load_check"]
    assert "top-1 agreement" in built["int8"][1]["load_check"]


def test_weight_bytes_per_token_counts_the_tiny_models_weights(built: dict[str, Any], torch_model: Any) -> None:
    # The tiny model's head is tied to its embedding, so a decode step reads the whole table.
    parameters = sum(p.numel() for p in torch_model.parameters())
    assert built["fp32"][1]["weight_bytes_per_token"] == pytest.approx(4 * parameters, rel=0.01)
    assert built["int8"][1]["weight_bytes_per_token"] < 0.35 * built["fp32"][1]["weight_bytes_per_token"]


@pytest.mark.parametrize("length", [5, 8, 16, 20])  # padded, exact, exact, chunked (16 then 4 padded to 8)
def test_prefill_logits_match_torch(built: dict[str, Any], torch_model: Any, length: int) -> None:
    ids = (PROMPT * 3)[:length]
    lite = backend(built, "fp32")
    logits, _, elapsed_ns = lite.step(np.asarray([ids], dtype=np.int64), lite.empty_past(), 0)
    assert logits.shape == (1, 1, 384) and logits.dtype == np.float32 and elapsed_ns > 0
    assert np.max(np.abs(logits[0, -1] - torch_logits(torch_model, ids)[-1])) < BOUND


@pytest.mark.parametrize("length", [32, 20, 40])  # the score length, padded, chunked over the cache
def test_window_logits_match_torch_at_every_position(built: dict[str, Any], torch_model: Any, length: int) -> None:
    ids = (PROMPT * 5)[:length]
    window = backend(built, "fp32").window_logits(np.asarray([ids], dtype=np.int64))
    assert window.shape == (length, 384)
    assert np.max(np.abs(window - torch_logits(torch_model, ids))) < BOUND


def test_kv_cache_carries_over_12_greedy_steps(built: dict[str, Any], torch_model: Any) -> None:
    lite = backend(built, "fp32")
    logits, past, _ = lite.step(np.asarray([PROMPT], dtype=np.int64), lite.empty_past(), 0)  # padded to 16
    sequence = list(PROMPT)
    for step in range(12):
        expected = torch_logits(torch_model, sequence)[-1]
        assert np.max(np.abs(logits[0, -1] - expected)) < BOUND, f"step {step}: logits differ from torch"
        token = int(np.argmax(logits[0, -1]))
        assert token == int(np.argmax(expected)), f"step {step}: greedy token differs from torch"
        logits, past, _ = lite.step(np.asarray([[token]], dtype=np.int64), past, len(sequence))
        sequence.append(token)


def test_a_sequence_past_the_cache_is_refused(built: dict[str, Any]) -> None:
    lite = backend(built, "fp32")
    with pytest.raises(ValueError, match="do not fit the model's KV cache of 64"):
        lite.step(np.asarray([[1]], dtype=np.int64), lite.empty_past(), 64)
    with pytest.raises(ValueError, match="do not fit"):
        lite.step(np.asarray([PROMPT], dtype=np.int64), lite.empty_past(), 60)


def test_int8_is_smaller_and_close_to_fp32(built: dict[str, Any]) -> None:
    fp32, int8 = backend(built, "fp32"), backend(built, "int8")
    sizes = {name: (folder / "model.tflite").stat().st_size for name, (folder, _) in built.items()}
    assert sizes["int8"] < 0.8 * sizes["fp32"]  # the tiny model's file is half signatures, not weights
    assert int8.settings()["quantized_weights"].split()[0] != "none"
    assert fp32.settings()["quantized_weights"].startswith("none")
    ids = np.asarray([(PROMPT * 4)[:32]], dtype=np.int64)
    ours, theirs = int8.window_logits(ids), fp32.window_logits(ids)
    assert 0 < np.max(np.abs(ours - theirs)) < 0.5 * np.max(np.abs(theirs))
    assert np.mean(np.argmax(ours, axis=1) == np.argmax(theirs, axis=1)) >= 0.75


def test_settings_name_the_runtime_and_the_cache(built: dict[str, Any]) -> None:
    import importlib.metadata

    settings = backend(built, "fp32").settings()
    assert settings["runtime"] == "LiteRT" and settings["version"] == importlib.metadata.version("ai-edge-litert")
    assert settings["threads"] == 1
    assert settings["signatures"] == {"prefill_8": 8, "prefill_16": 16, "decode": 1, "score_32": 32}
    assert settings["cache_length"] == 64
    assert "K [1, 2, 64, 16], V transposed [1, 2, 16, 64]" in settings["kv_cache"]
    assert settings["window_logits"].startswith("score_32")


def test_the_tensorflow_stand_in_is_gone_after_the_build(built: dict[str, Any]) -> None:
    assert "tensorflow" not in sys.modules or hasattr(sys.modules["tensorflow"], "__version__")


def test_bad_params_are_config_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    from edgegate.errors import ConfigError

    files = tuple(sorted(p for p in tiny_model_dir.iterdir() if p.is_file()))
    for wrong in ({"quantization": "int3"}, {"prefill_lengths": 128}, {"cache_length": 16}):
        params = {**litert_export.DEFAULTS, **PARAMS, **wrong}
        context = BuildContext(BaseModel(tiny_model_dir, None, files), None, tmp_path, params, lambda line: None)
        with pytest.raises(ConfigError, match=next(iter(wrong))):
            litert_export.build(context)
