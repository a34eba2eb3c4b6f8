"""The llama.cpp backend and the gguf_* recipes on the tiny Llama: logits and KV cache against
torch, the quantizer, the build's facts and checks; and the CMAKE_ARGS for building llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgegate import llama_cpp_build
from edgegate.errors import BuildError, ConfigError
from edgegate.variants.base_models import BaseModel
from edgegate.variants.recipes import RECIPES
from edgegate.variants.recipes._context import BuildContext
from tinymodel import build_tiny_llama

NEEDS = "llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 (compiled: harness/llama_cpp_build.py)"
SHARE = 1e-3  # F32 logits within this share of torch's largest |logit| (f16 KV cache, flash attention)


def _build(recipe: str, base: BaseModel, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """A recipe's build as the factory runs it (``VariantFactory._run_recipe``), into a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return RECIPES[recipe].build(BuildContext(base, None, out, params, lambda line: None))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny Llama folder, its torch model, and its gguf_quantize builds at F32 and Q8_0."""
    pytest.importorskip("llama_cpp", reason=NEEDS)
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("llama_cpp")
    folder = build_tiny_llama(root / "tiny")
    base = BaseModel(folder, None, tuple(sorted(p for p in folder.iterdir() if p.is_file())))
    built = {t: (root / t, _build("gguf_quantize", base, root / t, {"type": t})) for t in ("F32", "Q8_0")}
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return {"root": root, "base": base, "model": model, "built": built}


def _backend(tiny: dict[str, Any], type_name: str) -> Any:
    from edgegate.runner.backends import BACKENDS

    return BACKENDS["llama_cpp"](str(tiny["built"][type_name][0] / "model.gguf"), [], 1)


def _ids(tiny: dict[str, Any], count: int) -> np.ndarray:
    from edgegate.evaldata import PROMPT_TOPICS, english_text
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny["built"]["F32"][0] / "tokenizer.json"))
    return np.asarray([tokenizer.encode(english_text(PROMPT_TOPICS), add_special_tokens=False).ids[:count]])


