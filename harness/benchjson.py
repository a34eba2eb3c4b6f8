"""A run's device measurements as pytest-benchmark JSON files, so its own tooling reads them.

pytest-benchmark users already know ``pytest-benchmark compare``, its tables and histograms; writing
one file per device in its storage layout (``<machine_id>/<NNNN>_<name>.json``) lets them use all of
that on EdgeGate runs. The statistics are computed by pytest-benchmark's own ``Stats`` so every
column means exactly what it means there; samples are converted to seconds, its unit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
import pytest_benchmark
from pytest_benchmark.stats import Stats

from .errors import StoreError
from .store import HistoryStore

# The timer is the runner's code (measure.py, embedding.py), the same for every run. The other
# options are the run's own, from what its history records; where it records nothing they are null,
# never a guessed constant, and the document's "edgegate_unrecorded" says why.
_TIMER = "time.perf_counter_ns (on device)"
_COUNTER = re.compile(r"^(\d{4})_")
# A latency metric's warm-up is the measurement that produced it (its job's ``warmup`` steps).
_MEASUREMENT = {"prefill_ms": "prefill", "ttft_ms": "prefill", "decode_ms": "decode", "embed_ms": "embed",
                "infer_ms": "infer"}
_WHY_NO_WARMUP = ("the warm-up count of this measurement is not in the run's history (neither per result row "
                  "nor in the variant's recorded settings)")
_WHY_NO_GC = "whether the garbage collector ran during the timed calls is not in the run's history"
_WHY_NO_IMPLEMENTATION = ("the python implementation is not in this device's recorded facts (the device probe "
                          "and the host manifest record only python's version)")
_WHY_NO_BRANCH = "the run recorded no branch (a detached HEAD with no CI branch variable, or an older history)"


def write_run(store: HistoryStore, run_id: str, storage: Path,
              local_devices: Collection[str] = ("local",)) -> list[Path]:
    """Write one file per device of the run; ``local_devices`` are the ones the host facts describe."""
    run = store.frame("runs", run_id)
    if run.empty:
        raise StoreError(f"no run {run_id!r} in {store.path}")
    info = run.iloc[0]
    results = store.frame("results", run_id)
    environment = json.loads(info["environment"] or "{}")
    written: list[Path] = []
    for device in json.loads(info["devices"] or "[]"):
        document = {
            "machine_info": _machine_info(device, environment, device in local_devices),
            "commit_info": _commit_info(str(info["git_commit"] or "unknown"), info["started_at"], _text(info["branch"])),
            "benchmarks": _benchmarks(results[results.device == device], device, environment.get("variants") or {}),
            "datetime": info["started_at"],
            "version": pytest_benchmark.__version__,
        }
        document["edgegate_unrecorded"] = _unrecorded(document)
        folder = storage / machine_id(device)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_next_counter(folder):04d}_{run_id}.json"
        path.write_text(json.dumps(document, indent=4), encoding="utf8")
        written.append(path)
    return written


def machine_id(device: str) -> str:
    """A folder name per device: pytest-benchmark groups saved runs by machine folder."""
    return "edgegate-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device)


def _next_counter(folder: Path) -> int:
    """pytest-benchmark's convention: one more than the highest NNNN_ prefix already there."""
    numbers = [int(m.group(1)) for p in folder.glob("*.json") if (m := _COUNTER.match(p.name))]
    return max(numbers, default=0) + 1


def _machine_info(device: str, environment: dict[str, Any], is_host: bool) -> dict[str, Any]:
    """The device's recorded facts (its probe's, or the host manifest where the device is the host);
    a fact neither records is null. The probe and the host manifest name some facts differently."""
    host = environment.get("host", {})
    facts = environment.get("devices", {}).get(device) or (host if is_host else {})
    implementation = facts.get("python_implementation")
    return {
        "node": device,
        "processor": facts.get("cpu_model"),
        "machine": facts.get("machine"),
        "python_implementation": implementation,
        "python_implementation_version": facts.get("python") if implementation == "CPython" else None,
        "python_version": facts.get("python"),
        "system": facts.get("system") or (facts.get("platform") or "").split("-")[0] or None,
        "release": facts.get("kernel") or facts.get("platform"),
        "cpu": {"brand_raw": facts.get("cpu_model"), "count": facts.get("logical_cpus") or facts.get("cpu_count")},
        "edgegate_device": device,
        "edgegate_host": host,
    }


