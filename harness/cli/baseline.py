"""``edgegate baseline promote|pin|unpin|show``: choose the run new runs are compared with."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..baselines import find_baseline
from ..store import HistoryStore
from ..store_sql import add_history_argument, history_location


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("baseline", help="promote, pin, unpin or show the baseline of a suite/device/variant")
    parser.add_argument("action", choices=("promote", "pin", "unpin", "show"))
    parser.add_argument("suite")
    parser.add_argument("device")
    parser.add_argument("variant")
    parser.add_argument("run_id", nargs="?", help="the run to promote or pin (promote/pin)")
    add_history_argument(parser)
    parser.add_argument("--note", default="")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    store = HistoryStore(history_location(args.history, Path("reports/history.sqlite")))
    key = (args.suite, args.device, args.variant)
    if args.action in ("promote", "pin"):
        if not args.run_id:
            out(f"baseline {args.action} needs a run id")
            return 2
        store.require_run(args.run_id)
        store.promote(*key, args.run_id, pinned=args.action == "pin", note=args.note)
    elif args.action == "unpin":
        store.unpin(*key)
    choice = find_baseline(store, *key)
    out(f"{'/'.join(key)}: " + (f"{choice.run_id} ({choice.reason})" if choice else "no baseline"))
    return 0
