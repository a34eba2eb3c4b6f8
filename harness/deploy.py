"""Content-addressed upload: a folder of files lands under its hash, verified, renamed in whole.

A tree (variant, runner, wheels) is uploaded into a temporary sibling, every file's sha256 is
computed on the device and compared, and only then is the folder renamed to its final name. A
final folder therefore always holds verified content; it is re-verified (not re-sent) on the
next deploy, so a redeploy sends 0 bytes and a file damaged on the device is sent again.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from . import progress
from .errors import DeployError, TransportError
from .variants.cache import file_sha256

VERIFY_TIMEOUT_S = 600.0
_checked: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, so a run hashes each file once


class FileTransport(Protocol):
    """What deploying needs from a transport."""

    def run(self, argv: list[str], timeout_s: float | None = None, stdin: bytes | None = None,
            check: bool = False) -> object: ...

    def put(self, local: Path, remote: str) -> int: ...

    def device_path(self, *parts: str) -> str: ...


@dataclass(frozen=True)
class DeployResult:
    remote_dir: str
    bytes_sent: int
    files_sent: int
    reused: bool
    attempts: int


def tree_digest(hashes: Mapping[str, str]) -> str:
    """The identity of a folder: its relative file names and their contents' hashes."""
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}\0{hashes[name]}\n".encode())
    return digest.hexdigest()


def deploy_tree(transport: FileTransport, files: Mapping[str, Path], kind: str,
                hashes: Mapping[str, str] | None = None, attempts: int = 3, label: str | None = None) -> DeployResult:
    """Make ``files`` (relative name -> local path) present under ``<work_dir>/<kind>/<digest>``;
    ``label`` (e.g. the variant's name) is what the progress bar and its result line call them."""
    known = dict(hashes) if hashes else {name: file_sha256(path) for name, path in files.items()}
    _check_names(known)
    target = transport.device_path(kind, tree_digest(known)[:32])
    what = f"{label or kind} to {getattr(getattr(transport, 'profile', None), 'name', 'the device')}"
    if _verified(transport, target, known):
        progress.say(f"{what}: already there, verified (0 bytes sent)", progress.DETAIL)
        return DeployResult(target, 0, 0, True, 0)
    if hashes:
        check_local_files(files, known)  # a damaged local copy would fail every attempt on the device
    with progress.task("upload", what, total=sum(path.stat().st_size for path in files.values())) as upload:
        result = _send_verified(transport, files, known, target, attempts)
        rate = result.bytes_sent / max(upload.elapsed, 1e-6) / 1e6
        again = f", {result.attempts} attempts" if result.attempts > 1 else ""
        upload.finish(f"uploaded {what}: {result.bytes_sent / 1e6:.1f} MB in {upload.elapsed:.1f} s "
                      f"({rate:.1f} MB/s{again})")
    return result


def _send_verified(transport: FileTransport, files: Mapping[str, Path], known: Mapping[str, str], target: str,
                   attempts: int) -> DeployResult:
    """Upload into a scratch folder, verify, publish; again when verification fails."""
    sent = 0
    for attempt in range(1, attempts + 1):
        scratch = f"{target}.tmp-{secrets.token_hex(4)}"
        try:
            sent += _upload(transport, files, scratch)
        except TransportError as exc:  # a full disk, a dropped link: retrying the same bytes will not help
            _remove(transport, scratch)
            raise DeployError(f"upload to {target} failed, partial upload removed: {exc}") from None
        if _verified(transport, scratch, known):
            _publish(transport, scratch, target)
            return DeployResult(target, sent, len(files), False, attempt)
        _remove(transport, scratch)
    raise DeployError(f"upload to {target} failed verification {attempts} times (the sha256 computed on the "
                      f"device differs from the file sent: the device's storage or the link damages data)")


def check_local_files(files: Mapping[str, Path], hashes: Mapping[str, str]) -> None:
    """Every local file must still hash to what its manifest recorded; DeployError names the first that does not."""
    for name, path in files.items():
        try:
            stat = path.stat()
            memo = (str(path), stat.st_size, stat.st_mtime_ns)
            digest = _checked.get(memo) or file_sha256(path)
        except OSError as exc:
            raise DeployError(f"cannot read {path}: {exc.strerror or exc}") from None
        if digest != hashes[name]:
            raise DeployError(f"{path} is damaged: its sha256 is {digest[:12]}..., its manifest says "
                              f"{hashes[name][:12]}...; delete {path.parent} to have it built again")
        _checked[memo] = digest


def _remove(transport: FileTransport, folder: str) -> None:
    """Best effort: a device that just failed may not answer this either."""
    try:
        transport.run(["rm", "-rf", "--", folder])
    except TransportError:
        pass


def _check_names(hashes: Mapping[str, str]) -> None:
    for name in hashes:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise DeployError(f"refusing to upload {name!r}: names must stay inside their folder")


def _upload(transport: FileTransport, files: Mapping[str, Path], scratch: str) -> int:
    folders = sorted({str(PurePosixPath(scratch, name).parent) for name in files})
    transport.run(["mkdir", "-p", "--", *folders], check=True)
    return sum(transport.put(path, str(PurePosixPath(scratch, name))) for name, path in files.items())


def _verified(transport: FileTransport, folder: str, hashes: Mapping[str, str]) -> bool:
    """True when every file exists in ``folder`` on the device with the expected sha256."""
    names = sorted(hashes)
    paths = [str(PurePosixPath(folder, name)) for name in names]
    result = transport.run(["sha256sum", "--", *paths], timeout_s=VERIFY_TIMEOUT_S)
    found = {}
    for line in getattr(result, "stdout", "").splitlines():
        digest, _, path = line.partition("  ")
        found[path] = digest.lstrip("\\")
    return all(found.get(path) == hashes[name] for path, name in zip(paths, names))


def _publish(transport: FileTransport, scratch: str, target: str) -> None:
    """Rename the verified folder into place; a stale (unverifiable) target is replaced."""
    script = 'rm -rf -- "$1" && mv -T -- "$2" "$1"'
    transport.run(["sh", "-c", script, "sh", target, scratch], check=True)
