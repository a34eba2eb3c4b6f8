from __future__ import annotations

import importlib.util
import multiprocessing
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgegate.baselines import BaselineChoice, baseline_samples, find_baseline
from edgegate.errors import StoreError
from edgegate.store import RESULT_SCHEMA_VERSION, SCHEMA_VERSION, HistoryStore, RunInfo

KEY = ("tiny", "local", "int4")


def record(store: HistoryStore, run_id: str, day: int, passed: bool = True, branch: str | None = "main",
           commit: str = "0" * 40, decode: list[float] | None = None) -> None:
    store.start_run(RunInfo(run_id, f"2026-01-{day:02d}T00:00:00Z", commit, ("tiny",), ("local",), {}, branch))
    suite, device, variant = KEY
    samples = decode or [10.0 + day, 10.5 + day, 11.0 + day]
    store.append_results([
        {"run_id": run_id, "suite": suite, "device": device, "variant": variant, "metric": "decode_ms",
         "value": samples[1], "unit": "ms", "samples": samples},
        {"run_id": run_id, "suite": suite, "device": device, "variant": variant, "metric": "size_mb",
         "value": 100.0 + day, "unit": "MB"},
        {"run_id": run_id, "suite": suite, "device": device, "variant": "fp32", "metric": "size_mb",
         "value": 400.0, "unit": "MB"},
    ])
    store.append_verdict({"run_id": run_id, "time": "t", "suite": suite, "device": device, "variant": variant,
                          "passed": passed, "breaches": [] if passed else ["decode_ms too slow"]})
    store.finish_run(run_id, f"2026-01-{day:02d}T00:10:00Z", 0 if passed else 1)


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    store = HistoryStore(tmp_path / "h.sqlite")
    record(store, "r1", 1)
    record(store, "r2", 2, branch=None)  # branch not recorded: counts as the main line
    record(store, "r3", 3, passed=False)
    record(store, "r4", 4, branch="feature/faster-kv")
    record(store, "now", 5)
    return store


def test_last_passing_run_on_main_skips_failures_and_feature_branches(store: HistoryStore) -> None:
    assert find_baseline(store, *KEY, exclude_run="now") == BaselineChoice("r2", "last clean passing run on main/master")
    assert find_baseline(store, *KEY) == BaselineChoice("now", "last clean passing run on main/master")
    assert find_baseline(store, *KEY, main_branches=("feature/faster-kv",), exclude_run="now") == \
        BaselineChoice("r4", "last clean passing run on feature/faster-kv")


def test_a_run_with_any_failed_verdict_for_the_variant_is_not_passing(store: HistoryStore) -> None:
    store.append_verdict({"run_id": "r2", "time": "t", "suite": "tiny", "device": "local", "variant": "int4",
                          "passed": False, "error": "decode: crashed"})
    assert find_baseline(store, *KEY, exclude_run="now") == BaselineChoice("r1", "last clean passing run on main/master")


