"""Verdicts that mean what they say, on the tiny model: known blocks as xfail, device limits that
apply only to what a suite measures, accuracy with intervals, and suites written in Python."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import write_tiny_suite

pytestmark = pytest.mark.slow


def run_suite(pytester: pytest.Pytester, cache: Path, *extra: str, path: str = "suites/") -> pytest.RunResult:
    return pytester.runpytest_subprocess(path, "--device", "local", "--edgegate-cache", str(cache),
                                         "-p", "no:cacheprovider", "-rxX", *extra)


def expect_int4(root: Path, thresholds: str, expect: str) -> None:
    suite = write_tiny_suite(root, int4_thresholds=thresholds)
    text = suite.read_text()
    marker = "int4: {recipe: int4_weight_only, params: {block_size: 32}"
    suite.write_text(text.replace(marker, f"{marker}, expect: {expect}"))


def verdict_rows(root: Path) -> list[tuple]:
    with sqlite3.connect(root / "reports" / "history.sqlite") as db:
        return db.execute("SELECT variant, verdict, expected FROM verdicts ORDER BY rowid").fetchall()


def test_a_variant_blocked_as_expected_is_xfail_and_the_run_exits_0(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    expect_int4(tiny_project, "size_mb: {max_ratio: 0.01}", '{blocked: "int4 is larger than 1% of fp32"}')
    result = run_suite(pytester, shared_cache)
    result.assert_outcomes(passed=2, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*XFAIL*int4*expected blocked: int4 is larger than 1% of fp32*"])
    assert ("int4", "blocked", "int4 is larger than 1% of fp32") in verdict_rows(tiny_project)
    page = (tiny_project / "reports" / "latest.html").read_text()
    assert "as expected (xfail): int4 is larger than 1% of fp32" in page and "size_mb = " in page


def test_an_expected_block_that_ships_is_xpass_and_fails_when_strict(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    expect_int4(tiny_project, "", '{blocked: "thought too big"}')
    run_suite(pytester, shared_cache).assert_outcomes(passed=2, xpassed=1)
    expect_int4(tiny_project, "", '{blocked: "thought too big", strict: true}')
    strict = run_suite(pytester, shared_cache)
    strict.assert_outcomes(passed=2, failed=1)
    strict.stdout.fnmatch_lines(["*XPASS(strict)*thought too big*"])


def test_an_expected_block_still_fails_when_it_regresses_against_its_own_baseline(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    expect_int4(tiny_project, "top1_agreement: {min: 1.01}", '{blocked: "never agrees 101%"}')
    run_suite(pytester, shared_cache).assert_outcomes(passed=2, xfailed=1)  # its baseline: blocked as expected
    suite = tiny_project / "suites" / "suite_tiny.yaml"
    # a smaller block size is a rebuild whose file is larger: size_mb regresses against the baseline
    text = suite.read_text().replace("params: {block_size: 32}", "params: {block_size: 16}")
    suite.write_text(text.replace("regressions: {", "regressions: {size_mb: {max_change: 0.001}, "))
    rebuilt = run_suite(pytester, shared_cache)
    rebuilt.assert_outcomes(passed=2, failed=1)
    rebuilt.stdout.fnmatch_lines(["*int4 on local: size_mb regressed: *"])


def test_a_device_limit_on_a_metric_the_suite_does_not_measure_is_a_warning_not_a_failure(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from test_minilm import TINY_ENCODER_SUITE, build_tiny_sentence_encoder

    build_tiny_sentence_encoder(tiny_project / "suites" / "tiny_encoder")
    (tiny_project / "suites" / "suite_tiny_encoder.yaml").write_text(TINY_ENCODER_SUITE)
    profile = tiny_project / "device_profiles" / "local.yaml"
    profile.write_text(profile.read_text() + "thresholds:\n  decode_ms: {max: 250}\n  peak_rss_mb: {max: 4000}\n")
    result = run_suite(pytester, shared_cache)
    result.assert_outcomes(passed=7)
    assert "cannot be checked" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*{profile}: thresholds.decode_ms: suite tiny-encoder (sentence_embedding) does "
                                 "not measure decode_ms; the limit does not apply to its items*"])


def test_accuracy_metrics_carry_their_intervals_into_history_and_report(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    run_suite(pytester, shared_cache).assert_outcomes(passed=3)
    with sqlite3.connect(tiny_project / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT variant, metric, value, ci_low, ci_high, note FROM results WHERE metric IN "
                          "('perplexity', 'kl_mean', 'kl_max', 'top1_agreement')").fetchall()
    assert {(v, m) for v, m, *_ in rows} >= {("fp32", "perplexity"), ("int4", "kl_mean"), ("int4", "top1_agreement")}
    for variant, metric, value, low, high, note in rows:
        assert low <= value <= high, (variant, metric, low, value, high)
        assert "bootstrap over 2 windows of 31 predictions" in note
    page = (tiny_project / "reports" / "latest.html").read_text()
    low, high = next((low, high) for v, m, _, low, high, _ in rows if (v, m) == ("int4", "perplexity"))
    assert f"95% interval {low:.4g}-{high:.4g}" in page


PYTHON_SUITE = '''
from pathlib import Path

from edgegate.suites import load_suite


def test_int4_within_budget(edgegate_run, edgegate_devices):
    suite = load_suite(Path(__file__).parent / "suites" / "suite_tiny.yaml")
    for device in edgegate_devices:
        verdict = edgegate_run.judge(suite, device, suite.variant("int4"))
        assert verdict.outcome == "ship", verdict.messages(device.name, "int4")
'''


def test_a_suite_written_in_python_starts_records_and_reports_a_run(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    (tiny_project / "test_python_suite.py").write_text(PYTHON_SUITE)
    result = run_suite(pytester, shared_cache, path="test_python_suite.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*EdgeGate*", "*report: *"])
    with sqlite3.connect(tiny_project / "reports" / "history.sqlite") as db:
        runs = db.execute("SELECT run_id, finished_at FROM runs").fetchall()
        verdicts = db.execute("SELECT variant, verdict FROM verdicts").fetchall()
    assert len(runs) == 1 and runs[0][1] is not None
    assert ("int4", "ship") in verdicts and ("fp32", "ship") not in verdicts  # only what the test judged
    assert (tiny_project / "reports" / "latest.html").exists()
