"""``python -m <runner package>``: read a job on stdin, stream JSON lines on stdout."""

from __future__ import annotations

import gc
import json
import platform
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from . import accuracy, embedding, generic, measure, sensors, thermal
from .backends import BACKENDS
from .entrypoints import BrokenPlugin
from .events import emit, metric
from .protocol import PROTOCOL_VERSION, refusal

REFUSED_EXIT = 2  # a job of a protocol version this runner does not speak
POWER_METRICS = (("power_w", "W"), ("power_peak_w", "W"), ("power_idle_w", "W"),
                 ("energy_per_token_j", "J"), ("energy_per_prefill_j", "J"))


def run_job(job: dict[str, Any]) -> int:
    """Run every measurement of ``job``; one failing measurement does not stop the others."""
    _start()
    sysfs_root = job.get("sysfs_root", "/")
    before = thermal.snapshot(sysfs_root)
    peaks = thermal.PeakSampler(sysfs_root).start()  # the hottest readings during the run, not only at its ends
    sensor = sensors.open_sensor({**job.get("power", {}), "sysfs_root": sysfs_root})
    failures = _guarded("size", lambda: measure.model_size(job["model"]))
    if isinstance(sensor, sensors.Unavailable):
        for name, unit in POWER_METRICS:
            emit(metric(name, None, unit, note=f"unavailable: {sensor.reason}"))
        sensor = None
    else:
        failures += _guarded("idle power", lambda: [_idle_metric(sensor)])
    try:
        backend_type = BACKENDS[job.get("backend", "onnxruntime")]
        backend, events = measure.load(lambda: backend_type(job["model"], job["providers"], job["threads"],
                                                            float(job.get("inject_slowdown", 0.0))))
    except Exception as exc:  # noqa: BLE001 - reported to the host, which decides
        event = _error("load", exc)
        if isinstance(exc, ImportError):
            event["message"] += (f" (the {job.get('backend')} runtime is not installed here: "
                                 f"`edgegate devices setup <device> --suite <suite>` installs what a suite's variants use)")
        emit(event)
        peaks.stop()
        emit({"event": "done", "failures": failures + 1})
        return 1
    for event in events:
        emit(event)
    emit({"event": "settings", "settings": {"gc_enabled": gc.isenabled(), "warmup": {
        name: entry["warmup"] for name, entry in job.get("measurements", {}).items() if "warmup" in entry}}})
    def open_model(model: str, slowdown: float = 0.0) -> Any:  # for the paired decode: without spinning
        return backend_type(model, job["providers"], job["threads"], slowdown, spin=False)

    def open_candidate() -> Any:
        return open_model(job["model"], float(job.get("inject_slowdown", 0.0)))

    region = {"disturbance": job.get("disturbance") or {}, "sysfs_root": sysfs_root}
    wanted = {name: {**entry, **region} for name, entry in job.get("measurements", {}).items()}
    failures += _measure_all(backend, wanted, sensor, open_model, open_candidate, job.get("inputs"))
    during = peaks.stop()
    after = thermal.snapshot(sysfs_root)
    failures += _guarded("thermal", lambda: _thermal_events(before, after, during))
    emit({"event": "done", "failures": failures})
    return 0


def _measure_all(backend: Any, wanted: dict[str, Any], sensor: Any, open_model: Callable[[str], Any],
                 open_candidate: Callable[[], Any], inputs: dict[str, Any] | None = None) -> int:
    feeds: dict[str, Any] = {}  # a generic model's input arrays, read once for both of its steps

    def generic_inputs() -> dict[str, Any]:
        if not feeds:
            feeds.update(generic.read_inputs(inputs or {}))
        return feeds

    steps: list[tuple[str, Callable[[], Iterable[dict[str, Any]]]]] = [
        ("prefill", lambda: measure.prefill(backend, wanted["prefill"], sensor)),
        ("decode", lambda: measure.decode(backend, wanted["decode"], sensor)),
        ("embed", lambda: embedding.latency(backend, wanted["embed"], sensor)),
        ("infer", lambda: generic.latency(backend, wanted["infer"], generic_inputs(), sensor)),
        ("peak_rss", measure.peak_rss),
        ("accuracy", lambda: accuracy.accuracy(backend, wanted["accuracy"])),
        ("similarity", lambda: embedding.similarity(backend, wanted["similarity"])),
        ("agreement", lambda: generic.agreement(backend, wanted["agreement"], generic_inputs())),
        ("bandwidth", lambda: measure.bandwidth(wanted["bandwidth"])),
        # last: its extra sessions must not count in peak_rss, nor its time delay the accuracy
        ("paired_decode", lambda: measure.paired_decode(open_candidate, open_model, wanted["paired_decode"])),
    ]
    return sum(_guarded(name, step) for name, step in steps if name in wanted or name == "peak_rss")


def _thermal_events(before: dict[str, Any], after: dict[str, Any], during: dict[str, float]) -> list[dict[str, Any]]:
    found = thermal.warnings(before, after, during)
    alarms = [w for w in found if not w.startswith("note:")]
    temps = list(after.get("zones", {}).values()) + list(during.values())
    return [
        {"event": "thermal", "before": before, "after": after, "during_max": during, "warnings": found},
        metric("thermal_warnings", float(len(alarms)), "", note="; ".join(found) or None),
        metric("temp_max_c", max(temps) if temps else None, "C",
               note="hottest zone reading, sampled every 0.5 s during the run" if temps
               else "unavailable: no readable /sys/class/thermal zone"),
    ]


def _idle_metric(sensor: Any) -> dict[str, Any]:
    """Idle watts before the model loads, with how they were had, or why there are none, in the note."""
    summary = sensors.idle_summary(sensor)
    return metric("power_idle_w", summary["avg_w"], "W", note=f"1 s before loading the model; {summary['method']}")


def _guarded(name: str, step: Callable[[], Iterable[dict[str, Any]]]) -> int:
    try:
        for event in step():
            emit(event)
    except Exception as exc:  # noqa: BLE001 - reported to the host, which decides
        emit(_error(name, exc))
        return 1
    return 0


def _error(measurement: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, BrokenPlugin):  # its one line names the entry point; a traceback into importlib would not
        return {"event": "error", "measurement": measurement, "message": str(exc)}
    return {
        "event": "error",
        "measurement": measurement,
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(limit=6),
    }


def _start() -> None:
    emit({"event": "start", "protocol": PROTOCOL_VERSION, "python": platform.python_version()})


def main() -> int:
    job = json.loads(sys.stdin.read())
    refused = refusal(job)
    if refused is not None:  # measured on a job it may misread, a runner would give figures no one can trust
        _start()
        emit(refused)
        emit({"event": "done", "failures": 1})
        return REFUSED_EXIT
    return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
