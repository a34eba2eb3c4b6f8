"""How long the HTML report takes to render, and how big it is, over a long synthetic history.

    python bench/bench_report.py [--runs 1000] [--variants 10] [--samples 64] [--repeat 3]

Builds a temporary SQLite history of ``--runs`` runs x (``--variants`` variants x 4 metrics:
decode_ms with raw samples, perplexity, size_mb, roofline_fraction) on one device, the newest run
with a baseline for every variant, renders the newest run ``--repeat`` times and prints the median
render time, the HTML size and the history size.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from edgegate.report import render_run
from edgegate.store import HistoryStore

METRICS = ("decode_ms", "perplexity", "size_mb", "roofline_fraction")


def build_history(path: Path, runs: int, variants: int, samples: int, seed: int = 0) -> tuple[HistoryStore, str]:
    """A history of ``runs`` runs; returns the store and the newest run id (which has baselines)."""
    store = HistoryStore(path)
    rng = np.random.default_rng(seed)
    names = [f"v{i:02d}" for i in range(variants)]
    run_ids = [f"run{i:05d}" for i in range(runs)]
    baseline = run_ids[max(runs - 10, 0)]
    run_rows, result_rows, verdict_rows = [], [], []
    for i, run_id in enumerate(run_ids):
        started = f"2026-01-01T00:00:00Z+{i:06d}"
        environment = {}
        if i == runs - 1:
            environment = {"baselines": {f"s/dev/{name}": {"run_id": baseline, "reason": "last passing run"}
                                         for name in names}}
        run_rows.append((run_id, started, started, "c0ffee", json.dumps(["s.yaml"]), json.dumps(["dev"]), 0,
                         json.dumps(environment), "main"))
        for v, name in enumerate(names):
            decode = rng.normal(10 + v, 0.3, samples)
            values = {"decode_ms": float(np.median(decode)), "perplexity": 8 + v * 0.2 + rng.normal(0, 0.05),
                      "size_mb": 100.0 + 40 * v, "roofline_fraction": min(1.0, 0.3 + 0.05 * v + rng.normal(0, 0.01))}
            for metric in METRICS:
                sampled = metric == "decode_ms"
                result_rows.append({
                    "run_id": run_id, "time": started, "git_commit": "c0ffee", "suite": "s", "device": "dev",
                    "variant": name, "metric": metric, "value": values[metric], "unit": "",
                    "n": samples if sampled else None, "p50": values[metric] if sampled else None,
                    "p90": float(np.percentile(decode, 90)) if sampled else None,
                    "p99": float(np.percentile(decode, 99)) if sampled else None,
                    "ci_low": values[metric] - 0.1 if sampled else None,
                    "ci_high": values[metric] + 0.1 if sampled else None,
                    "samples": [round(float(x), 4) for x in decode] if sampled else None,
                })
            verdict_rows.append((run_id, started, "s", "dev", name, 1, "[]", None, 1))
    store.append_results(result_rows)
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)", run_rows)
        db.executemany("INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?)", verdict_rows)
    return store, run_ids[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history.sqlite"
        started = time.perf_counter()
        store, newest = build_history(history, args.runs, args.variants, args.samples)
        built = time.perf_counter() - started
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            page = render_run(store, newest, Path(tmp) / "reports")
            timings.append(time.perf_counter() - started)
        size_kb = page.stat().st_size / 1024
        with closing(sqlite3.connect(history)) as db:
            rows = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        db_mb = sum(p.stat().st_size for p in Path(tmp).glob("history.sqlite*")) / 2**20
        svgs = page.read_text(encoding="utf-8").count("<svg")
    print(f"{'history':<28}{args.runs} runs x {args.variants * len(METRICS)} benchmarks = {rows:,} result rows, "
          f"{db_mb:.1f} MB (built in {built:.1f} s)")
    print(f"{'median render (s)':<28}{statistics.median(timings):.3f}  (all: {', '.join(f'{t:.3f}' for t in timings)})")
    print(f"{'HTML size (KB)':<28}{size_kb:.1f}  ({svgs} inline SVG charts)")


if __name__ == "__main__":
    main()
