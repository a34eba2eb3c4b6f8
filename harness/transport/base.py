"""The transport interface the rest of EdgeGate talks to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Transport(Protocol):
    """Runs the on-device runner with a job and yields its JSON-lines events as they arrive."""

    def run_job(self, job: dict[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]: ...

    def device_path(self, *parts: str) -> str: ...

    def close(self) -> None: ...
