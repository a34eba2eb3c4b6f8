"""How long the HTML report takes to render as the history grows, on SQLite and on PostgreSQL.

    python bench/bench_report.py [--sizes 1000,2500,5000,10000] [--variants 10] [--samples 64]
                                 [--repeat 3] [--backend sqlite,postgresql]

Grows a synthetic history to each of ``--sizes`` runs, each run ``--variants`` variants x 4
metrics (decode_ms with raw samples, perplexity, size_mb, roofline_fraction) on one device, and
at each size renders its newest run (which has a baseline for every variant, 10 runs back)
``--repeat`` times: the median render time per size is the curve. PostgreSQL is a server this
script starts itself from Debian's binaries (tests/pgserver.py). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgegate.report import render_run  # noqa: E402
from edgegate.store import HistoryStore  # noqa: E402

METRICS = ("decode_ms", "perplexity", "size_mb", "roofline_fraction")


def add_runs(store: HistoryStore, start: int, end: int, variants: int, samples: int, seed: int = 0) -> str:
    """Runs ``start`` .. ``end - 1``; the newest has a baseline for every variant. Returns its id."""
    rng = np.random.default_rng(seed + start)
    names = [f"v{i:02d}" for i in range(variants)]
    baseline = _run_id(max(end - 10, 0))
    runs, results, verdicts = [], [], []
    for i in range(start, end):
        run_id, started = _run_id(i), f"2026-01-01T00:00:00Z+{i:06d}"
        environment = {"baselines": {f"s/dev/{n}": {"run_id": baseline, "reason": "last passing run"} for n in names}} \
            if i == end - 1 else {}
        runs.append({"run_id": run_id, "started_at": started, "finished_at": started, "git_commit": "c0ffee",
                     "suites": json.dumps(["s.yaml"]), "devices": json.dumps(["dev"]), "exit_status": 0,
                     "environment": json.dumps(environment), "branch": "main"})
        for v, name in enumerate(names):
            results += _results(rng, run_id, started, name, v, samples)
            verdicts.append({"run_id": run_id, "time": started, "suite": "s", "device": "dev", "variant": name,
                             "passed": 1, "breaches": "[]", "schema_version": 1, "verdict": "ship"})
    store.append_tables({"runs": pd.DataFrame(runs), "results": pd.DataFrame(results),
                         "verdicts": pd.DataFrame(verdicts)})
    return _run_id(end - 1)


def _run_id(i: int) -> str:
    return f"run{i:05d}"


def _results(rng: np.random.Generator, run_id: str, started: str, name: str, v: int, samples: int) -> list[dict]:
    decode = rng.normal(10 + v, 0.3, samples)
    values = {"decode_ms": float(np.median(decode)), "perplexity": 8 + v * 0.2 + rng.normal(0, 0.05),
              "size_mb": 100.0 + 40 * v, "roofline_fraction": min(1.0, 0.3 + 0.05 * v + rng.normal(0, 0.01))}
    rows = []
    for metric in METRICS:
        sampled = metric == "decode_ms"
        rows.append({
            "run_id": run_id, "time": started, "git_commit": "c0ffee", "suite": "s", "device": "dev",
            "variant": name, "metric": metric, "value": values[metric], "unit": "", "schema_version": 1,
            "n": samples if sampled else None, "p50": values[metric] if sampled else None,
            "p90": float(np.percentile(decode, 90)) if sampled else None,
            "p99": float(np.percentile(decode, 99)) if sampled else None,
            "ci_low": values[metric] - 0.1 if sampled else None, "ci_high": values[metric] + 0.1 if sampled else None,
            "samples": json.dumps([round(float(x), 4) for x in decode]) if sampled else None,
        })
    return rows


def curve(location: str, sizes: list[int], variants: int, samples: int, repeat: int, out: Path) -> list[dict]:
    store, done, points = HistoryStore(location), 0, []
    for size in sizes:
        started = time.perf_counter()
        newest = add_runs(store, done, size, variants, samples)
        built, done = time.perf_counter() - started, size
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            page = render_run(store, newest, out)
            timings.append(time.perf_counter() - started)
        points.append({"runs": size, "result_rows": store.counts()["results"], "render_s": statistics.median(timings),
                       "all_s": timings, "html_kb": page.stat().st_size / 1024, "added_in_s": built})
        print(f"  {size:>6} runs  {points[-1]['result_rows']:>9,} result rows  render {points[-1]['render_s']:.3f} s "
              f"(all: {', '.join(f'{t:.3f}' for t in timings)})  html {points[-1]['html_kb']:.0f} KB", flush=True)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,2500,5000,10000")
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "report_render_curve.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend.split(","):
            print(f"{backend}: {args.variants * len(METRICS)} benchmarks per run")
            with _history(backend, Path(tmp)) as location:
                found[backend] = curve(location, sizes, args.variants, args.samples, args.repeat, Path(tmp) / backend)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(found, indent=2) + "\n")
    print("| runs | " + " | ".join(f"{b} render (s)" for b in found) + " |")
    print("|---:|" + "---:|" * len(found))
    for i, size in enumerate(sizes):
        print(f"| {size:,} | " + " | ".join(f"{found[b][i]['render_s']:.3f}" for b in found) + " |")


def _history(backend: str, folder: Path):  # -> a context manager yielding the history's location
    import contextlib

    if backend == "sqlite":
        return contextlib.nullcontext(str(folder / "history.sqlite"))
    import pgserver

    why = pgserver.unavailable()
    if why:
        raise SystemExit(f"postgresql: {why}")
    return pgserver.server("bench-only")


if __name__ == "__main__":
    main()
