"""The transport interface the rest of EdgeGate talks to."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """Runs commands and the on-device runner on one device, and puts files there."""

    def run(self, argv: Sequence[str], timeout_s: float | None = None, stdin: bytes | None = None,
            check: bool = False) -> CommandResult: ...

    def python(self) -> str: ...

    def device_path(self, *parts: str) -> str: ...

    def ensure_runner(self) -> None: ...

    def stage(self, folder: Path, hashes: Mapping[str, str]) -> str:
        """Make the artifact in ``folder`` available on the device; returns its folder there."""
        ...

    def run_job(self, job: dict[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def parse_events(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """The runner's JSON lines; anything else it printed comes through as a log event."""
    for raw in lines:
        line = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except ValueError:
            yield {"event": "log", "line": line}
