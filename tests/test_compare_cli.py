from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from edgegate.cli import compare
from edgegate.errors import StoreError
from edgegate.store import HistoryStore, RunInfo


def parse(argv: list[str]) -> argparse.Namespace:
    top = argparse.ArgumentParser()
    compare.add_parser(top.add_subparsers())
    return top.parse_args(["compare", *argv])


def add_run(store: HistoryStore, run_id: str, day: int, slowdown: float, size: float, ppl: float) -> None:
    store.start_run(RunInfo(run_id, f"2026-02-{day:02d}T00:00:00Z", "c" * 40, ("tiny",), ("local", "pi5"), {}))
    rows = []
    for device, median in (("local", 20.0), ("pi5", 80.0)):
        decode = np.random.default_rng(day * 10 + len(device)).lognormal(math.log(median), 0.03, 40) * slowdown
        common = {"run_id": run_id, "suite": "tiny", "device": device, "variant": "int4"}
        rows += [
            {**common, "metric": "decode_ms", "value": float(np.median(decode)), "unit": "ms", "samples": list(decode)},
            {**common, "metric": "size_mb", "value": size, "unit": "MB"},
            {**common, "metric": "perplexity", "value": ppl, "unit": ""},
        ]
    if run_id == "b":
        rows.append({"run_id": "b", "suite": "tiny", "device": "local", "variant": "int4", "metric": "kl_mean",
                     "value": 0.01})  # only in B: not compared
    store.append_results(rows)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    store = HistoryStore(tmp_path / "h.sqlite")
    add_run(store, "a", 1, 1.00, 120.0, 10.0)
    add_run(store, "b", 2, 1.12, 120.0, 9.5)
    return store.path


def test_compare_prints_one_judged_row_per_shared_metric(history: Path) -> None:
    lines: list[str] = []
    assert compare.run(parse(["a", "b", "--history", str(history)]), lines.append) == 0
    lines = "\n".join(lines).splitlines()
    assert lines[0].startswith("A = a   B = b")
    header, *rows = lines[1:-1]
    assert header.split() == ["suite", "device", "variant", "metric", "A", "B", "change", "%", "p-value", "verdict"]
    cells = [row.split() for row in rows]
    assert [(c[1], c[3]) for c in cells] == [("local", "size_mb"), ("local", "decode_ms"), ("local", "perplexity"),
                                             ("pi5", "size_mb"), ("pi5", "decode_ms"), ("pi5", "perplexity")]
    decode = cells[1]
    assert decode[-1] == "regressed" and float(decode[6]) == pytest.approx(12.0, abs=2.0)
    assert float(decode[7]) < 1e-6  # the p-value
    assert cells[0][4:] == ["120", "120", "+0.0", "-", "same"]
    assert cells[2][4:] == ["10", "9.5", "-5.0", "-", "better"]
    assert lines[-1] == "6 metrics compared; 2 regressed"


def test_filters_by_device(history: Path) -> None:
    lines: list[str] = []
    compare.run(parse(["a", "b", "--history", str(history), "--device", "pi5"]), lines.append)
    assert [line.split()[1] for line in "\n".join(lines).splitlines()[2:-1]] == ["pi5"] * 3
    lines.clear()
    compare.run(parse(["a", "b", "--history", str(history), "--suite", "other"]), lines.append)
    assert lines[1] == "no metric was measured in both runs (suite other)"


def test_unknown_run_names_it_and_the_newest_runs(history: Path) -> None:
    with pytest.raises(StoreError, match=r"no run 'zzz'; newest: b, a$"):
        compare.run(parse(["a", "zzz", "--history", str(history)]))


def test_missing_history_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no history here"):
        compare.run(parse(["a", "b", "--history", str(tmp_path / "none.sqlite")]))


def test_metric_without_a_default_rule_is_never_regressed(history: Path) -> None:
    store = HistoryStore(history)
    for run_id, load in (("a", 100.0), ("b", 300.0)):
        store.append_results([{"run_id": run_id, "suite": "tiny", "device": "local", "variant": "int4",
                               "metric": "load_ms", "value": load, "unit": "ms"}])
    lines: list[str] = []
    compare.run(parse(["a", "b", "--history", str(history), "--device", "local"]), lines.append)
    load_row = next(line.split() for line in "\n".join(lines).splitlines() if " load_ms " in line)
    assert load_row[4:] == ["100", "300", "+200.0", "-", "worse"]
