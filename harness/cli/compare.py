"""``edgegate compare RUN_A RUN_B``: every metric both runs measured, side by side, judged.

A is the baseline, B the candidate; each row is judged with the default regression rules
(relative limit plus a Mann-Whitney U test on raw samples), so the table says the same thing
the gate would, not just which number is larger.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StoreError
from ..metrics import METRICS, REPORT_ORDER
from ..regression import (
    DEFAULT_RULES,
    Comparison,
    RegressionRule,
    compare_metric,
    relative_change,
)
from ..store import HistoryStore, decode_samples, decode_value
from ..store_sql import add_history_argument, history_location

# Catalogued metrics without a default rule (load_ms, power_w, ...) are shown better/worse/same
# but never "regressed": nobody decided how much worse they may get.
UNRULED_MAX_CHANGE = math.inf
KEY = ["suite", "device", "variant", "metric"]
COLUMNS = [*KEY, "A", "B", "change %", "p-value", "verdict"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="compare the metrics of two runs (A = baseline, B = new)")
    parser.add_argument("run_a", help="baseline run id")
    parser.add_argument("run_b", help="run id to judge against A")
    add_history_argument(parser)
    parser.add_argument("--device", help="only this device")
    parser.add_argument("--suite", help="only this suite")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Print the table; 0 whatever it shows (gating is the test session's job, not this one's)."""
    location = history_location(args.history, Path("reports/history.sqlite"))
    if isinstance(location, Path) and not location.exists():
        raise StoreError(f"{location}: no history here; run a suite first or pass --history")
    store = HistoryStore(location)
    for run_id in (args.run_a, args.run_b):
        store.require_run(run_id)
    table = compare_runs(store, args.run_a, args.run_b, args.suite, args.device)
    out(f"A = {args.run_a}   B = {args.run_b}   ({store.label})")
    if table.empty:
        out("no metric was measured in both runs" + _filters(args))
        return 0
    out(table.to_string(index=False))
    regressed = int((table.verdict == "regressed").sum())
    out(f"{len(table)} metrics compared; {regressed} regressed")
    return 0


def compare_runs(store: HistoryStore, run_a: str, run_b: str, suite: str | None = None,
                 device: str | None = None) -> pd.DataFrame:
    """One row per suite/device/variant/metric present in both runs, in report order."""
    where = {k: v for k, v in (("suite", suite), ("device", device)) if v}
    a = _latest(store.frame("results", run_a, where=where))
    b = _latest(store.frame("results", run_b, where=where))
    both = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    rows = [_row(r) for r in both.itertuples(index=False)]
    table = pd.DataFrame(rows, columns=[*COLUMNS, "_order"])
    if table.empty:
        return table.drop(columns="_order")
    return table.sort_values(["suite", "device", "variant", "_order"]).drop(columns="_order").reset_index(drop=True)


def _latest(results: pd.DataFrame) -> pd.DataFrame:
    """The last row of each key (a metric recorded twice in one run: the later one counts)."""
    return results.drop_duplicates(KEY, keep="last")[[*KEY, "value", "samples"]]


def _row(row: Any) -> list[object]:
    metric = str(row.metric)
    order = REPORT_ORDER.index(metric) if metric in REPORT_ORDER else len(REPORT_ORDER)
    key = [getattr(row, k) for k in KEY]
    old, new = decode_value(row.value_a), decode_value(row.value_b)
    if metric not in METRICS:  # no known direction: show the numbers, judge nothing
        change = relative_change(old, new, "lower")[0] if old is not None and new is not None else None
        return [*key, _fmt(old), _fmt(new), _pct(change), "-", "n/a", order]
    rule = DEFAULT_RULES.get(metric) or RegressionRule(metric, UNRULED_MAX_CHANGE)
    samples_a, samples_b = decode_samples(row.samples_a), decode_samples(row.samples_b)
    result = compare_metric(rule, old, samples_a, new, samples_b)
    return [*key, _fmt(result.baseline_value), _fmt(result.value), _pct(result.change), _p(result),
            result.verdict, order]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(change: float | None) -> str:
    if change is None:
        return "-"
    return f"{change * 100:+.1f}" if math.isfinite(change) else ("+inf" if change > 0 else "-inf")


def _p(result: Comparison) -> str:
    return "-" if result.p_value is None else f"{result.p_value:.2g}"


def _filters(args: argparse.Namespace) -> str:
    chosen = [f"{name} {value}" for name, value in (("suite", args.suite), ("device", args.device)) if value]
    return f" ({', '.join(chosen)})" if chosen else ""