def _commit_info(commit: str, when: str | None, branch: str | None) -> dict[str, Any]:
    """The checkout the run measured, and the branch the runs row recorded (null where it recorded none)."""
    return {"id": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"), "project": "edgegate",
            "branch": branch, "time": when}


def _text(value: Any) -> str | None:
    """A text column's value; NULL reads back from pandas as None or NaN."""
    return value if isinstance(value, str) and value else None


def _benchmarks(rows: pd.DataFrame, device: str, variants: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (suite, variant, metric with samples); the single values ride along as extra_info.
    ``variants`` is the run's recorded settings per ``suite/device/variant``, where its options come from."""
    rows = rows.drop_duplicates(["suite", "variant", "metric"], keep="last")
    entries: list[dict[str, Any]] = []
    for (suite, variant), group in rows.groupby(["suite", "variant"], sort=True, dropna=False):
        sampled = group[group.apply(_is_latency, axis=1).astype(bool)]
        extra = _extra_info(group[~group.index.isin(sampled.index)])
        settings = variants.get(f"{suite}/{device}/{variant}") or {}
        for row in sampled.itertuples():
            samples = json.loads(row.samples)
            entries.append({
                "group": f"{suite}:{row.metric}", "name": f"{row.metric}[{variant}]",
                "fullname": f"{suite}::{variant}[{device}]::{row.metric}",
                "params": {"variant": variant, "device": device, "suite": suite}, "param": variant,
                "extra_info": extra, "options": _options(settings, str(row.metric), len(samples)),
                "stats": _stats([float(x) / 1e3 for x in samples]),
            })
    return entries


def _options(settings: dict[str, Any], metric: str, rounds: int) -> dict[str, Any]:
    """pytest-benchmark's options from what the run recorded for the variant: the warm-up steps of the
    measurement behind ``metric`` and the collector's state, each null where the run recorded none."""
    warmups = settings.get("warmup")
    count = warmups.get(_MEASUREMENT.get(metric, metric.removesuffix("_ms"))) if isinstance(warmups, dict) else None
    count = count if isinstance(count, int) and not isinstance(count, bool) else None
    enabled = settings.get("gc_enabled")
    return {"disable_gc": (not enabled) if isinstance(enabled, bool) else None, "timer": _TIMER,
            "min_rounds": rounds, "max_time": None, "min_time": None,
            "warmup": count > 0 if count is not None else None, "warmup_iterations": count}


def _unrecorded(document: dict[str, Any]) -> dict[str, str]:
    """Each field of ``document`` left null for want of a source, with why (JSON has no comments)."""
    why: dict[str, str] = {}
    if document["machine_info"]["python_implementation"] is None:
        why["machine_info.python_implementation"] = _WHY_NO_IMPLEMENTATION
    if document["commit_info"]["branch"] is None:
        why["commit_info.branch"] = _WHY_NO_BRANCH
    options = [bench["options"] for bench in document["benchmarks"]]
    if any(o["warmup_iterations"] is None for o in options):
        why["benchmarks.options.warmup"] = _WHY_NO_WARMUP
    if any(o["disable_gc"] is None for o in options):
        why["benchmarks.options.disable_gc"] = _WHY_NO_GC
    return why


def _is_latency(row: pd.Series) -> bool:
    """Only millisecond samples become benchmarks: pytest-benchmark's stats are times in seconds."""
    has_samples = isinstance(row["samples"], str) and len(json.loads(row["samples"]) or []) > 0
    return has_samples and (row["unit"] == "ms" or str(row["metric"]).endswith("_ms"))


def _extra_info(rows: pd.DataFrame) -> dict[str, Any]:
    """Single-valued metrics by name, with their unit (and note when the value is missing)."""
    extra: dict[str, Any] = {}
    for row in rows.itertuples():
        value = None if row.value is None or (isinstance(row.value, float) and math.isnan(row.value)) else row.value
        extra[row.metric] = value
        extra[f"{row.metric}_unit"] = row.unit if isinstance(row.unit, str) else None
        if isinstance(row.note, str) and row.note:
            extra[f"{row.metric}_note"] = row.note
    return extra


def _stats(seconds: list[float]) -> dict[str, Any]:
    """pytest-benchmark's own statistics; each sample is one round of one iteration."""
    stats = Stats()
    for value in seconds:
        stats.update(value)
    return {**stats.as_dict(), "data": stats.data, "iterations": 1}
