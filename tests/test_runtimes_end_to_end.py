"""One suite over the tiny model on every runtime, through pytest: built by each runtime's recipe,
measured by each runtime's backend in the runner, judged against the same ONNX fp32 reference
on the same token ids, and compared in the report's runtime x precision table."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUNTIME_MODULES = {"ai_edge_litert": "LiteRT", "litert_torch": "LiteRT's converter", "litert_lm": "LiteRT-LM",
                   "executorch": "ExecuTorch", "torchao": "ExecuTorch's quantizer", "llama_cpp": "llama.cpp"}
MISSING = [f"{label} ({module})" for module, label in RUNTIME_MODULES.items() if importlib.util.find_spec(module) is None]
if MISSING:
    pytest.skip(f"not installed: {', '.join(MISSING)} (make runtimes)", allow_module_level=True)

# Lossless conversions are held to the reference within 1%; quantized ones only to sanity bounds.
SUITE = """\
schema: 1
name: tiny_runtimes
base_model: {kind: hf_dir, path: tiny_model}
reference: ort_fp32
variants:
  ort_fp32: {recipe: export_fp32}
  litert_fp32: {recipe: litert_export, params: {prefill_lengths: [8, 16], score_length: 32, cache_length: 64}}
  executorch_fp32: {recipe: executorch_export, params: {max_cache_len: 64}}
  gguf_f32: {recipe: gguf_quantize, params: {type: F32}}
  gguf_q8_0:
    recipe: gguf_quantize
    params: {type: Q8_0}
    thresholds: {perplexity: {max_ratio: 1.2}, top1_agreement: {min: 0.5}}
  litertlm_int8:
    recipe: litert_lm_bundle
    params: {LITERTLM_PARAMS}
    thresholds: {perplexity: {max_ratio: 1.2}}
measurements:
  prefill: {prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}
  decode: {prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}
  accuracy: {windows: 2, window_tokens: 32}
thresholds:
  perplexity: {max_ratio: 1.01}
  top1_agreement: {min: 0.95}
regressions: {decode_ms: false, prefill_ms: false, ttft_ms: false}
"""
LITERTLM_PARAMS = "prefill_lengths: [8, 16]"
VARIANTS = ("ort_fp32", "litert_fp32", "executorch_fp32", "gguf_f32", "gguf_q8_0", "litertlm_int8")


def test_every_runtime_is_measured_judged_and_compared(pytester: pytest.Pytester, tiny_project: Path,
                                                       shared_cache: Path) -> None:
    (tiny_project / "suites" / "suite_tiny.yaml").write_text(SUITE.replace("LITERTLM_PARAMS", LITERTLM_PARAMS))
    result = pytester.runpytest_subprocess("suites/", "--device", "local", "--edgegate-cache", str(shared_cache),
                                           "-p", "no:cacheprovider", timeout=1500)
    result.assert_outcomes(passed=len(VARIANTS))
    # LiteRT-LM gives no logits: the suite's top-1 limit does not apply to it, and says why
    result.stdout.fnmatch_lines(["*litertlm_int8 on local: top1_agreement limits not judged: unavailable: LiteRT-LM*"])
    with sqlite3.connect(tiny_project / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT variant, metric, value, note FROM results").fetchall()
    values = {(variant, metric): (value, note) for variant, metric, value, note in rows}
    for variant in VARIANTS:
        for metric in ("size_mb", "prefill_ms", "ttft_ms", "decode_ms", "decode_tok_s", "peak_rss_mb", "perplexity"):
            assert values.get((variant, metric), (None,))[0] is not None, (variant, metric, values.get((variant, metric)))
    for variant in VARIANTS[1:4]:  # lossless: the same next token as the reference nearly everywhere
        assert values[(variant, "top1_agreement")][0] >= 0.95 and values[(variant, "kl_mean")][0] < 0.01
    kl, note = values[("litertlm_int8", "kl_mean")]
    assert kl is None and note.startswith("unavailable: ") and "LiteRT-LM" in note
    report = (tiny_project / "reports" / "latest.html").read_text()
    assert "Runtimes" in report
    for label in ("ONNX Runtime", "LiteRT", "LiteRT-LM", "ExecuTorch", "llama.cpp"):
        assert f">{label}<" in report, label
