"""``edgegate history export|import``: move a history between files and databases, counts checked.

``export`` writes one table (by default ``results``, one row per measurement) to CSV or Parquet
through pandas. ``import --from SOURCE`` copies every table of another history (a SQLite file
or a postgresql:// URL; SQLite -> PostgreSQL when a team grows) into this one, in one
transaction, and checks that each table grew by exactly the rows the source holds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError
from ..store import TABLES, HistoryStore
from ..store_sql import add_history_argument, history_location

DEFAULT = Path("reports/history.sqlite")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("history", help="export a history's results, or import another history")
    parser.add_argument("action", choices=("export", "import"))
    add_history_argument(parser)
    parser.add_argument("--format", choices=("csv", "parquet"), default=None, help="export: the file's format "
                        "(default: from --output's suffix)")
    parser.add_argument("--output", type=Path, help="export: the file to write")
    parser.add_argument("--table", default="results", choices=TABLES, help="export: which table (default: results)")
    parser.add_argument("--from", dest="source", metavar="FILE_OR_URL", help="import: the history to copy from")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    target = HistoryStore(history_location(args.history, DEFAULT))
    return _export(target, args, out) if args.action == "export" else _import(target, args, out)


def _export(store: HistoryStore, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    if args.output is None:
        raise StoreError("history export needs --output FILE")
    output = args.output if args.format is None else args.output.with_suffix(f".{args.format}")
    written = store.export(output, args.table)
    rows = store.counts()[args.table]
    out(f"exported {rows} {args.table} rows of {store.label} to {written}")
    return 0


def _import(target: HistoryStore, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    if not args.source:
        raise StoreError("history import needs --from FILE_OR_URL (the history to copy)")
    location = history_location(args.source, DEFAULT)
    if isinstance(location, Path) and not location.exists():
        raise StoreError(f"{location}: no history there")
    source = HistoryStore(location)
    before, frames = target.counts(), {table: source.frame(table) for table in TABLES}
    after = target.append_tables(frames)
    arrived = {table: after[table] - before[table] for table in TABLES}
    short = {t: (arrived[t], len(frames[t])) for t in TABLES if arrived[t] != len(frames[t])}
    if short:
        raise StoreError(f"{target.label}: import incomplete: " + ", ".join(
            f"{t}: {got} of {want} rows" for t, (got, want) in short.items()))
    out(f"imported into {target.label} from {source.label}: " +
        ", ".join(f"{arrived[t]} {t}" for t in TABLES) + " (every table's count checked)")
    return 0
