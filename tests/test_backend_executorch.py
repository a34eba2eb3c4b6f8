"""The executorch_export recipe and the runner's ExecuTorch backend, on the tiny Llama.

The tiny model is built into .pte programs for real (fp32 and 8da8w) and run by the backend the
runner uses; transformers on the same weights is the reference, so a program, a KV cache or a
position marker that computes something else fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinymodel import build_on_tiny

pytest.importorskip("executorch", reason="the ExecuTorch backend needs the executorch package (pip install executorch)")
pytest.importorskip("torchao", reason="the executorch_export recipe quantizes with torchao (pip install torchao)")

from edgegate.errors import BuildError
from edgegate.runner.backends import BACKENDS
from edgegate.runner.backends.executorch import ExecuTorchBackend
from edgegate.variants.base_models import BaseModel
from edgegate.variants.recipes import executorch_export as recipe
from edgegate.variants.recipes._context import BuildContext

PROMPT = [5, 17, 42, 99, 7, 3, 250, 64, 11, 8]
OTHER_PROMPT = [200, 31, 9, 77, 150, 2, 64]
TOLERANCE = 1e-4  # fp32 logits of the tiny model, XNNPACK against torch (seen: 5e-7)
MAX_CACHE_LEN = 64


def _build(tiny_model_dir: Path, out: Path, **params: Any) -> dict[str, Any]:
    """The recipe's build as the factory runs it, on the tiny transformers folder."""
    files = tuple(sorted(p for p in tiny_model_dir.iterdir() if p.is_file()))
    out.mkdir(parents=True)
    context = BuildContext(BaseModel(tiny_model_dir, None, files), None, out,
                           {**recipe.DEFAULTS, "max_cache_len": MAX_CACHE_LEN, **params}, lambda line: None)
    return recipe.build(context)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_cache: Path) -> tuple[Path, dict[str, Any]]:
    """Built by the factory into the session's cache (tests/test_runtimes_end_to_end.py measures the
    same build through pytest)."""
    artifact = build_on_tiny(tmp_path_factory.mktemp("executorch"), tiny_model_dir, shared_cache,
                             f"{{fp32: {{recipe: executorch_export, params: {{max_cache_len: {MAX_CACHE_LEN}}}}}}}")["fp32"]
    return artifact.model, artifact.manifest["facts"]


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    """transformers' logits [positions, vocab] for the whole sequence, without a cache."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].numpy()


def open_backend(path: Path) -> ExecuTorchBackend:
    return BACKENDS["executorch"](str(path), [], 1)


def greedy(backend: ExecuTorchBackend, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """(the sequence, the last logits of the prompt and of each greedy step), one token a step."""
    logits, past, _ = backend.step(np.asarray([prompt], dtype=np.int64), backend.empty_past(), 0)
    sequence, found = list(prompt), [np.array(logits[0, -1])]
    for _ in range(steps):
        sequence.append(int(np.argmax(found[-1])))
        logits, past, _ = backend.step(np.asarray([sequence[-1:]], dtype=np.int64), past, len(sequence) - 1)
        found.append(np.array(logits[0, -1]))
    return sequence, found


def test_fp32_program_computes_torch_logits_at_every_position(fp32: tuple[Path, dict], torch_model: Any) -> None:
    path, facts = fp32
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "model.pte", "tokenizer.json"]
    assert facts["precision"] == "fp32" and facts["max_cache_len"] == MAX_CACHE_LEN
    assert "top-1 agreement 1.00" in facts["load_check"]
    assert facts["xnnpack_partitions"] >= 1
    backend = open_backend(path)
    logits, past, elapsed_ns = backend.step(np.asarray([PROMPT], dtype=np.int64), backend.empty_past(), 0)
    assert logits.dtype == np.float32 and logits.shape == (1, len(PROMPT), torch_model.config.vocab_size)
    assert np.max(np.abs(logits[0] - torch_logits(torch_model, PROMPT))) < TOLERANCE
    assert past.length == len(PROMPT) and elapsed_ns > 0


def test_kv_cache_over_12_greedy_steps_equals_torch(fp32: tuple[Path, dict], torch_model: Any) -> None:
    sequence, found = greedy(open_backend(fp32[0]), PROMPT, 12)
    expected = torch_logits(torch_model, sequence)
    for step, have in enumerate(found):
        position = len(PROMPT) - 1 + step
        assert np.max(np.abs(have - expected[position])) < TOLERANCE, f"step {step} differs from torch"
    assert [int(np.argmax(expected[len(PROMPT) - 1 + i])) for i in range(12)] == sequence[len(PROMPT):]


def test_a_new_prefill_after_a_decode_sees_nothing_of_the_old_sequence(fp32: tuple[Path, dict],
                                                                       torch_model: Any) -> None:
    backend = open_backend(fp32[0])
    greedy(backend, PROMPT, 12)  # leaves 22 positions of another sequence in the static cache
    assert len(OTHER_PROMPT) < len(PROMPT) + 12
    sequence, found = greedy(backend, OTHER_PROMPT, 3)
    expected = torch_logits(torch_model, sequence)
    for step, have in enumerate(found):
        assert np.max(np.abs(have - expected[len(OTHER_PROMPT) - 1 + step])) < TOLERANCE


def test_two_backends_in_one_process_keep_their_own_cache(fp32: tuple[Path, dict], torch_model: Any) -> None:
    first, second = open_backend(fp32[0]), open_backend(fp32[0])
    logits, past, _ = first.step(np.asarray([PROMPT], dtype=np.int64), first.empty_past(), 0)
    second.step(np.asarray([OTHER_PROMPT + OTHER_PROMPT], dtype=np.int64), second.empty_past(), 0)
    token = int(np.argmax(logits[0, -1]))
    logits, _, _ = first.step(np.asarray([[token]], dtype=np.int64), past, len(PROMPT))
    assert np.max(np.abs(logits[0, -1] - torch_logits(torch_model, PROMPT + [token])[-1])) < TOLERANCE


def test_stale_positions_and_overflow_are_refused(fp32: tuple[Path, dict]) -> None:
    backend = open_backend(fp32[0])
    _, old, _ = backend.step(np.asarray([PROMPT], dtype=np.int64), backend.empty_past(), 0)
    backend.step(np.asarray([OTHER_PROMPT], dtype=np.int64), backend.empty_past(), 0)
    with pytest.raises(RuntimeError, match="newest position"):
        backend.step(np.asarray([[1]], dtype=np.int64), old, old.length)
    with pytest.raises(ValueError, match="static KV cache of 64"):
        backend.step(np.zeros((1, MAX_CACHE_LEN + 1), dtype=np.int64), backend.empty_past(), 0)


def test_settings_name_the_runtime_and_its_threads(fp32: tuple[Path, dict]) -> None:
    settings = open_backend(fp32[0]).settings()
    assert settings["runtime"] == "ExecuTorch" and settings["delegate"] == "XNNPACK"
    assert settings["version"].startswith("1.") and settings["max_sequence_length"] == MAX_CACHE_LEN
    if "numpy" not in settings["python_runtime"]:
        assert settings["threads"] == 1  # the pool was resized to the one thread asked for


def test_8da8w_builds_and_stays_close_to_fp32(tmp_path: Path, tiny_model_dir: Path, torch_model: Any,
                                              fp32: tuple[Path, dict]) -> None:
    facts = _build(tiny_model_dir, tmp_path / "8da8w", quantization="8da8w")
    assert facts["precision"] == "int8" and "per output channel" in facts["scheme"]
    assert "top-1 agreement with torch fp32" in facts["load_check"]
    assert facts["weight_bytes_per_token"] < 0.3 * fp32[1]["weight_bytes_per_token"]
    sequence, found = greedy(open_backend(tmp_path / "8da8w" / recipe.MODEL_FILE), PROMPT, 6)
    expected = torch_logits(torch_model, sequence)
    agree = [int(np.argmax(have)) == int(np.argmax(expected[len(PROMPT) - 1 + i])) for i, have in enumerate(found)]
    assert sum(agree) >= 5  # of 7
    quantized = (tmp_path / "8da8w" / recipe.MODEL_FILE).stat().st_size
    assert quantized < 0.7 * fp32[0].stat().st_size


def test_weight_bytes_count_the_head_whole_and_one_embedding_row(torch_model: Any) -> None:
    import copy

    model = copy.deepcopy(torch_model)
    from edgegate.variants import export

    export.untie_lm_head(model)
    every = sum(p.numel() * 4 for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    assert recipe.weight_bytes_per_token(model) == every - embedding.numel() * 4 + embedding.shape[1] * 4
    recipe.quantize(model, "8da4w", 32)
    head = model.get_output_embeddings().weight
    assert recipe.stored_bytes(head) == head.numel() // 2 + head.numel() // 32 * 2  # int4, bf16 scale a group


def test_load_check_fails_the_build_on_wrong_logits(fp32: tuple[Path, dict], torch_model: Any) -> None:
    path = fp32[0]
    context = BuildContext(BaseModel(path.parent, None, ()), None, path.parent, dict(recipe.DEFAULTS),
                           lambda line: None)
    ids = PROMPT * 4
    reference = torch_logits(torch_model, ids)
    assert "top-1 agreement 1.00" in recipe._load_check(context, ids, reference)
    with pytest.raises(BuildError, match="differ from torch"):
        recipe._load_check(context, ids, reference + np.float32(0.05))
    quantized = BuildContext(context.base, None, path.parent, {**recipe.DEFAULTS, "quantization": "8da8w"},
                             lambda line: None)
    with pytest.raises(BuildError, match="agrees with the fp32 model"):
        recipe._load_check(quantized, ids, -reference)


def test_bad_parameters_are_config_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    from edgegate.errors import ConfigError

    with pytest.raises(ConfigError, match="quantization"):
        _build(tiny_model_dir, tmp_path / "bad", quantization="int3")
    with pytest.raises(ConfigError, match="group_size"):
        _build(tiny_model_dir, tmp_path / "odd", quantization="8da4w", group_size=48)
