"""The history: every run and every measurement, appended to one database; pandas out.

A SQLite file is the embedded default (nothing to set up); a PostgreSQL database
(``postgresql://user@host/db``) is the one several CI machines share. Both go through SQLAlchemy
Core with the same tables, the same SQL and the same schema versioning (``store_sql.py`` holds
what differs between the two: column types, the connection, the schema lock).

Rows are written as soon as a variant is measured, each in its own transaction, so a crash
later in the session loses nothing already measured. The database carries a schema version and
an unknown version is refused with an instruction rather than misread; older known versions are
migrated in place (version 1 -> 2 added ``runs.branch`` and the ``baselines`` table; 3 -> 4 added
what a measurement's timed region went through and each verdict's outcome and baseline fitness;
4 -> 5 why a variant is unsupported on a device).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import bindparam, text

from . import store_sql
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
# What readers look rows up by (a run's rows, a variant's verdicts): made on every open, if missing.
_INDEXES = {
    "results_run": "results (run_id, metric)",
    "verdicts_run": "verdicts (run_id)",
    "verdicts_variant": "verdicts (suite, device, variant)",
    "artifacts_run": "artifacts (run_id)",
    "runs_started": "runs (started_at)",
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
TABLES = tuple(_TABLES)
_KEY = "suite = :s AND device = :d AND variant = :v"
OPEN_TIMEOUT_S = 60.0
NOT_FINISHED = "not finished (still being written, or it stopped before the end)"


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
    """The history at ``location``: a SQLite file (a path) or a PostgreSQL database (a URL).

    Safe for several writers, threads or processes: one short transaction per write; SQLite with
    WAL and a 60 s busy timeout (writers on one machine: WAL needs shared memory, so not on a
    network filesystem), PostgreSQL for writers on many machines. ``label`` names the history in
    every message, with any password in a URL hidden.
    """

    def __init__(self, location: Path | str) -> None:
        self.engine, self.label = store_sql.open_engine(location)
        self.path = Path(location) if self.engine.dialect.name == "sqlite" else None
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                with store_sql.schema_lock(self.engine) as db:
                    self._prepare(db)
                return
            except store_sql.DB_ERRORS as exc:
                # SQLite answers "locked" at once, without its busy wait, when processes open a new
                # file together (one turning it to WAL): the check is idempotent, so try again
                if not store_sql.is_locked(exc) or time.monotonic() > deadline:
                    raise StoreError(f"{self.label}: cannot open the history: {store_sql.reason(exc)}") from None
                time.sleep(0.05)

    def _prepare(self, db: Any) -> None:
        db.execute(text("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"))
        row = db.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).fetchone()
        version = SCHEMA_VERSION if row is None else int(row[0])
        if version > SCHEMA_VERSION or version < 1:
            raise StoreError(
                f"{self.label}: history schema version {version} is not one this EdgeGate reads "
                f"({SCHEMA_VERSION}); use the EdgeGate release that wrote it (pip install -U edgegate), "
                f"or point --edgegate-history at a new file"
            )
        for table, columns in _TABLES.items():
            db.execute(text(f"CREATE TABLE IF NOT EXISTS {table} ({store_sql.column_types(columns, db)})"))
        for step in range(version, SCHEMA_VERSION):
            for table, column in _MIGRATIONS[step]:
                if column.split()[0] not in store_sql.column_names(db, table):
                    db.execute(text(f"ALTER TABLE {table} ADD COLUMN {store_sql.column_types(column, db)}"))
        for name, on in _INDEXES.items():
            db.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {on}"))
        if row is None or version != SCHEMA_VERSION:
            db.execute(text("DELETE FROM meta WHERE key = 'schema_version'"))
            db.execute(text("INSERT INTO meta VALUES ('schema_version', :v)"), {"v": str(SCHEMA_VERSION)})

    def _write(self) -> Any:
        """One transaction (committed on leaving the block, rolled back on an error)."""
        return self.engine.begin()

    def _read(self) -> Any:
        return self.engine.connect()

    def start_run(self, run: RunInfo, joining: bool = False) -> None:
        """Record the run's start. ``joining``: several processes (pytest-xdist workers) share this run
        id; the first one's row stands, the others' are ignored (their RunInfo is the same but the time).
        Without ``joining`` a run id already in the history is an error: run ids are unique."""
        values = {"run_id": run.run_id, "started_at": run.started_at, "git_commit": run.git_commit,
                  "suites": json.dumps(run.suites), "devices": json.dumps(run.devices),
                  "environment": json.dumps(run.environment), "branch": run.branch}
        statement = ("INSERT INTO runs (run_id, started_at, git_commit, suites, devices, environment, branch) "
                     "VALUES (:run_id, :started_at, :git_commit, :suites, :devices, :environment, :branch)")
        try:
            with self._write() as db:
                db.execute(text(statement + (" ON CONFLICT (run_id) DO NOTHING" if joining else "")), values)
        except store_sql.INTEGRITY_ERRORS:
            raise StoreError(f"{self.label}: run {run.run_id!r} is already in the history") from None

    def finish_run(self, run_id: str, finished_at: str, exit_status: int,
                   environment: dict[str, Any] | None = None) -> None:
        """Close the run; ``environment`` (when given) replaces what was recorded at the start."""
        with self._write() as db:
            db.execute(text("UPDATE runs SET finished_at = :f, exit_status = :e WHERE run_id = :r"),
                       {"f": finished_at, "e": exit_status, "r": run_id})
            if environment is not None:
                db.execute(text("UPDATE runs SET environment = :env WHERE run_id = :r"),
                           {"env": json.dumps(environment), "r": run_id})

    def append_results(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows without ``schema_version`` get the current one; a row of another version is refused."""
        records = [{col: _cell(row.get(col)) for col in RESULT_COLUMNS} for row in map(_versioned, rows)]
        self._insert("results", records)

    def append_verdict(self, row: dict[str, Any]) -> None:
        """One item's verdict; ``verdict`` defaults to ship/blocked from ``passed`` (error with an error)."""
        verdict = row.get("verdict") or ("ship" if row["passed"] else ("error" if row.get("error") else "blocked"))
        self._insert("verdicts", [{
            "run_id": row["run_id"], "time": row["time"], "suite": row["suite"], "device": row["device"],
            "variant": row["variant"], "passed": int(row["passed"]), "breaches": json.dumps(row.get("breaches", [])),
            "error": row.get("error"), "schema_version": RESULT_SCHEMA_VERSION, "verdict": verdict,
            "baseline_excluded": row.get("baseline_excluded"), "inconclusive": json.dumps(row.get("inconclusive", [])),
            "expected": row.get("expected"), "unsupported": row.get("unsupported"),
        }])

    def append_artifact(self, run_id: str, suite: str, variant: str, recipe: str, key: str, manifest: dict[str, Any]) -> None:
        self._insert("artifacts", [{"run_id": run_id, "suite": suite, "variant": variant, "recipe": recipe,
                                    "key": key, "manifest": json.dumps(manifest)}])

    def append_tables(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        """Rows of several tables as another history holds them (``edgegate history import``), all in
        one transaction: nothing is added when any row is refused (a run id already here). Returns
        the rows now in each table, so the caller can check what arrived."""
        unknown = set(frames) - set(_TABLES)
        if unknown:
            raise StoreError(f"no table {', '.join(sorted(unknown))} in the history; tables: {', '.join(_TABLES)}")
        try:
            with self._write() as db:
                for table in (t for t in _TABLES if t in frames):  # runs first
                    wanted = [c for c in _columns(table) if c in frames[table].columns]
                    records = [{c: _plain(v) for c, v in zip(wanted, row)}
                               for row in frames[table][wanted].itertuples(index=False)]
                    self._insert(table, records, db)
        except store_sql.INTEGRITY_ERRORS as exc:
            raise StoreError(f"{self.label}: nothing imported: {store_sql.reason(exc)}") from None
        return self.counts()

    def counts(self) -> dict[str, int]:
        """How many rows each table holds."""
        with self._read() as db:
            return {table: int(db.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()) for table in _TABLES}

    def _insert(self, table: str, records: list[dict[str, Any]], db: Any = None) -> None:
        if not records:
            return
        columns = list(records[0])
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        if db is not None:
            db.execute(text(statement), records)
            return
        with self._write() as db:
            db.execute(text(statement), records)

    def frame(self, table: str, run_id: str | None = None, *, where: dict[str, Any] | None = None,
              within: dict[str, Iterable[Any]] | None = None, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """A table as a DataFrame: optionally only one run's rows, rows whose columns equal ``where``
        and whose columns are among ``within``'s values, and only ``columns`` (a reader that shows
        a few runs reads those runs, not the history: the time stays flat as the history grows).

        Results and verdicts rows of a row schema this EdgeGate does not know are refused, not misread.
        """
        if table not in _TABLES:
            raise StoreError(f"no table {table!r} in the history; tables: {', '.join(_TABLES)}")
        conditions = {**({"run_id": run_id} if run_id else {}), **(where or {})}
        ranges = {name: sorted(set(values)) for name, values in (within or {}).items()}
        chosen = list(columns) if columns is not None else ["*"]
        if "*" not in chosen and "schema_version" in _columns(table):
            chosen.append("schema_version")
        unknown = (set(conditions) | set(ranges) | set(chosen)) - set(_columns(table)) - {"*"}
        if unknown:
            raise StoreError(f"table {table!r} has no column {', '.join(sorted(unknown))}")
        clauses = [f"{c} = :{c}" for c in conditions] + [f"{c} IN :in_{c}" for c in ranges]
        query = text(f"SELECT {', '.join(chosen)} FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else ""))
        if ranges:
            query = query.bindparams(*(bindparam(f"in_{c}", expanding=True) for c in ranges))
        params = {**conditions, **{f"in_{c}": values for c, values in ranges.items()}}
        with self._read() as db:
            frame = pd.read_sql_query(query, db, params=params or None)
        if "schema_version" in frame.columns:
            _check_row_versions(self.label, table, frame)
        return frame

    def newest_runs(self, count: int = 5) -> list[str]:
        """The ``count`` newest run ids, newest first (for messages that name what exists)."""
        with self._read() as db:
            rows = db.execute(text("SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT :n"),
                              {"n": count}).fetchall()
        return [row[0] for row in rows]

    def require_run(self, run_id: str) -> None:
        """StoreError naming ``run_id`` and the newest runs when the history has no such run."""
        with self._read() as db:
            found = db.execute(text("SELECT 1 FROM runs WHERE run_id = :r"), {"r": run_id}).fetchone()
        if found is None:
            raise StoreError(f"{self.label}: no run {run_id!r}; newest: {', '.join(self.newest_runs()) or 'none'}")

    def promote(self, suite: str, device: str, variant: str, run_id: str, pinned: bool = False, note: str = "") -> None:
        """Record ``run_id`` as a baseline for suite/device/variant; pinning it unpins any other."""
        self.require_run(run_id)
        key = {"s": suite, "d": device, "v": variant}
        with self._write() as db:
            if pinned:
                db.execute(text(f"UPDATE baselines SET pinned = 0 WHERE {_KEY}"), key)
            db.execute(text("INSERT INTO baselines VALUES (:s, :d, :v, :r, :p, :t, :n) "
                            "ON CONFLICT (suite, device, variant, run_id) DO UPDATE SET pinned = excluded.pinned, "
                            "promoted_at = excluded.promoted_at, note = excluded.note"),
                       {**key, "r": run_id, "p": int(pinned), "t": _now(), "n": note})

    def unpin(self, suite: str, device: str, variant: str) -> None:
        """Back to the default baseline (the last passing run on the main line)."""
        with self._write() as db:
            db.execute(text(f"UPDATE baselines SET pinned = 0 WHERE {_KEY}"), {"s": suite, "d": device, "v": variant})

    def pinned(self, suite: str, device: str, variant: str) -> str | None:
        """The run pinned as baseline for suite/device/variant, if any."""
        with self._read() as db:
            row = db.execute(text(f"SELECT run_id FROM baselines WHERE {_KEY} AND pinned = 1 "
                                  "ORDER BY promoted_at DESC LIMIT 1"), {"s": suite, "d": device, "v": variant}).fetchone()
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
        may): a disturbed measurement, an injected slowdown, a lost lease, "inconclusive", or a run
        not finished (still being written, or it crashed): half a run is never a baseline."""
        query = ("SELECT r.run_id, r.started_at, r.git_commit, r.branch, "
                 "MIN(CASE WHEN v.passed = 1 OR (v.verdict = 'blocked' AND v.expected IS NOT NULL) THEN 1 ELSE 0 END) "
                 "AS ok, MAX(CASE WHEN v.verdict = 'inconclusive' THEN 1 ELSE 0 END) AS inconclusive, "
                 "MAX(COALESCE(v.baseline_excluded, CASE WHEN v.verdict = 'inconclusive' THEN 'inconclusive' END, "
                 f"CASE WHEN r.finished_at IS NULL THEN '{NOT_FINISHED}' END)) "
                 "AS excluded FROM runs r JOIN verdicts v ON v.run_id = r.run_id "
                 "WHERE v.suite = :s AND v.device = :d AND v.variant = :v "
                 "GROUP BY r.run_id, r.started_at, r.git_commit, r.branch ORDER BY r.started_at DESC, r.run_id DESC")
        with self._read() as db:
            return pd.read_sql_query(text(query), db, params={"s": suite, "d": device, "v": variant})

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


def _check_row_versions(label: str, table: str, frame: pd.DataFrame) -> None:
    versions = set(frame.schema_version.dropna().astype(int)) - {RESULT_SCHEMA_VERSION}
    if versions:
        raise StoreError(
            f"{label}: {table} rows of schema version {', '.join(map(str, sorted(versions)))} are not ones this "
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


def _plain(value: Any) -> Any:
    """A pandas cell as the database takes it: NaN and NaT as NULL, numpy scalars as Python's."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return value.item() if hasattr(value, "item") else value


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return value
