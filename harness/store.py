"""The history: every run and every measurement, appended to one SQLite file; pandas out.

Rows are written as soon as a variant is measured, each in its own transaction, so a crash
later in the session loses nothing already measured. The file carries a schema version and an
unknown version is refused with an instruction rather than misread; older known versions are
migrated in place (version 1 -> 2 added ``runs.branch`` and the ``baselines`` table; 3 -> 4 added
what a measurement's timed region went through and each verdict's outcome and baseline fitness).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import StoreError

SCHEMA_VERSION = 5  # of the file: its tables and columns
RESULT_SCHEMA_VERSION = 1  # of one results/verdicts row: what its columns mean

_TABLES = {
    "runs": "run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT, git_commit TEXT, suites TEXT, "
            "devices TEXT, exit_status INTEGER, environment TEXT, branch TEXT",
    "results": "run_id TEXT, time TEXT, git_commit TEXT, suite TEXT, device TEXT, variant TEXT, metric TEXT, "
               "value REAL, unit TEXT, n INTEGER, p50 REAL, p90 REAL, p99 REAL, mean REAL, stdev REAL, "
               "ci_low REAL, ci_high REAL, samples TEXT, note TEXT, schema_version INTEGER, iqr REAL, outliers INTEGER, "
               "disturbed TEXT, attempts INTEGER, unit_size INTEGER",
    # verdict: ship | blocked | inconclusive | error | unsupported (with why); baseline_excluded: why this run may not be a baseline
    "verdicts": "run_id TEXT, time TEXT, suite TEXT, device TEXT, variant TEXT, passed INTEGER, "
                "breaches TEXT, error TEXT, schema_version INTEGER, verdict TEXT, baseline_excluded TEXT, "
                "inconclusive TEXT, expected TEXT, unsupported TEXT",
    "artifacts": "run_id TEXT, suite TEXT, variant TEXT, recipe TEXT, key TEXT, manifest TEXT",
    "baselines": "suite TEXT, device TEXT, variant TEXT, run_id TEXT, pinned INTEGER, promoted_at TEXT, note TEXT, "
                 "UNIQUE (suite, device, variant, run_id)",
}
# From version N to N + 1, as (table, column) to add; run in the same transaction as the version bump,
# after every table exists.
_MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    1: (("runs", "branch TEXT"),),
    2: (("results", "iqr REAL"), ("results", "outliers INTEGER")),
    3: (("results", "disturbed TEXT"), ("results", "attempts INTEGER"), ("results", "unit_size INTEGER"),
        ("verdicts", "verdict TEXT"), ("verdicts", "baseline_excluded TEXT"), ("verdicts", "inconclusive TEXT"),
        ("verdicts", "expected TEXT")),
    4: (("verdicts", "unsupported TEXT"),),
}
RESULT_COLUMNS = [c.split()[0] for c in _TABLES["results"].split(", ")]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: str
    git_commit: str
    suites: tuple[str, ...]
    devices: tuple[str, ...]
    environment: dict[str, Any]
    branch: str | None = None  # None: not recorded (treated as the main line when choosing a baseline)


class HistoryStore:
    """One SQLite file; safe for several writers, threads or processes (WAL, a 60 s busy timeout, one
    short transaction per write, a fresh connection each time). Not on a network filesystem: WAL needs
    shared memory between the writers, so they must run on one machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.isolation_level = None  # explicit BEGIN IMMEDIATE: check, migrate and create as one writer
            db.execute("BEGIN IMMEDIATE")
            try:
                self._prepare(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = SCHEMA_VERSION if row is None else int(row[0])
        if version > SCHEMA_VERSION or version < 1:
            raise StoreError(
                f"{self.path}: history schema version {version} is not one this EdgeGate reads "
                f"({SCHEMA_VERSION}); use the EdgeGate release that wrote it (pip install -U edgegate), "
                f"or point --edgegate-history at a new file"
            )
        for table, columns in _TABLES.items():
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        for step in range(version, SCHEMA_VERSION):
            for table, column in _MIGRATIONS[step]:
                existing = {info[1] for info in db.execute(f"PRAGMA table_info({table})")}
                if column.split()[0] not in existing:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        if row is None or version != SCHEMA_VERSION:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the history: {exc}") from None
        return db

    def start_run(self, run: RunInfo, joining: bool = False) -> None:
        """Record the run's start. ``joining``: several processes (pytest-xdist workers) share this run
        id; the first one's row stands, the others' are ignored (their RunInfo is the same but the time)."""
        verb = "INSERT OR IGNORE" if joining else "INSERT"
        with closing(self._connect()) as db, db:
            db.execute(
                f"{verb} INTO runs (run_id, started_at, git_commit, suites, devices, environment, branch) "
                "VALUES (?,?,?,?,?,?,?)",
                (run.run_id, run.started_at, run.git_commit, json.dumps(run.suites), json.dumps(run.devices),
                 json.dumps(run.environment), run.branch),
            )

    def finish_run(self, run_id: str, finished_at: str, exit_status: int,
                   environment: dict[str, Any] | None = None) -> None:
        """Close the run; ``environment`` (when given) replaces what was recorded at the start."""
        with closing(self._connect()) as db, db:
            db.execute("UPDATE runs SET finished_at = ?, exit_status = ? WHERE run_id = ?", (finished_at, exit_status, run_id))
            if environment is not None:
                db.execute("UPDATE runs SET environment = ? WHERE run_id = ?", (json.dumps(environment), run_id))

    def append_results(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows without ``schema_version`` get the current one; a row of another version is refused."""
        records = [tuple(_cell(row.get(col)) for col in RESULT_COLUMNS) for row in map(_versioned, rows)]
        placeholders = ",".join("?" * len(RESULT_COLUMNS))
        with closing(self._connect()) as db, db:
            db.executemany(f"INSERT INTO results ({','.join(RESULT_COLUMNS)}) VALUES ({placeholders})", records)

    def append_verdict(self, row: dict[str, Any]) -> None:
        """One item's verdict; ``verdict`` defaults to ship/blocked from ``passed`` (error with an error)."""
        verdict = row.get("verdict") or ("ship" if row["passed"] else ("error" if row.get("error") else "blocked"))
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO verdicts (run_id, time, suite, device, variant, passed, breaches, error, schema_version, "
                "verdict, baseline_excluded, inconclusive, expected, unsupported) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row["run_id"], row["time"], row["suite"], row["device"], row["variant"], int(row["passed"]),
                 json.dumps(row.get("breaches", [])), row.get("error"), RESULT_SCHEMA_VERSION, verdict,
                 row.get("baseline_excluded"), json.dumps(row.get("inconclusive", [])), row.get("expected"),
                 row.get("unsupported")),
            )

    def append_artifact(self, run_id: str, suite: str, variant: str, recipe: str, key: str, manifest: dict[str, Any]) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO artifacts VALUES (?,?,?,?,?,?)", (run_id, suite, variant, recipe, key, json.dumps(manifest)))

    def frame(self, table: str, run_id: str | None = None, *, where: dict[str, Any] | None = None) -> pd.DataFrame:
        """A table as a DataFrame, optionally only one run's rows (and rows whose columns equal ``where``).

        Results and verdicts rows of a row schema this EdgeGate does not know are refused, not misread.
        """
        if table not in _TABLES:
            raise StoreError(f"no table {table!r} in the history; tables: {', '.join(_TABLES)}")
        conditions = {**({"run_id": run_id} if run_id else {}), **(where or {})}
        unknown = set(conditions) - set(_columns(table))
        if unknown:
            raise StoreError(f"table {table!r} has no column {', '.join(sorted(unknown))}")
        query = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(f"{c} = ?" for c in conditions) if conditions else "")
        with closing(self._connect()) as db:
            frame = pd.read_sql_query(query, db, params=tuple(conditions.values()) or None)
        if "schema_version" in frame.columns:
            _check_row_versions(self.path, table, frame)
        return frame

    def newest_runs(self, count: int = 5) -> list[str]:
        """The ``count`` newest run ids, newest first (for messages that name what exists)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT ?", (count,)).fetchall()
        return [row[0] for row in rows]

    def require_run(self, run_id: str) -> None:
        """StoreError naming ``run_id`` and the newest runs when the history has no such run."""
        with closing(self._connect()) as db:
            found = db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if found is None:
            raise StoreError(f"{self.path}: no run {run_id!r}; newest: {', '.join(self.newest_runs()) or 'none'}")

    def promote(self, suite: str, device: str, variant: str, run_id: str, pinned: bool = False, note: str = "") -> None:
        """Record ``run_id`` as a baseline for suite/device/variant; pinning it unpins any other."""
        self.require_run(run_id)
        with closing(self._connect()) as db, db:
            if pinned:
                db.execute("UPDATE baselines SET pinned = 0 WHERE suite = ? AND device = ? AND variant = ?",
                           (suite, device, variant))
            db.execute("INSERT OR REPLACE INTO baselines VALUES (?,?,?,?,?,?,?)",
                       (suite, device, variant, run_id, int(pinned), _now(), note))

    def unpin(self, suite: str, device: str, variant: str) -> None:
        """Back to the default baseline (the last passing run on the main line)."""
        with closing(self._connect()) as db, db:
            db.execute("UPDATE baselines SET pinned = 0 WHERE suite = ? AND device = ? AND variant = ?",
                       (suite, device, variant))

    def pinned(self, suite: str, device: str, variant: str) -> str | None:
        """The run pinned as baseline for suite/device/variant, if any."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT run_id FROM baselines WHERE suite = ? AND device = ? AND variant = ? AND pinned = 1 "
                             "ORDER BY promoted_at DESC LIMIT 1", (suite, device, variant)).fetchone()
        return None if row is None else row[0]

    def passing_runs(self, suite: str, device: str, variant: str) -> pd.DataFrame:
        """Runs whose verdict for suite/device/variant passed, newest first (see :meth:`verdict_runs`)."""
        runs = self.verdict_runs(suite, device, variant)
        return runs[runs.ok.astype(bool)].reset_index(drop=True)

    def verdict_runs(self, suite: str, device: str, variant: str) -> pd.DataFrame:
        """Every run with a verdict for suite/device/variant, newest first: run_id, started_at,
        git_commit, branch; ``ok``: every verdict passed (a variant expected to be blocked,
        ``expect: {blocked: ...}``, counts as passing when it was blocked as expected);
        ``inconclusive``: a verdict was; ``excluded``: why the run may not be a baseline (None: it
        may): a disturbed measurement, an injected slowdown, a lost lease, or "inconclusive"."""
        query = ("SELECT r.run_id, r.started_at, r.git_commit, r.branch, "
                 "MIN(v.passed = 1 OR (v.verdict = 'blocked' AND v.expected IS NOT NULL)) AS ok, "
                 "MAX(v.verdict = 'inconclusive') AS inconclusive, "
                 "MAX(COALESCE(v.baseline_excluded, CASE WHEN v.verdict = 'inconclusive' THEN 'inconclusive' END)) "
                 "AS excluded FROM runs r JOIN verdicts v ON v.run_id = r.run_id "
                 "WHERE v.suite = ? AND v.device = ? AND v.variant = ? GROUP BY r.run_id "
                 "ORDER BY r.started_at DESC, r.rowid DESC")
        with closing(self._connect()) as db:
            return pd.read_sql_query(query, db, params=(suite, device, variant))

    def export(self, path: Path, table: str = "results", run_id: str | None = None) -> Path:
        """Write a table (optionally one run's rows) to ``.csv`` or ``.parquet``; atomically, so a
        reader never sees half a file."""
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise StoreError(f"{path}: cannot export to {suffix or 'a file without suffix'}; use .csv or .parquet")
        if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            raise StoreError(f"{path}: writing Parquet needs pyarrow: pip install pyarrow (or export to .csv)")
        frame = self.frame(table, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
        try:
            if suffix == ".csv":
                frame.to_csv(temporary, index=False)
            else:
                frame.to_parquet(temporary, index=False, engine="pyarrow")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


def _columns(table: str) -> list[str]:
    return [column.split()[0] for column in _TABLES[table].split(", ") if not column.startswith("UNIQUE")]


def _versioned(row: dict[str, Any]) -> dict[str, Any]:
    version = row.get("schema_version")
    if version is None:
        return {**row, "schema_version": RESULT_SCHEMA_VERSION}
    if int(version) != RESULT_SCHEMA_VERSION:
        raise StoreError(f"result row of schema version {version}; this EdgeGate writes version {RESULT_SCHEMA_VERSION}")
    return row


def _check_row_versions(path: Path, table: str, frame: pd.DataFrame) -> None:
    versions = set(frame.schema_version.dropna().astype(int)) - {RESULT_SCHEMA_VERSION}
    if versions:
        raise StoreError(
            f"{path}: {table} rows of schema version {', '.join(map(str, sorted(versions)))} are not ones this "
            f"EdgeGate reads ({RESULT_SCHEMA_VERSION}); upgrade EdgeGate (pip install -U edgegate) to read this history"
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def decode_samples(raw: Any) -> list[float] | None:
    """The raw samples of a results row (stored as JSON text), or None when it has none."""
    if not isinstance(raw, str) or not raw:
        return None
    values = json.loads(raw)
    return [float(v) for v in values] if isinstance(values, list) else None


def decode_value(value: Any) -> float | None:
    """A results row's value as a float, None for missing (NULL reads back as None or NaN)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return value
