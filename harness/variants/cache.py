"""Content-addressed artifacts: a folder per (inputs' hash), built aside and renamed in whole."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BUILD_FORMAT = 1  # bump when a recipe's output changes for the same inputs


def cache_key(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything an artifact depends on."""
    canonical = json.dumps({"build_format": BUILD_FORMAT, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tool_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def code_hash(*modules: ModuleType) -> str:
    """sha256 of the source files of the modules that produce an artifact: a fix there rebuilds."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(inspect.getfile(module)).read_bytes())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names relative to it, and contents)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + file_sha256(item).encode())
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished artifact, or None when there is none (or it is unreadable)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None


def build_once(folder: Path, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Return ``folder``'s manifest, running ``build(tmp_dir)`` first if it does not exist.

    The build writes into a temporary sibling which is renamed into place only when complete,
    so an interrupted build leaves nothing that looks finished.
    """
    existing = read_manifest(folder)
    if existing is not None:
        return existing
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder):  # xdist workers on a cold cache: one builds, the others wait and reuse
        return read_manifest(folder) or _build(folder, build)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    import fcntl

    with open(folder.with_name(f"{folder.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def _build(folder: Path, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    scratch = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        manifest = {"format": MANIFEST_FORMAT, **build(scratch)}
        manifest["files"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(scratch.iterdir()) if p.is_file()
        }
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _publish(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return read_manifest(folder) or manifest


def _publish(scratch: Path, folder: Path) -> None:
    try:
        os.rename(scratch, folder)
    except OSError:
        if read_manifest(folder) is None:  # not a concurrent twin that finished first
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(scratch, folder)
