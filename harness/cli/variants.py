"""``edgegate variants build SUITE`` and ``edgegate variants list``: the factory without measuring."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..suites import load_suite
from ..variants.cache import MANIFEST
from ..variants.factory import VariantFactory


def default_cache() -> Path:
    return Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("variants", help="build a suite's variants, or list the built ones")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build (or find in the cache) every variant a suite declares")
    build.add_argument("suite", type=Path)
    build.add_argument("--only", action="append", metavar="VARIANT", help="build just this variant (repeatable)")
    listing = actions.add_parser("list", help="list the built variants in the cache")
    listing.add_argument("--suite", type=Path, help="only this suite's variants, cached or not")
    for sub in (build, listing):
        sub.add_argument("--cache", type=Path, default=default_cache(), help="build cache (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    return build(args, out) if args.action == "build" else list_variants(args, out)


def build(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    suite = load_suite(args.suite)
    factory = VariantFactory(suite, args.cache, log=lambda line: out(f"  {line}"))
    names = args.only or [v.name for v in suite.variants]
    unknown = [name for name in names if name not in {v.name for v in suite.variants}]
    if unknown:
        raise ConfigError(args.suite, "variants", f"no variant {unknown[0]!r}; the suite has "
                                                  f"{', '.join(v.name for v in suite.variants)}")
    rows = []
    for name in names:
        started = time.perf_counter()
        artifact = factory.artifact(suite.variant(name))
        rows.append([name, artifact.recipe, artifact.key[:16], f"{time.perf_counter() - started:.2f}",
                     _megabytes(artifact.manifest), str(artifact.folder)])
    out(_table(["variant", "recipe", "key", "seconds", "MB", "folder"], rows))
    return 0


def list_variants(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    if args.suite:
        suite = load_suite(args.suite)
        factory = VariantFactory(suite, args.cache)
        rows = [[v.name, *_cached_row(factory, v.name)] for v in suite.variants]
        out(_table(["variant", "recipe", "key", "built", "MB", "build s"], rows))
        return 0
    rows = [_manifest_row(folder) for folder in sorted((args.cache / "variants").glob("*-*"))
            if (folder / MANIFEST).is_file()]
    out(_table(["recipe", "key", "built", "MB", "build s", "params"], rows) if rows else f"no variants in {args.cache}")
    return 0


def _cached_row(factory: VariantFactory, name: str) -> list[str]:
    spec = factory.suite.variant(name)
    key, folder = factory.planned(spec)
    manifest = _read(folder)
    if manifest is None:
        return [spec.recipe, key[:16], "not built", "", ""]
    return [spec.recipe, key[:16], manifest.get("built_at", "?"), _megabytes(manifest),
            str(manifest.get("build_seconds", ""))]


def _manifest_row(folder: Path) -> list[str]:
    manifest = _read(folder) or {}
    return [str(manifest.get("recipe")), str(manifest.get("key", ""))[:16], str(manifest.get("built_at", "?")),
            _megabytes(manifest), str(manifest.get("build_seconds", "")),
            json.dumps(manifest.get("params", {}), sort_keys=True)]


def _read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _megabytes(manifest: dict[str, Any]) -> str:
    files = manifest.get("files", {})
    return f"{sum(f['bytes'] for name, f in files.items() if name != 'tokenizer.json') / 1e6:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
