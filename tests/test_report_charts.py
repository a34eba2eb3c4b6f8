"""The report's inline SVG charts and the change-against-baseline cells."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from edgegate.report import charts, render_run
from edgegate.store import HistoryStore, RunInfo


def test_pareto_has_one_circle_per_variant_and_escapes_names() -> None:
    rows = [
        {"variant": "fp32", "decode_ms": 20.0, "perplexity": 8.0, "size_mb": 400.0},
        {"variant": "int8", "decode_ms": 12.0, "perplexity": 8.3, "size_mb": 100.0},
        {"variant": "<script>x</script>", "decode_ms": 9.0, "perplexity": 9.1, "size_mb": 60.0},
    ]
    svg = str(charts.pareto(rows))
    assert svg.startswith("<svg") and "viewBox=" in svg
    assert len(re.findall(r'<circle class="point"', svg)) == 3
    assert "<script>" not in svg
    assert "&lt;script&gt;x&lt;/script&gt;" in svg
    assert "lower-left is better" in svg
    radii = [float(r) for r in re.findall(r'<circle class="point"[^>]* r="([0-9.]+)"', svg)]
    assert abs((radii[0] / radii[1]) ** 2 - 4.0) < 0.01  # area proportional to size: 400 MB vs 100 MB


def test_box_plot_median_line_sits_at_the_median() -> None:
    samples = [0.0, 100.0] + [30.0] * 5 + [50.0] * 3 + [70.0] * 5  # median 50; axis 0..100
    svg = str(charts.latency_distribution({"a": samples}))
    x = float(re.search(r'<line class="median" x1="([0-9.]+)"', svg).group(1))
    left, right = charts.PLOT_LEFT + 60, charts.PLOT_RIGHT  # the box plot's x range
    assert abs(x - (left + 0.5 * (right - left))) < 0.01
    stats = charts.box_stats(samples)
    assert stats["median"] == 50.0 and stats["outliers"] == [0.0, 100.0]
    assert svg.count('class="outlier"') == 2


def test_trend_marks_the_baseline_run() -> None:
    points = [{"run_id": f"r{i}", "variant": "int8", "value": 10 + i} for i in range(5)]
    line = str(charts.trend(points, "r2", runs=[f"r{i}" for i in range(5)]))
    xs = re.findall(r'<line class="baseline" x1="([0-9.]+)"', line)
    assert len(xs) == 1
    scale = charts.Scale([0.0, 4.0], charts.PLOT_LEFT, charts.PLOT_RIGHT - 90)
    assert abs(float(xs[0]) - scale(2)) < 0.01
    ring = str(charts.trend(points, {"int8": "r3"}))
    assert ring.count('class="baseline-ring"') == 1 and "baseline of int8: run r3" in ring
    assert 'class="baseline-ring"' not in str(charts.trend(points, {"int8": "gone"}))


def _results(run_id: str, decode: float, perplexity: float, variant: str = "int8") -> list[dict]:
    return [
        {"run_id": run_id, "suite": "x", "device": "local", "variant": variant, "metric": "decode_ms", "value": decode,
         "unit": "ms", "n": 4, "p50": decode, "p90": decode, "p99": decode, "ci_low": decode, "ci_high": decode,
         "samples": [decode - 1, decode, decode, decode + 1]},
        {"run_id": run_id, "suite": "x", "device": "local", "variant": variant, "metric": "perplexity",
         "value": perplexity, "unit": ""},
        {"run_id": run_id, "suite": "x", "device": "local", "variant": variant, "metric": "size_mb", "value": 50.0,
         "unit": "MB"},
        {"run_id": run_id, "suite": "x", "device": "local", "variant": variant, "metric": "roofline_fraction",
         "value": 0.4, "unit": ""},
        {"run_id": run_id, "suite": "x", "device": "local", "variant": variant, "metric": "power_w", "value": 3.0,
         "unit": "W", "samples": [2.9, 3.0, 3.1]},
    ]


def test_report_has_charts_and_direction_aware_changes(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.start_run(RunInfo("r1", "2026-01-01T00:00:00Z", "a", ("x.yaml",), ("local",), {}))
    store.append_results(_results("r1", decode=10.0, perplexity=8.0))
    store.append_verdict({"run_id": "r1", "time": "t", "suite": "x", "device": "local", "variant": "int8", "passed": True})
    store.finish_run("r1", "2026-01-01T00:01:00Z", 0)
    env = {"baselines": {"x/local/int8": {"run_id": "r1", "reason": "last passing run"}}}
    store.start_run(RunInfo("r2", "2026-01-02T00:00:00Z", "b", ("x.yaml",), ("local",), env))
    store.append_results(_results("r2", decode=12.0, perplexity=7.0))  # slower (worse), lower perplexity (better)
    store.append_verdict({"run_id": "r2", "time": "t", "suite": "x", "device": "local", "variant": "int8", "passed": True})
    store.finish_run("r2", "2026-01-02T00:01:00Z", 0)
    html = render_run(store, "r2", tmp_path / "reports").read_text()
    assert '<h2 id="charts">Charts</h2>' in html and "<svg" in html
    assert "Latency vs accuracy on local" in html and "Decode latency on local" in html
    assert "decode_ms over the last 2 runs" in html and "Power of int8" in html
    assert '<small class="change worse" title="change against the baseline run">+20.0%</small>' in html
    assert '<small class="change better" title="change against the baseline run">-12.5%</small>' in html
    assert '<small class="change same" title="change against the baseline run">+0.0%</small>' in html  # size_mb
    assert 'class="baseline-ring"' in html
    first = render_run(store, "r1", tmp_path / "reports").read_text()  # no baseline: no change text, no error
    assert 'class="change' not in first.split('<table id="metrics"')[1].split("</table>")[0]
    assert "<script src" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_two_hundred_run_history_renders_quickly(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    runs, results = [], []
    for i in range(200):
        run_id = f"r{i:04d}"
        env = {"baselines": {f"x/local/v{v}": {"run_id": "r0190", "reason": "pinned"} for v in range(10)}}
        runs.append((run_id, f"2026-01-01T{i:06d}", None, "c", '["x.yaml"]', '["local"]', 0,
                     json.dumps(env if i == 199 else {}), "main"))
        for v in range(10):
            results += [r for r in _results(run_id, 10.0 + v + i % 3, 8.0 + v / 10, variant=f"v{v}")
                        if r["metric"] != "power_w"]
    for row in results:
        if row["metric"] == "decode_ms":
            row["samples"] = [row["value"] + (k % 8) / 10 for k in range(64)]
    store.append_results(results)
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)", runs)
    started = time.perf_counter()
    html = render_run(store, "r0199", tmp_path / "reports").read_text()
    assert time.perf_counter() - started < 5.0
    assert html.count("<svg") == 5  # pareto, latency boxes, roofline bars, two trends
    assert "over the last 20 runs" in html
