from __future__ import annotations

from pathlib import Path

from edgegate.report import render_run
from edgegate.store import HistoryStore, RunInfo


def make_run(tmp_path: Path, variant: str = "int4") -> HistoryStore:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.start_run(RunInfo("r1", "2026-01-01T00:00:00Z", "abc123", ("suite_x.yaml",), ("local",), {}))
    store.append_results([
        {"run_id": "r1", "suite": "x", "device": "local", "variant": variant, "metric": "decode_ms", "value": 12.5,
         "unit": "ms", "n": 3, "p50": 12.5, "p90": 13, "p99": 13.4, "ci_low": 12, "ci_high": 13},
        {"run_id": "r1", "suite": "x", "device": "local", "variant": variant, "metric": "power_w", "value": None,
         "unit": "W", "note": "unavailable: no sensor"},
    ])
    store.append_verdict({"run_id": "r1", "time": "t", "suite": "x", "device": "local", "variant": variant,
                          "passed": False, "breaches": ["decode_ms = 12.5 ms > limit 10"]})
    store.finish_run("r1", "2026-01-01T00:01:00Z", 1)
    return store


def test_report_shows_verdict_values_and_reasons(tmp_path: Path) -> None:
    path = render_run(make_run(tmp_path), "r1", tmp_path / "reports")
    html = path.read_text()
    assert path == tmp_path / "reports" / "runs" / "r1.html"
    assert (tmp_path / "reports" / "latest.html").read_text() == html
    assert 'id="overall" class="verdict blocked"' in html
    assert "decode_ms = 12.5 ms &gt; limit 10" in html
    assert "12.50" in html and "unavailable: no sensor" in html
    assert "n=3, 95% CI of median [12.00, 13.00]" in html


def test_values_are_escaped(tmp_path: Path) -> None:
    html = render_run(make_run(tmp_path, variant="<script>alert(1)</script>"), "r1", tmp_path / "reports").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
