"""What differs between the history's two databases: SQLite (a file) and PostgreSQL (a URL).

Everything else in :mod:`edgegate.store` is the same SQL on both, through SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url

from .errors import StoreError

HISTORY_ENV = "EDGEGATE_HISTORY"  # where CI keeps the URL (and its password) as a secret
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
SCHEMA_LOCK = 0x45444745  # "EDGE": the advisory lock that serialises schema checks and migrations
DB_ERRORS = (sqlalchemy.exc.SQLAlchemyError, OSError)
INTEGRITY_ERRORS = (sqlalchemy.exc.IntegrityError,)
# SQLite's column types as PostgreSQL spells them (REAL there is 4 bytes; INTEGER 4 bytes too)
POSTGRES_TYPES = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}


def history_location(value: str | None, default: Path, base: Path | None = None) -> Path | str:
    """Where the history is: ``value`` (an option), else $EDGEGATE_HISTORY, else ``default``; a URL
    stays as it is, a path is made absolute (relative to ``base`` when given)."""
    import os

    chosen = value or os.environ.get(HISTORY_ENV) or default
    if is_url(chosen):
        return str(chosen)
    path = Path(chosen).expanduser()
    return (base / path if base and not path.is_absolute() else path).resolve()


def add_history_argument(parser: Any) -> None:
    """``--history`` for every CLI subcommand that reads or writes the history (one definition)."""
    parser.add_argument("--history", default=None, metavar="FILE_OR_URL",
                        help=f"a SQLite file or a postgresql:// URL (default: ${HISTORY_ENV}, else "
                             f"reports/history.sqlite)")


def is_url(location: Path | str) -> bool:
    return "://" in str(location)


def open_engine(location: Path | str) -> tuple[Engine, str]:
    """An engine for a SQLite file (a path) or a PostgreSQL URL, and how to name it in messages."""
    if not is_url(location):
        return _sqlite(Path(location)), str(location)
    url = make_url(str(location))
    if url.drivername not in POSTGRES_SCHEMES:
        raise StoreError(f"{url.render_as_string(hide_password=True)}: the history is a SQLite file path or a "
                         f"postgresql:// URL, not {url.drivername}://")
    url = url.set(drivername="postgresql+psycopg")
    try:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except ImportError:
        raise StoreError("a PostgreSQL history needs psycopg: pip install 'edgegate[postgresql]'") from None
    return engine, url.render_as_string(hide_password=True)


def _sqlite(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 60},
                                      poolclass=sqlalchemy.pool.NullPool)  # a fresh connection each time

    @event.listens_for(engine, "connect")
    def _wal(connection: Any, _record: Any) -> None:
        connection.isolation_level = None  # transactions begin where this module says, not in the driver
        connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("immediate") else "BEGIN")

    return engine


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other process checks or migrates the schema beside: SQLite's
    BEGIN IMMEDIATE (one writer), PostgreSQL's transaction-scoped advisory lock."""
    with engine.connect() as connection:
        connection.info["immediate"] = True
        try:
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                yield connection
        finally:
            connection.info.pop("immediate", None)


def column_types(columns: str, connection: Connection) -> str:
    """A column list in this database's types."""
    if connection.dialect.name != "postgresql":
        return columns
    return re.sub(r"\b(REAL|INTEGER)\b", lambda m: POSTGRES_TYPES[m.group(1)], columns)


def column_names(connection: Connection, table: str) -> set[str]:
    return {column["name"] for column in sqlalchemy.inspect(connection).get_columns(table)}


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" (another process holds the file right now)."""
    return "database is locked" in str(getattr(exc, "orig", None) or exc)


def reason(exc: BaseException) -> str:
    """A database error in one line, without the SQL and parameters SQLAlchemy appends."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
