"""Nightly gating on the tiny model: A/A passes, an injected slowdown fails, a missing baseline is said."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cgroups import cpu_cgroup

from edgegate.store import HistoryStore

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
    slow.stdout.fnmatch_lines(["*decode_ms regressed: * ms (+*%, limit +60%), Mann-Whitney U p=* < 0.01 over 10 rounds "
                               "of 16 steps vs 10 rounds of 16 steps vs baseline *"])
    assert "Traceback" not in slow.stdout.str()
    properties = {p.get("name") for p in ET.parse(gated_project / "aa.xml").iter("property")}
    assert {"edgegate.decode_ms", "edgegate.perplexity", "edgegate.size_mb", "edgegate.verdict"} <= properties
    page = (gated_project / "reports" / "latest.html").read_text()
    assert "EDGEGATE_INJECT_SLOWDOWN=1.0 was set" in page and "never chosen as a baseline" in page
    slow.stdout.fnmatch_lines(["*EDGEGATE_INJECT_SLOWDOWN was set: timings were slowed on purpose*"])


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
    verdicts = HistoryStore(gated_project / "reports" / "history.sqlite").frame("verdicts")
    slowed = verdicts[verdicts.variant == "fp32"].iloc[-1]
    assert slowed.passed and slowed.baseline_excluded == "injected slowdown EDGEGATE_INJECT_SLOWDOWN=1"
    rebuilt.stdout.fnmatch_lines([
        "*fp32 on local: decode not paired: same build as baseline run *",
        "*int4 on local: decode_vs_baseline regressed: 1 -> * x (+*%, limit +3%), Wilcoxon signed-rank p=* < 0.01"
        " over 12 rounds, against the build of run *",
    ])


SPIN = "import time\nend = time.time() + 300\nwhile time.time() < end: pass"


@contextmanager
def cpu_hogs() -> Iterator[None]:
    """Two busy processes per CPU for as long as the block runs: a busy CI runner."""
    hogs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_a_contended_rerun_of_an_unchanged_build_is_inconclusive_never_regressed_nor_a_baseline(
        pytester: pytest.Pytester, gated_project: Path, shared_cache: Path) -> None:
    suite = gated_project / "suites" / "suite_tiny.yaml"
    suite.write_text(suite.read_text() + "disturbance: {retries: 1, backoff_s: 0.2}\n")
    nightly(pytester, shared_cache).assert_outcomes(passed=3)  # the clean baseline
    with cpu_hogs():
        busy = nightly(pytester, shared_cache, "--junitxml=busy.xml")
        lenient = nightly(pytester, shared_cache, "--edgegate-inconclusive=pass")
    assert " regressed: " not in busy.stdout.str() and busy.ret == 1
    busy.stdout.fnmatch_lines([
        "*int4 on local: inconclusive: decode_ms = * not judged: its timed region was disturbed (other processes "
        "used *% of the CPU (limit 10%), in each of 2 attempts)*",
        "*verdicts: *inconclusive*"])
    verdicts = {p.get("value") for p in ET.parse(gated_project / "busy.xml").iter("property")
                if p.get("name") == "edgegate.verdict"}
    assert verdicts == {"inconclusive"}
    lenient.assert_outcomes(passed=3)
    quiet = nightly(pytester, shared_cache)
    quiet.assert_outcomes(passed=3)
    store = HistoryStore(gated_project / "reports" / "history.sqlite")
    runs = list(store.frame("runs").run_id)
    quiet.stdout.fnmatch_lines([f"*int4 on local: not a baseline: run {runs[2]}: disturbed: *decode_ms*",
                                f"*int4 on local: not a baseline: run {runs[1]}: disturbed: *decode_ms*"])
    page = (gated_project / "reports" / "latest.html").read_text()
    assert f"{runs[0]} (last clean passing run on main/master)" in page and f"skipped {runs[2]}: disturbed" in page


def test_a_device_slowed_by_a_cpu_quota_regresses_it_is_not_contention(
        pytester: pytest.Pytester, gated_project: Path, shared_cache: Path) -> None:
    group = cpu_cgroup(f"edgegate-test-{os.getpid()}", quota_us=1000, period_us=5000)  # 20% of a CPU, 1 ms at a time
    if group is None:
        pytest.skip("needs root and a cgroup v1 cpu controller (/sys/fs/cgroup/cpu) to give the runner a quota")
    suite = gated_project / "suites" / "suite_tiny.yaml"
    # the quota slows the runner about 5x; what little else runs meanwhile must not decide the test
    suite.write_text(suite.read_text() + "disturbance: {max_contention: 0.3}\n")
    nightly(pytester, shared_cache).assert_outcomes(passed=3)
    wrapper = gated_project / "quota-python"  # the device's python: enters the quota'd group, then runs python
    wrapper.write_text(f"#!/bin/sh\necho $$ > {group}/tasks\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    profile = gated_project / "device_profiles" / "local.yaml"
    profile.write_text(profile.read_text().replace("python: auto", f"python: {wrapper}"))
    try:
        throttled = nightly(pytester, shared_cache)
    finally:
        group.rmdir()
    assert throttled.ret == 1 and "inconclusive" not in throttled.stdout.str()
    # prefill is one long call: a 1 ms-per-5 ms quota always stretches it. A decode step shorter than
    # the 1 ms budget can run unthrottled, so decode regresses only where its steps are longer (seen:
    # +25% at 1.5 ms steps on a fast CPU, under the +60% rule); when it does, it is judged per round.
    throttled.stdout.fnmatch_lines(["*prefill_ms regressed: * ms (+*%, limit +60%), Mann-Whitney U p=* < 0.01 over "
                                    "40 calls vs 40 calls vs baseline *"])
    decode = [line for line in throttled.stdout.lines if "decode_ms regressed" in line]
    assert all("rounds of 16 steps vs" in line for line in decode), decode
