"""What the host and the runner say to each other: one job (JSON on the runner's stdin), then one
JSON object per line on its stdout. Standard library only: this module ships with the runner.

Both sides read this module: the host (``edgegate.jobs``) stamps ``PROTOCOL_VERSION`` on every
job and checks the runner's ``start`` event; the runner (``__main__``) refuses a job of a version
it does not know, with an ``error`` event saying what to do, and exits non-zero. A runner and a
host of different versions meet where a local profile's ``python:`` is another installation, or a
runner was copied by hand: without the check, fields one side adds are silently ignored by the
other. A change that an older runner would misread (a field it must not ignore, a unit that
changes) raises ``PROTOCOL_VERSION``; adding an optional field does not.

A line that is not JSON (a runtime library printing on stdout) is not an event: the host logs it
with the device's name (``stray_output``), and recovers an event glued to the end of it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypedDict

PROTOCOL_VERSION = 1
KNOWN_VERSIONS = (1,)  # the job versions this runner can run
SETUP_HINT = "run `edgegate devices setup <device>` (or upgrade EdgeGate where the runner's Python has it)"
_EVENT_START = '{"event"'  # where a JSON event begins inside a line a library printed into


class PowerSettings(TypedDict, total=False):
    kind: str  # a built-in sensor (sensors.py) or an edgegate.sensors entry point
    command: str | None  # kind "command": prints watts
    sysfs_root: str


class Job(TypedDict, total=False):
    """What the runner measures: ``measurements`` maps a measurement (prefill, decode, embed,
    accuracy, similarity, bandwidth, paired_decode) to its settings (jobs.py writes them)."""

    protocol: int  # absent: a host older than the field, protocol 1
    model: str  # the model file on the device
    backend: str  # a built-in backend (backends/__init__.py) or an edgegate.backends entry point
    providers: list[str]
    threads: int
    power: PowerSettings
    inject_slowdown: float
    disturbance: dict[str, Any]
    sysfs_root: str
    measurements: dict[str, dict[str, Any]]


class StartEvent(TypedDict):
    event: str  # "start"
    protocol: int
    python: str


class MetricEvent(TypedDict, total=False):
    """``value`` None: unavailable, the reason in ``note``; the other fields as events.metric says."""

    event: str  # "metric"
    name: str
    value: float | None
    unit: str
    samples: list[float] | None
    note: str | None
    disturbed: str | None  # why the timed region stayed disturbed; None: clean
    attempts: int
    unit_size: int
    unsupported: bool
    n: int
    ci_low: float
    ci_high: float
    ci_unit: str
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float


class ErrorEvent(TypedDict, total=False):
    event: str  # "error"
    measurement: str  # which step failed: load, prefill, ..., or "protocol"
    message: str
    traceback: str  # absent where the message says all (a refused job, a broken plugin)


class SettingsEvent(TypedDict):
    event: str  # "settings"
    settings: dict[str, Any]  # the runtime's settings, merged into the variant's


class RetryEvent(TypedDict):
    event: str  # "retry": a timed region was disturbed and is measured again
    attempt: int
    wait_s: float
    why: list[str]


class ThermalEvent(TypedDict):
    event: str  # "thermal"
    before: dict[str, Any]
    after: dict[str, Any]
    during_max: dict[str, float]
    warnings: list[str]


class DoneEvent(TypedDict):
    event: str  # "done": the last line
    failures: int


class LogEvent(TypedDict):
    event: str  # "log": made by the host from a line that was not JSON, never sent by the runner
    line: str


if TYPE_CHECKING:  # a runtime union of TypedDicts needs Python 3.10; the runner runs on 3.9
    Event = StartEvent | MetricEvent | ErrorEvent | SettingsEvent | RetryEvent | ThermalEvent | DoneEvent | LogEvent
EVENT_KINDS = ("start", "metric", "error", "settings", "retry", "thermal", "done")


def job_version(job: dict[str, Any]) -> int | str:
    """The job's protocol version as sent (1 for a job without one)."""
    version = job.get("protocol", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else str(version)


def refusal(job: dict[str, Any]) -> ErrorEvent | None:
    """The runner's answer to a job of a protocol version it does not speak; None when it does."""
    version = job_version(job)
    if version in KNOWN_VERSIONS:
        return None
    return {"event": "error", "measurement": "protocol",
            "message": f"this runner speaks protocol {PROTOCOL_VERSION}, the job is protocol {version}: the runner "
                       f"and the host are different EdgeGate versions; {SETUP_HINT}"}


def start_mismatch(event: dict[str, Any]) -> str | None:
    """Why the host cannot use a runner whose ``start`` event says another protocol; None when it can."""
    version = event.get("protocol")
    if event.get("event") != "start" or version == PROTOCOL_VERSION:
        return None
    return (f"the runner speaks protocol {version}, this EdgeGate protocol {PROTOCOL_VERSION}: the runner and the "
            f"host are different EdgeGate versions; {SETUP_HINT}")


def decode_line(line: str) -> tuple[dict[str, Any] | None, str]:
    """(the event on ``line`` or None, whatever else the line held: stray output, "" when none).

    A library that prints without a newline glues its text to the next event: the event after it
    is kept, not lost with the text."""
    text = line.strip()
    if not text:
        return None, ""
    for start in _event_starts(text):
        try:
            event = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(event, dict):
            return event, text[:start].strip()
    return None, text


def _event_starts(text: str) -> list[int]:
    """Where an event may begin: the line's start, then each ``{"event"`` inside it."""
    starts = [0]
    found = text.find(_EVENT_START, 1)
    while found != -1:
        starts.append(found)
        found = text.find(_EVENT_START, found + 1)
    return starts
