"""Nightly gating on the tiny model: A/A passes, an injected slowdown fails, a missing baseline is said."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def nightly(pytester: pytest.Pytester, cache: Path, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("suites/", "--device", "local", "--edgegate-cache", str(cache),
                                         "-p", "no:cacheprovider", "-s", *extra)


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wider and deeper than the tiny model, so a decode step takes milliseconds, not microseconds:
    the tiny model's 0.2 ms steps moved +40-55% between two processes measuring the same build."""
    from tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("small") / "small_model", hidden=512, layers=6)


@pytest.fixture
def gated_project(tiny_project: Path, small_model_dir: Path) -> Path:
    """The tiny suite on the small model, with enough decode samples for a rank test."""
    shutil.rmtree(tiny_project / "suites" / "tiny_model")
    shutil.copytree(small_model_dir, tiny_project / "suites" / "tiny_model")
    suite = tiny_project / "suites" / "suite_tiny.yaml"
    text = suite.read_text().split("# The tiny model's")[0].replace(
        "decode: {prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}",
        "decode: {prompt_tokens: 8, tokens: 16, warmup: 2, min_samples: 160, max_samples: 160, target_ci: 0}",
    ).replace("prefill: {prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}",
              "prefill: {prompt_tokens: 16, warmup: 2, min_samples: 40, max_samples: 40, target_ci: 0}")
    # A small model's millisecond calls still moved 15-30% between two processes measuring the same
    # build on this 2-core machine, so this suite allows 60% and the test injects +100%; the
    # default suite allows 5% and bench/bench_gate.py measures its false-alarm and detection rates.
    rules = "regressions: {decode_ms: {max_change: 0.60}, prefill_ms: {max_change: 0.60}, ttft_ms: {max_change: 0.60}}\n"
    suite.write_text(text + rules)
    return tiny_project


def test_aa_passes_then_an_injected_slowdown_fails_against_the_baseline(
        pytester: pytest.Pytester, gated_project: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = nightly(pytester, shared_cache)
    first.assert_outcomes(passed=3)
    first.stdout.fnmatch_lines(["*fp32 on local: no baseline yet, thresholds only*"])
    same = nightly(pytester, shared_cache, "--junitxml=aa.xml")
    same.assert_outcomes(passed=3)  # the same build measured twice: noise alone fails nothing
    monkeypatch.setenv("EDGEGATE_INJECT_SLOWDOWN", "1.0")
    slow = nightly(pytester, shared_cache)
    assert slow.ret == 1
    slow.stdout.fnmatch_lines(["*decode_ms regressed: * ms (+*%, limit +60%), Mann-Whitney U p=* < 0.01 vs baseline *"])
    assert "Traceback" not in slow.stdout.str()
    properties = {p.get("name") for p in ET.parse(gated_project / "aa.xml").iter("property")}
    assert {"edgegate.decode_ms", "edgegate.perplexity", "edgegate.size_mb"} <= properties


def test_no_gate_records_but_fails_nothing(pytester: pytest.Pytester, gated_project: Path, shared_cache: Path) -> None:
    suite = gated_project / "suites" / "suite_tiny.yaml"
    suite.write_text(suite.read_text().replace("perplexity: {max_ratio: 1.5}", "perplexity: {max_ratio: 0.5}"))
    gated = nightly(pytester, shared_cache)
    gated.assert_outcomes(passed=1, failed=2)  # the reference passes; both variants break the budget
    gated.stdout.fnmatch_lines(["*int4 on local: perplexity = * > limit * (0.5 x reference *)*"])
    exploring = nightly(pytester, shared_cache, "--no-gate")
    exploring.assert_outcomes(passed=3)
    assert os.path.exists(gated_project / "reports" / "latest.html")


def test_a_rebuilt_variant_decodes_side_by_side_with_the_baseline_build(
        pytester: pytest.Pytester, gated_project: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = gated_project / "suites" / "suite_tiny.yaml"
    # Night-to-night latency rules off: only the side-by-side ratio can fail a variant here.
    light = suite.read_text().split("regressions:")[0].replace("min_samples: 160, max_samples: 160", "min_samples: 16, "
                                                               "max_samples: 16").replace("min_samples: 40, max_samples: 40", "min_samples: 3, max_samples: 3")
    suite.write_text(light + "regressions: {decode_ms: false, prefill_ms: false, ttft_ms: false}\n")
    nightly(pytester, shared_cache).assert_outcomes(passed=3)
    suite.write_text(suite.read_text().replace("params: {block_size: 32}", "params: {block_size: 16}"))
    monkeypatch.setenv("EDGEGATE_INJECT_SLOWDOWN", "1.0")  # slows tonight's build only, not the baseline's
    rebuilt = nightly(pytester, shared_cache)
    rebuilt.assert_outcomes(passed=2, failed=1)  # fp32 and int8 are the baseline's builds: nothing to pair
    rebuilt.stdout.fnmatch_lines([
        "*fp32 on local: decode not paired: same build as baseline run *",
        "*int4 on local: decode_vs_baseline regressed: 1 -> * x (+*%, limit +3%), Wilcoxon signed-rank p=* < 0.01"
        " over 12 rounds, against the build of run *",
    ])
