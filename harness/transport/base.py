"""The transport interface the rest of EdgeGate talks to."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import RunnerError
from ..runner.protocol import decode_line, start_mismatch

RUNNER_OUTPUT = logging.getLogger("edgegate.runner_output")  # what a runner printed that is not an event


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


def parse_events(lines: Iterable[str | bytes], device: str = "the device") -> Iterator[dict[str, Any]]:
    """The runner's JSON lines. Anything else it printed (a runtime library writing to stdout) is
    logged with the device's name on ``RUNNER_OUTPUT`` and comes through as a log event, and an
    event glued to it is kept; a runner of another protocol version raises RunnerError at its start."""
    for raw in lines:
        event, stray = decode_line(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        if stray:
            RUNNER_OUTPUT.warning("runner on %s printed: %s", device, stray[:2000])
            yield {"event": "log", "line": stray}
        if event is None:
            continue
        mismatch = start_mismatch(event)
        if mismatch:
            raise RunnerError(f"runner on {device}: {mismatch}")
        yield event


_SIGNAL_HINTS = {
    signal.SIGKILL: "; on a device this is most often the out-of-memory killer (`dmesg` there says so)",
    signal.SIGSEGV: ": it crashed (a segmentation fault in the runtime or a native library)",
    signal.SIGBUS: ": it crashed (a bus error, e.g. a model file truncated while mapped)",
    signal.SIGABRT: ": it aborted (a failed assertion in the runtime or a native library)",
}


def describe_end(code: int | None, signum: int | None = None) -> str:
    """How a runner process ended, in words: its exit code, or the signal that killed it."""
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}{_SIGNAL_HINTS.get(signum, '')}"  # type: ignore[call-overload]
    return f"exited with {code}"


class Watchdog:
    """Calls ``action`` once when ``restart`` has not been called for ``timeout_s``."""

    def __init__(self, timeout_s: float, action: Callable[[], object]) -> None:
        self.timeout_s = timeout_s
        self.action = action
        self.fired = False
        self._stopped = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.restart()

    def restart(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if not self.fired:
                self._timer = threading.Timer(self.timeout_s, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped or self.fired:
                return
            self.fired = True
        self.action()
