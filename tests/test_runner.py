"""The on-device runner, run as a real subprocess through the local transport."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgegate.errors import RunnerError
from edgegate.profiles import DeviceProfile
from edgegate.transport import LocalTransport

pytestmark = pytest.mark.slow
RUNNER = Path(__file__).resolve().parent.parent / "harness" / "runner"


def run(job: dict, tmp_path: Path) -> list[dict]:
    transport = LocalTransport(DeviceProfile(name="local", path=tmp_path / "p.yaml", transport="local",
                                             python="auto", work_dir=str(tmp_path)))
    return list(transport.run_job(job, timeout_s=120))


def job_for(model: Path, windows: list[list[int]], **accuracy: str) -> dict:
    prompt = windows[0][:10]
    return {"model": str(model), "providers": ["CPUExecutionProvider"], "threads": 1, "measurements": {
        "prefill": {"prompt_ids": prompt, "warmup": 1, "repetitions": 3},
        "decode": {"prompt_ids": prompt, "tokens": 3, "warmup": 0, "repetitions": 2},
        "accuracy": {"windows": windows, **accuracy}}}


def metrics(events: list[dict]) -> dict:
    return {e["name"]: e for e in events if e["event"] == "metric"}


def test_perplexity_matches_torch_and_self_kl_is_zero(tiny_artifacts: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    windows = [list(range(5, 37)), list(range(40, 72))]
    saved = tmp_path / "ref.npy"
    first = metrics(run(job_for(tiny_artifacts["fp32"].model, windows, save_logprobs=str(saved)), tmp_path))
    again = metrics(run(job_for(tiny_artifacts["fp32"].model, windows, reference_logprobs=str(saved)), tmp_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        losses = [model(torch.tensor([w]), labels=torch.tensor([w])).loss.item() for w in windows]
    assert first["perplexity"]["value"] == pytest.approx(float(np.exp(np.mean(losses))), rel=1e-4)
    assert again["kl_mean"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert again["top1_agreement"]["value"] == 1.0
    assert len(first["decode_ms"]["samples"]) == 6 and len(first["prefill_ms"]["samples"]) == 3


def test_quantized_variant_differs_from_reference(tiny_artifacts: dict, tmp_path: Path) -> None:
    windows = [list(range(5, 37))]
    saved = tmp_path / "ref.npy"
    run(job_for(tiny_artifacts["fp32"].model, windows, save_logprobs=str(saved)), tmp_path)
    int4 = metrics(run(job_for(tiny_artifacts["int4"].model, windows, reference_logprobs=str(saved)), tmp_path))
    assert 0 < int4["kl_mean"]["value"] <= int4["kl_max"]["value"]
    assert int4["size_mb"]["value"] < 0.7 * metrics(run(job_for(tiny_artifacts["fp32"].model, windows), tmp_path))["size_mb"]["value"]


def test_failed_measurement_is_reported_and_others_go_on(tiny_artifacts: dict, tmp_path: Path) -> None:
    job = job_for(tiny_artifacts["fp32"].model, [list(range(5, 37))], reference_logprobs=str(tmp_path / "missing.npy"))
    events = run(job, tmp_path)
    errors = [e for e in events if e["event"] == "error"]
    assert [e["measurement"] for e in errors] == ["accuracy"]
    assert "missing.npy" in errors[0]["message"]
    assert {"decode_ms", "prefill_ms", "perplexity"} <= set(metrics(events))


def test_unloadable_model_raises_with_the_runner_output(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RunnerError, match="runner on local exited with 1"):
        run(job_for(bad, [list(range(5, 37))]), tmp_path)


def test_runner_imports_nothing_else_from_edgegate() -> None:
    for source in RUNNER.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in ("edgegate", "harness"), source
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                pytest.fail(f"{source.name} reaches outside the runner package")
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in ("edgegate", "harness") for a in node.names), source


def test_peak_rss_is_the_runners_own_not_its_parents(tiny_artifacts: dict, tmp_path: Path) -> None:
    ballast = np.ones(800 * 1024 * 1024 // 8)  # 800 MB touched in this (parent) process
    events = run(job_for(tiny_artifacts["fp32"].model, [list(range(5, 37))]), tmp_path)
    peak = metrics(events)["peak_rss_mb"]["value"]
    assert 10 < peak < 600, peak  # a runner with a tiny model needs ~100 MB; ru_maxrss would say > 800
    assert ballast[-1] == 1.0


def test_kl_over_the_reference_top_tokens_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below() -> None:
    from edgegate.runner.accuracy import kl_to_reference, top_k

    rng = np.random.default_rng(5)
    ref_logits, var_logits = rng.normal(0, 3, (40, 500)), rng.normal(0, 3, (40, 500))
    ref = ref_logits - np.log(np.exp(ref_logits).sum(axis=1, keepdims=True))
    var = var_logits - np.log(np.exp(var_logits).sum(axis=1, keepdims=True))
    exact = (np.exp(ref) * (ref - var)).sum(axis=1)
    whole = dict(zip(("indices", "logprobs"), top_k(ref, k=500)))
    assert np.allclose(kl_to_reference(whole, var), exact, atol=1e-9)
    head = dict(zip(("indices", "logprobs"), top_k(ref, k=20)))
    bucketed = kl_to_reference(head, var)
    assert np.all(bucketed <= exact + 1e-9) and np.all(bucketed > 0.5 * exact)
    assert np.all(head["indices"][:, 0] == np.argmax(ref, axis=1))


def test_accuracy_intervals_cover_the_value_and_name_their_unit(tiny_artifacts: dict, tmp_path: Path) -> None:
    windows = [list(range(5 + 40 * i, 37 + 40 * i)) for i in range(4)]
    saved = tmp_path / "ref.npz"
    run(job_for(tiny_artifacts["fp32"].model, windows, save_logprobs=str(saved)), tmp_path)
    int4 = metrics(run(job_for(tiny_artifacts["int4"].model, windows, reference_logprobs=str(saved)), tmp_path))
    for name in ("perplexity", "kl_mean", "kl_max", "top1_agreement"):
        event = int4[name]
        assert event["ci_low"] <= event["value"] <= event["ci_high"], (name, event)
        assert event["ci_unit"] == "bootstrap over 4 windows of 31 predictions"
    assert int4["perplexity"]["ci_low"] < int4["perplexity"]["ci_high"]
    ratio = int4["perplexity"]
    assert ratio["ratio_ci_low"] <= ratio["ratio"] <= ratio["ratio_ci_high"]
    reference = metrics(run(job_for(tiny_artifacts["fp32"].model, windows), tmp_path))["perplexity"]["value"]
    assert ratio["ratio"] == pytest.approx(ratio["value"] / reference, rel=1e-4)
    # paired windows: the ratio's interval is narrower than the variant's own interval, relatively
    assert (ratio["ratio_ci_high"] - ratio["ratio_ci_low"]) / ratio["ratio"] < \
        (ratio["ci_high"] - ratio["ci_low"]) / ratio["value"]
