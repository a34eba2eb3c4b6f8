"""``edgegate SUBCOMMAND ...`` (also ``python -m edgegate.cli``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import EdgeGateError
from . import baseline, compare, devices, history, report, variants


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="edgegate", description="EdgeGate: gate compressed LLMs on edge devices")
    subparsers = top.add_subparsers(dest="command", required=True)
    devices.add_parser(subparsers)
    report.add_parser(subparsers)
    compare.add_parser(subparsers)
    baseline.add_parser(subparsers)
    variants.add_parser(subparsers)
    history.add_parser(subparsers)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except EdgeGateError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
