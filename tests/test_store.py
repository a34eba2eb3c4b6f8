from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgegate.errors import StoreError
from edgegate.store import HistoryStore, RunInfo


def test_rows_round_trip_through_pandas(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.start_run(RunInfo("r1", "2026-01-01T00:00:00Z", "abc", ("s",), ("local",), {"python": "3.11"}))
    store.append_results([
        {"run_id": "r1", "device": "local", "variant": "int4", "metric": "decode_ms", "value": 12.5, "unit": "ms",
         "samples": [12.0, 12.5, 13.0], "n": 3, "p50": 12.5},
        {"run_id": "r1", "device": "local", "variant": "int4", "metric": "power_w", "value": None, "unit": "W",
         "note": "unavailable: no sensor"},
    ])
    store.finish_run("r1", "2026-01-01T00:01:00Z", 0)
    frame = store.frame("results", "r1")
    assert list(frame.metric) == ["decode_ms", "power_w"]
    assert frame.loc[0, "samples"] == "[12.0, 12.5, 13.0]"
    assert frame.loc[1, "note"] == "unavailable: no sensor"
    assert store.frame("runs").loc[0, "exit_status"] == 0


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    HistoryStore(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is not one this EdgeGate reads"):
        HistoryStore(path)


def test_two_stores_on_one_file_lose_nothing(tmp_path: Path) -> None:
    first, second = HistoryStore(tmp_path / "h.sqlite"), HistoryStore(tmp_path / "h.sqlite")
    for index in range(20):
        (first if index % 2 else second).append_results([{"run_id": "r", "metric": "m", "value": index}])
    assert sorted(first.frame("results").value) == list(range(20))