def test_a_passing_run_that_was_disturbed_slowed_or_inconclusive_is_skipped_and_said(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    record(store, "clean", 1)
    for day, (run_id, extra) in enumerate([
            ("busy", {"baseline_excluded": "disturbed: decode_ms"}),
            ("slowed", {"baseline_excluded": "injected slowdown EDGEGATE_INJECT_SLOWDOWN=0.1"}),
            ("unjudged", {"verdict": "inconclusive"})], start=2):
        store.start_run(RunInfo(run_id, f"2026-01-{day:02d}T00:00:00Z", "0" * 40, ("tiny",), ("local",), {}, "main"))
        store.append_verdict({"run_id": run_id, "time": "t", "suite": "tiny", "device": "local", "variant": "int4",
                              "passed": True, **extra})
    choice = find_baseline(store, *KEY, exclude_run="now")
    assert choice == BaselineChoice("clean", "last clean passing run on main/master", (
        "unjudged: inconclusive", "slowed: injected slowdown EDGEGATE_INJECT_SLOWDOWN=0.1",
        "busy: disturbed: decode_ms"))


def test_baseline_rounds_come_from_the_row_or_from_an_older_row_s_note(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.start_run(RunInfo("old", "2026-01-01T00:00:00Z", "0" * 40, ("tiny",), ("local",), {}, "main"))
    base = {"run_id": "old", "suite": "tiny", "device": "local", "variant": "int4", "unit": "ms", "samples": [1.0] * 8}
    store.append_results([{**base, "metric": "decode_ms", "value": 1.0, "note": "depth 64-95; stopped at n=64"},
                          {**base, "metric": "prefill_ms", "value": 1.0, "unit_size": None},
                          {**base, "metric": "ttft_ms", "value": 1.0, "unit_size": 4}])
    found = baseline_samples(store, "old", "tiny", "local", "int4")
    assert {name: unit for name, (_, _, unit) in found.items()} == {"decode_ms": 32, "prefill_ms": 1, "ttft_ms": 4}


def test_pinned_baseline_wins_until_unpinned(store: HistoryStore) -> None:
    store.promote(*KEY, "r1", pinned=True, note="release 1.0")
    assert find_baseline(store, *KEY, exclude_run="now") == BaselineChoice("r1", "pinned")
    store.promote(*KEY, "r4", pinned=False)  # promoted, not pinned: the pin stays
    assert find_baseline(store, *KEY, exclude_run="now") == BaselineChoice("r1", "pinned")
    assert find_baseline(store, "tiny", "local", "fp32", exclude_run="now") is None  # no verdicts for fp32
    store.unpin(*KEY)
    assert find_baseline(store, *KEY, exclude_run="now") == BaselineChoice("r2", "last clean passing run on main/master")
    frame = store.frame("baselines")
    assert sorted(frame.run_id) == ["r1", "r4"] and frame.pinned.sum() == 0


def test_promoting_an_unknown_run_is_refused(store: HistoryStore) -> None:
    with pytest.raises(StoreError, match="no run 'r9'; newest: now, r4, r3, r2, r1"):
        store.promote(*KEY, "r9", pinned=True)


def test_run_id_spec(store: HistoryStore) -> None:
    assert find_baseline(store, *KEY, spec="r3") == BaselineChoice("r3", "run id")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_ref_spec_resolves_tags_and_shas(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    git(repo, "tag", "v1.2")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two")
    second = git(repo, "rev-parse", "HEAD")
    store = HistoryStore(tmp_path / "h.sqlite")
    record(store, "old", 1, commit=first)
    record(store, "old-dirty", 2, commit=first + "-dirty", branch="feature/x")
    record(store, "old-failed", 3, commit=first, passed=False)
    record(store, "new", 4, commit=second)

    assert find_baseline(store, *KEY, spec="v1.2", repo=repo) == BaselineChoice("old-dirty", f"git ref v1.2 = {first[:7]}")
    assert find_baseline(store, *KEY, spec="v1.2", repo=repo, exclude_run="old-dirty") == \
        BaselineChoice("old", f"git ref v1.2 = {first[:7]}")
    assert find_baseline(store, *KEY, spec=second[:10], repo=repo) == BaselineChoice("new", f"git ref {second[:10]} = {second[:7]}")
    assert find_baseline(store, *KEY, spec="main~1", repo=repo).run_id == "old-dirty"  # type: ignore[union-attr]
    assert find_baseline(store, *KEY, spec="no-such-tag", repo=repo) is None
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "three")
    assert find_baseline(store, *KEY, spec="HEAD", repo=repo) is None  # no run of that commit


def test_no_baseline_is_none(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    assert find_baseline(store, *KEY) is None
    record(store, "only", 1, passed=False)
    assert find_baseline(store, *KEY) is None
    assert find_baseline(store, *KEY, spec="nothing-like-this", repo=tmp_path) is None


def test_baseline_samples_of_one_variant(store: HistoryStore) -> None:
    assert baseline_samples(store, "r2", *KEY) == {"decode_ms": (12.5, [12.0, 12.5, 13.0], 1), "size_mb": (102.0, None, 1)}
    assert baseline_samples(store, "r2", "tiny", "local", "fp32") == {"size_mb": (400.0, None, 1)}
    assert baseline_samples(store, "r2", "tiny", "pi5", "int4") == {}


# The store extensions baselines rely on: schema migration and refusal, export, concurrent writers.

V1_TABLES = {
    "runs": "run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT, git_commit TEXT, suites TEXT, "
            "devices TEXT, exit_status INTEGER, environment TEXT",
    "results": "run_id TEXT, time TEXT, git_commit TEXT, suite TEXT, device TEXT, variant TEXT, metric TEXT, "
               "value REAL, unit TEXT, n INTEGER, p50 REAL, p90 REAL, p99 REAL, mean REAL, stdev REAL, "
               "ci_low REAL, ci_high REAL, samples TEXT, note TEXT, schema_version INTEGER",
    "verdicts": "run_id TEXT, time TEXT, suite TEXT, device TEXT, variant TEXT, passed INTEGER, "
                "breaches TEXT, error TEXT, schema_version INTEGER",
    "artifacts": "run_id TEXT, suite TEXT, variant TEXT, recipe TEXT, key TEXT, manifest TEXT",
}


def test_version_1_history_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        for table, columns in V1_TABLES.items():
            db.execute(f"CREATE TABLE {table} ({columns})")
        db.execute("INSERT INTO runs (run_id, started_at, finished_at, git_commit) "
                       "VALUES ('v1run', '2025-12-31T00:00:00Z', '2025-12-31T00:10:00Z', 'abc')")
        db.execute("INSERT INTO verdicts VALUES ('v1run', 't', 'tiny', 'local', 'int4', 1, '[]', NULL, 1)")
    store = HistoryStore(path)
    runs = store.frame("runs")
    assert list(runs.run_id) == ["v1run"] and runs.branch.isna().all()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert find_baseline(store, *KEY) == BaselineChoice("v1run", "last clean passing run on main/master")
    record(store, "v2run", 1, branch="release")
    assert store.frame("runs", "v2run").branch.tolist() == ["release"]
    HistoryStore(path)  # opening again migrates nothing and refuses nothing


def test_future_file_version_and_row_version_are_refused_with_an_instruction(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    with pytest.raises(StoreError, match="result row of schema version 2; this EdgeGate writes version 1"):
        store.append_results([{"run_id": "r", "metric": "m", "value": 1.0, "schema_version": 2}])
    store.append_results([{"run_id": "r", "metric": "m", "value": 1.0}])
    assert store.frame("results").schema_version.tolist() == [RESULT_SCHEMA_VERSION]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE results SET schema_version = 7")
    with pytest.raises(StoreError, match=r"results rows of schema version 7 .* upgrade EdgeGate"):
        store.frame("results")
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is not one this EdgeGate reads"):
        HistoryStore(path)


def test_export_csv_round_trips(store: HistoryStore, tmp_path: Path) -> None:
    out = store.export(tmp_path / "out" / "results.csv")
    frame = pd.read_csv(out)
    assert len(frame) == 15 and set(frame.run_id) == {"r1", "r2", "r3", "r4", "now"}
    assert frame[(frame.run_id == "r1") & (frame.metric == "decode_ms")].samples.tolist() == ["[11.0, 11.5, 12.0]"]
    runs = pd.read_csv(store.export(tmp_path / "runs.csv", table="runs"))
    assert runs.branch.fillna("-").tolist() == ["main", "-", "main", "feature/faster-kv", "main"]
    assert len(pd.read_csv(store.export(tmp_path / "r1.csv", run_id="r1"))) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv"]  # no temporary left
    with pytest.raises(StoreError, match="use .csv or .parquet"):
        store.export(tmp_path / "results.xlsx")


def test_export_parquet_or_says_how_to_get_it(store: HistoryStore, tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(StoreError, match="pip install pyarrow"):
            store.export(target)
        assert not target.exists()
    else:
        assert len(pd.read_parquet(store.export(target))) == 15


def _write_rows(path: str, writer: int, barrier: Any) -> None:
    store = HistoryStore(Path(path))
    barrier.wait()
    for index in range(200):
        store.append_results([{"run_id": f"w{writer}", "metric": "decode_ms", "value": float(index)}])


def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "h.sqlite"  # each writer creates/opens the file itself
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    writers = [context.Process(target=_write_rows, args=(str(path), w, barrier)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    results = HistoryStore(path).frame("results")
    assert len(results) == 800
    assert results.groupby("run_id").value.apply(sorted).to_dict() == {f"w{w}": [float(i) for i in range(200)] for w in range(4)}