def _torch_logits(tiny: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return tiny["model"](torch.from_numpy(ids)).logits[0].numpy()


def test_f32_logits_are_torch_s(tiny: dict[str, Any]) -> None:
    ids = _ids(tiny, 48)
    backend = _backend(tiny, "F32")
    logits, past, elapsed_ns = backend.step(ids, backend.empty_past(), 0)
    expected = _torch_logits(tiny, ids)
    assert logits.shape == (1, 48, expected.shape[1]) and logits.dtype == np.float32 and elapsed_ns > 0
    assert np.abs(logits[0] - expected).max() <= SHARE * np.abs(expected).max()
    assert past.length == 48


def test_kv_cache_over_12_greedy_steps(tiny: dict[str, Any]) -> None:
    prompt = _ids(tiny, 16)
    backend = _backend(tiny, "F32")
    logits, past, _ = backend.step(prompt, backend.empty_past(), 0)
    sequence = prompt[0].tolist()
    for _ in range(12):
        sequence.append(int(np.argmax(logits[0, -1])))
        expected = _torch_logits(tiny, np.asarray([sequence]))[-1]
        logits, past, _ = backend.step(np.asarray([[sequence[-1]]]), past, len(sequence) - 1)
        assert logits.shape == (1, 1, expected.shape[0])
        assert np.abs(logits[0, 0] - expected).max() <= SHARE * np.abs(expected).max()
        assert int(np.argmax(logits[0, 0])) == int(np.argmax(expected))
    torch_greedy = prompt[0].tolist()
    for _ in range(12):
        torch_greedy.append(int(np.argmax(_torch_logits(tiny, np.asarray([torch_greedy]))[-1])))
    assert sequence == torch_greedy


def test_empty_past_starts_again_at_zero_and_a_stale_past_is_refused(tiny: dict[str, Any]) -> None:
    ids = _ids(tiny, 20)
    backend = _backend(tiny, "F32")
    first, past, _ = backend.step(ids, backend.empty_past(), 0)
    _, later, _ = backend.step(ids[:, :1], past, 20)
    again, _, _ = backend.step(ids, backend.empty_past(), 0)
    np.testing.assert_allclose(again, first, atol=1e-5)
    with pytest.raises(ValueError, match="latest past"):
        backend.step(ids[:, :1], later, 21)


def test_two_backends_decode_side_by_side(tiny: dict[str, Any]) -> None:
    """Paired decode: two contexts in one process, steps interleaved, each as it is alone."""
    prompt = _ids(tiny, 12)

    def alone(backend: Any) -> list[np.ndarray]:
        logits, past, _ = backend.step(prompt, backend.empty_past(), 0)
        steps = [logits]
        for i in range(4):
            logits, past, _ = backend.step(np.asarray([[5 + i]]), past, 12 + i)
            steps.append(logits)
        return steps

    expected = {name: alone(_backend(tiny, name)) for name in ("F32", "Q8_0")}
    pair = {name: _backend(tiny, name) for name in ("F32", "Q8_0")}
    state = {name: list(b.step(prompt, b.empty_past(), 0)[:2]) for name, b in pair.items()}
    for i in range(4):
        for name, backend in pair.items():
            state[name] = list(backend.step(np.asarray([[5 + i]]), state[name][1], 12 + i)[:2])
            np.testing.assert_allclose(state[name][0], expected[name][i + 1], atol=1e-5)


def test_q8_0_is_smaller_and_close(tiny: dict[str, Any]) -> None:
    (f32_dir, _), (q8_dir, facts) = tiny["built"]["F32"], tiny["built"]["Q8_0"]
    assert (q8_dir / "model.gguf").stat().st_size < 0.5 * (f32_dir / "model.gguf").stat().st_size
    ids = _ids(tiny, 48)
    backend = _backend(tiny, "Q8_0")
    logits = backend.step(ids, backend.empty_past(), 0)[0][0]
    expected = _torch_logits(tiny, ids)
    assert np.mean(np.argmax(logits, 1) == np.argmax(expected, 1)) >= 0.9
    assert np.abs(logits - expected).max() <= 0.05 * np.abs(expected).max()
    assert facts["precision"] == "int8" and facts["tensor_types"]["Q8_0"] > 0


def test_build_facts_and_files(tiny: dict[str, Any]) -> None:
    import gguf

    out, facts = tiny["built"]["F32"]
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf", "tokenizer.json"]
    assert facts["precision"] == "fp32" and facts["scheme"].startswith("F32")
    assert facts["tokenizer_check"].startswith("identical ids on")
    assert "top-1 agreement 1.000" in facts["load_check"]
    tensors = gguf.GGUFReader(out / "model.gguf").tensors
    assert "output.weight" not in {t.name for t in tensors}  # tied: the embedding is read whole per token
    assert facts["weight_bytes_per_token"] == sum(t.n_bytes for t in tensors)


def test_settings_name_the_runtime_and_the_file(tiny: dict[str, Any]) -> None:
    settings = _backend(tiny, "Q8_0").settings()
    assert settings["runtime"] == "llama.cpp" and settings["version"] == "0.3.36"
    assert settings["file_type"] == "Q8_0" and settings["threads"] == 1 and settings["n_ctx"] >= 257
    assert settings["cpu_features"] and all(isinstance(f, str) for f in settings["cpu_features"])


def test_a_gguf_base_round_trips(tiny: dict[str, Any]) -> None:
    """The F32 file as a GGUF base: copied as is, and dequantized again for Q8_0, both checked."""
    folder = tiny["built"]["F32"][0]
    base = BaseModel(folder, "model.gguf", (folder / "model.gguf",))
    as_is = _build("gguf_as_is", base, tiny["root"] / "as_is", {})
    assert as_is["file_type"] == "F32" and as_is["tokenizer_check"].startswith("identical ids")
    again = _build("gguf_quantize", base, tiny["root"] / "again", {"type": "Q8_0"})
    assert again["weight_bytes_per_token"] == tiny["built"]["Q8_0"][1]["weight_bytes_per_token"]


def test_gguf_as_is_refuses_a_folder_and_quantize_an_unknown_type(tiny: dict[str, Any]) -> None:
    with pytest.raises(BuildError, match="transformers folder"):
        _build("gguf_as_is", tiny["base"], tiny["root"] / "refused", {})
    with pytest.raises(ConfigError, match="must be one of"):
        _build("gguf_quantize", tiny["base"], tiny["root"] / "unknown", {"type": "Q3_X"})


def _options(args: str) -> dict[str, str]:
    return dict(part[2:].split("=") for part in args.split())


def test_cmake_args_follow_the_cpu_flags() -> None:
    xeon = {"sse4_2", "avx", "avx2", "bmi2", "fma", "f16c", "avx512f", "avx512cd", "avx512vl", "avx512dq",
            "avx512bw", "amx_tile", "amx_int8", "amx_bf16"}
    options = _options(llama_cpp_build.cmake_args(xeon))
    assert options["GGML_NATIVE"] == "OFF" and options["GGML_AVX512"] == "ON" and options["GGML_AVX2"] == "ON"
    assert options["GGML_AMX_TILE"] == options["GGML_AMX_INT8"] == options["GGML_AMX_BF16"] == "OFF"
    assert options["LLAMA_BUILD_EXAMPLES"] == options["LLAMA_BUILD_TESTS"] == "OFF"
    laptop = _options(llama_cpp_build.cmake_args(xeon - {"avx512f", "avx512bw", "amx_tile", "amx_int8", "amx_bf16"}))
    assert laptop["GGML_AVX512"] == "OFF" and laptop["GGML_AVX2"] == laptop["GGML_FMA"] == "ON"
    old = _options(llama_cpp_build.cmake_args({"sse4_2", "avx"}))
    assert old["GGML_AVX"] == "ON" and old["GGML_AVX2"] == old["GGML_BMI2"] == old["GGML_F16C"] == "OFF"
    assert set(_options(llama_cpp_build.cmake_args(set())).values()) == {"OFF"}


def test_host_cpu_flags_read_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert llama_cpp_build.host_cpu_flags(cpuinfo) == {"fpu", "avx", "avx2", "fma"}
    assert llama_cpp_build.host_cpu_flags(tmp_path / "absent") == set()
