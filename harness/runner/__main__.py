"""``python -m <runner package>``: read a job on stdin, stream JSON lines on stdout."""

from __future__ import annotations

import json
import platform
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from . import measure, sensors
from .backends import BACKENDS

PROTOCOL = 1


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run_job(job: dict[str, Any]) -> int:
    """Run every measurement of ``job``; one failing measurement does not stop the others."""
    emit({"event": "start", "protocol": PROTOCOL, "python": platform.python_version()})
    failures = _guarded("size", lambda: measure.model_size(job["model"]))
    backend_type = BACKENDS[job.get("backend", "onnxruntime")]
    try:
        backend, events = measure.load(lambda: backend_type(job["model"], job["providers"], job["threads"]))
    except Exception as exc:  # noqa: BLE001 - reported to the host, which decides
        emit(_error("load", exc))
        emit({"event": "done", "failures": failures + 1})
        return 1
    for event in events:
        emit(event)
    wanted = job.get("measurements", {})
    steps: list[tuple[str, Callable[[], Iterable[dict[str, Any]]]]] = [
        ("prefill", lambda: measure.prefill(backend, wanted["prefill"])),
        ("decode", lambda: measure.decode(backend, wanted["decode"])),
        ("peak_rss", measure.peak_rss),
        ("power", lambda: sensors.power(job.get("power", {}))),
        ("accuracy", lambda: measure.accuracy(backend, wanted["accuracy"])),
    ]
    for name, step in steps:
        if name in wanted or name in ("peak_rss", "power"):
            failures += _guarded(name, step)
    emit({"event": "done", "failures": failures})
    return 0


def _guarded(name: str, step: Callable[[], Iterable[dict[str, Any]]]) -> int:
    try:
        for event in step():
            emit(event)
    except Exception as exc:  # noqa: BLE001 - reported to the host, which decides
        emit(_error(name, exc))
        return 1
    return 0


def _error(measurement: str, exc: BaseException) -> dict[str, Any]:
    return {
        "event": "error",
        "measurement": measurement,
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(limit=6),
    }


def main() -> int:
    job = json.loads(sys.stdin.read())
    return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
