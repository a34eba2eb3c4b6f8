"""``edgegate report [RUN_ID]``: render (again) the HTML report of a run from the history."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError
from ..report import render_run
from ..store import HistoryStore
from ..store_sql import add_history_argument, history_location


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="render the HTML report of a past run")
    parser.add_argument("run_id", nargs="?", help="run id (default: the newest run)")
    add_history_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for runs/<id>.html and latest.html")
    parser.add_argument("--templates", type=Path, default=None, help="folder with a report.html.j2 to use instead")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    location = history_location(args.history, Path("reports/history.sqlite"))
    if isinstance(location, Path) and not location.exists():
        raise StoreError(f"{location}: no history here; run a suite first or pass --history")
    store = HistoryStore(location)
    runs = store.frame("runs", columns=("run_id", "started_at")).sort_values("started_at")
    run_id = args.run_id or (runs.run_id.iloc[-1] if len(runs) else None)
    if run_id is None or run_id not in set(runs.run_id):
        raise StoreError(f"{store.label}: no run {run_id!r}; known: {', '.join(runs.run_id[-5:]) or 'none'}")
    out(str(render_run(store, run_id, args.out, args.templates)))
    return 0
