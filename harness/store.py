"""The history: every run and every measurement, appended to one SQLite file; pandas out.

Rows are written as soon as a variant is measured, each in its own transaction, so a crash
later in the session loses nothing already measured. The file carries a schema version and an
unknown version is refused with an instruction rather than misread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import StoreError

SCHEMA_VERSION = 1

_TABLES = {
    "runs": "run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT, git_commit TEXT, suites TEXT, "
            "devices TEXT, exit_status INTEGER, environment TEXT",
    "results": "run_id TEXT, time TEXT, git_commit TEXT, suite TEXT, device TEXT, variant TEXT, metric TEXT, "
               "value REAL, unit TEXT, n INTEGER, p50 REAL, p90 REAL, p99 REAL, mean REAL, stdev REAL, "
               "ci_low REAL, ci_high REAL, samples TEXT, note TEXT, schema_version INTEGER",
    "verdicts": "run_id TEXT, time TEXT, suite TEXT, device TEXT, variant TEXT, passed INTEGER, "
                "breaches TEXT, error TEXT, schema_version INTEGER",
    "artifacts": "run_id TEXT, suite TEXT, variant TEXT, recipe TEXT, key TEXT, manifest TEXT",
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


class HistoryStore:
    """One SQLite file; safe for several writers (WAL, busy timeout, one transaction per write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: history schema version {row[0]} is not one this EdgeGate reads ({SCHEMA_VERSION}); "
                    f"use the EdgeGate release that wrote it, or point --edgegate-history at a new file"
                )
            for table, columns in _TABLES.items():
                db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the history: {exc}") from None
        return db

    def start_run(self, run: RunInfo) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO runs (run_id, started_at, git_commit, suites, devices, environment) VALUES (?,?,?,?,?,?)",
                (run.run_id, run.started_at, run.git_commit, json.dumps(run.suites), json.dumps(run.devices),
                 json.dumps(run.environment)),
            )

    def finish_run(self, run_id: str, finished_at: str, exit_status: int,
                   environment: dict[str, Any] | None = None) -> None:
        """Close the run; ``environment`` (when given) replaces what was recorded at the start."""
        with closing(self._connect()) as db, db:
            db.execute("UPDATE runs SET finished_at = ?, exit_status = ? WHERE run_id = ?", (finished_at, exit_status, run_id))
            if environment is not None:
                db.execute("UPDATE runs SET environment = ? WHERE run_id = ?", (json.dumps(environment), run_id))

    def append_results(self, rows: Iterable[dict[str, Any]]) -> None:
        records = [tuple(_cell(row.get(col)) for col in RESULT_COLUMNS) for row in rows]
        placeholders = ",".join("?" * len(RESULT_COLUMNS))
        with closing(self._connect()) as db, db:
            db.executemany(f"INSERT INTO results ({','.join(RESULT_COLUMNS)}) VALUES ({placeholders})", records)

    def append_verdict(self, row: dict[str, Any]) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?)",
                (row["run_id"], row["time"], row["suite"], row["device"], row["variant"], int(row["passed"]),
                 json.dumps(row.get("breaches", [])), row.get("error"), SCHEMA_VERSION),
            )

    def append_artifact(self, run_id: str, suite: str, variant: str, recipe: str, key: str, manifest: dict[str, Any]) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO artifacts VALUES (?,?,?,?,?,?)", (run_id, suite, variant, recipe, key, json.dumps(manifest)))

    def frame(self, table: str, run_id: str | None = None) -> pd.DataFrame:
        """A table as a DataFrame, optionally only one run's rows."""
        if table not in _TABLES:
            raise StoreError(f"no table {table!r} in the history; tables: {', '.join(_TABLES)}")
        query = f"SELECT * FROM {table}" + (" WHERE run_id = ?" if run_id else "")
        with closing(self._connect()) as db:
            return pd.read_sql_query(query, db, params=(run_id,) if run_id else None)


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return value
