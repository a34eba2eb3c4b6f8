"""The whole path on the tiny model: collect a suite, build, measure, gate, record, report."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import write_tiny_suite

pytestmark = pytest.mark.slow


def run_suite(pytester: pytest.Pytester, cache: Path, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("suites/", "--device", "local", "--edgegate-cache", str(cache), "-p", "no:cacheprovider", *extra)


def test_suite_passes_records_and_reports(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    result = run_suite(pytester, shared_cache)
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    history = tiny_project / "reports" / "history.sqlite"
    with sqlite3.connect(history) as db:
        rows = db.execute("SELECT variant, metric, value, note FROM results").fetchall()
        verdicts = db.execute("SELECT variant, passed FROM verdicts").fetchall()
    metrics = {(variant, metric) for variant, metric, _, _ in rows}
    for variant in ("fp32", "int8", "int4"):
        for metric in ("size_mb", "prefill_ms", "decode_ms", "decode_tok_s", "peak_rss_mb", "perplexity"):
            assert (variant, metric) in metrics
    assert ("int4", "kl_mean") in metrics and ("fp32", "kl_mean") not in metrics
    power = [note for _, metric, value, note in rows if metric == "power_w"]
    assert power and all(note.startswith("unavailable: no sensor") for note in power)
    assert sorted(verdicts) == [("fp32", 1), ("int4", 1), ("int8", 1)]
    latest = (tiny_project / "reports" / "latest.html").read_text()
    assert "int4" in latest and "unavailable: no sensor" in latest
    assert '<small class="limit">limit &lt;= ' in latest  # thresholds shown next to the values
    assert len(list((tiny_project / "reports" / "runs").glob("*.html"))) == 1
    (bench_file,) = (tiny_project / "reports" / "benchmarks" / "edgegate-local").glob("0001_*.json")
    names = {b["name"] for b in json.loads(bench_file.read_text())["benchmarks"]}
    assert {"decode_ms[int4]", "prefill_ms[fp32]"} <= names


def test_second_run_builds_nothing(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    run_suite(pytester, shared_cache).assert_outcomes(passed=3)
    second = run_suite(pytester, shared_cache, "-v")  # -v: a build would say "building"
    second.assert_outcomes(passed=3)
    assert "[edgegate] building" not in second.stdout.str() and "[edgegate] built" not in second.stdout.str()


def test_broken_threshold_fails_only_that_variant(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    write_tiny_suite(tiny_project, int4_thresholds="size_mb: {max_ratio: 0.01}")
    result = run_suite(pytester, shared_cache)
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*int4 on local: size_mb = * MB > limit * (0.01 x reference *)*"])
    assert "Traceback" not in result.stdout.str()
    with sqlite3.connect(tiny_project / "reports" / "history.sqlite") as db:
        failed = db.execute("SELECT variant FROM verdicts WHERE passed = 0").fetchall()
    assert failed == [("int4",)]
    assert "size_mb" in (tiny_project / "reports" / "latest.html").read_text()


def test_unknown_device_lists_registered_ones(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    result = pytester.runpytest_subprocess("suites/", "--device", "nope", "--edgegate-cache", str(shared_cache))
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown device 'nope'; registered devices: local*"])


def test_bad_suite_field_names_file_and_field(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    suite = tiny_project / "suites" / "suite_tiny.yaml"
    suite.write_text(suite.read_text().replace("min_samples: 3", "min_samples: three"))
    result = run_suite(pytester, shared_cache)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*suite_tiny.yaml: measurements.prefill.min_samples: expected a number, got str 'three'*"])
    assert "Traceback" not in result.stdout.str()


def test_a_planted_secret_reaches_no_output(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "planted-Secret-4711"
    monkeypatch.setenv("EDGEGATE_SSH_PASSPHRASE", secret)
    result = run_suite(pytester, shared_cache, "--junitxml=junit.xml")
    result.assert_outcomes(passed=3)
    outputs = [tiny_project / "reports" / "history.sqlite", tiny_project / "junit.xml",
               *(tiny_project / "reports").rglob("*.html"), *(tiny_project / "reports").rglob("*.json")]
    for path in outputs:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout.str() + result.stderr.str()


def test_a_user_template_replaces_the_report(pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path) -> None:
    templates = tiny_project / "my-templates"
    templates.mkdir()
    (templates / "report.html.j2").write_text("<html><body>{{ overall }}: {% for r in rows %}{{ r.variant }} {% endfor %}</body></html>")
    run_suite(pytester, shared_cache, "--edgegate-templates", str(templates)).assert_outcomes(passed=3)
    assert (tiny_project / "reports" / "latest.html").read_text() == "<html><body>ship: fp32 int8 int4 </body></html>"
