"""``edgegate devices list|check|setup``: what is registered, is it ready, make it ready."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ..devicecheck import probe
from ..devicesetup import setup_device
from ..profiles import find_profile, registered_profiles
from ..runtimes import suite_backends
from ..suites import load_suite
from ..transport import open_transport


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="list, check and set up registered devices")
    parser.add_argument("action", choices=("list", "check", "setup"))
    parser.add_argument("name", nargs="?", help="device profile name (for check and setup)")
    parser.add_argument("--profiles", type=Path, default=Path("device_profiles"), help="folder of device profiles")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate"))
    parser.add_argument("--accept-new-host-key", action="store_true", help="trust a host key seen for the first time")
    parser.add_argument("--suite", action="append", type=Path, default=[], metavar="FILE",
                        help="setup: also install the runtimes this suite's variants use (repeatable)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """0 when the action succeeded (for check: the device is ready), 1 otherwise."""
    if args.action == "list":
        for name, path in registered_profiles(args.profiles).items():
            out(f"{name}\t{path}")
        return 0
    if not args.name:
        out(f"devices {args.action} needs a device name")
        return 2
    profile = find_profile(args.name, args.profiles)
    transport = open_transport(profile, accept_new_host_key=args.accept_new_host_key)
    try:
        if args.action == "check":
            report = probe(profile.name, transport, profile.execution_providers, profile.threads)
        else:
            base = profile.python if profile.python not in ("", "auto") else "python3"
            report = setup_device(profile.name, transport, args.cache, base_python=base, log=out,
                                  backends=suite_backends(load_suite(path) for path in args.suite))
    finally:
        transport.close()
    out(report.explain())
    return 0 if report.ready else 1
