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

_OPTIONS = {"disable_gc": False, "timer": "time.perf_counter_ns (on device)", "min_rounds": None,
            "max_time": None, "min_time": None, "warmup": True}
_COUNTER = re.compile(r"^(\d{4})_")


def write_run(store: HistoryStore, run_id: str, storage: Path,
              local_devices: Collection[str] = ("local",)) -> list[Path]:
    """Write one file per device of the run; ``local_devices`` are the ones the host facts describe."""
    run = store.frame("runs", run_id)
    if run.empty:
        raise StoreError(f"no run {run_id!r} in {store.path}")
    info = run.iloc[0]
    results = store.frame("results", run_id)
    written: list[Path] = []
    for device in json.loads(info["devices"] or "[]"):
        document = {
            "machine_info": _machine_info(device, json.loads(info["environment"] or "{}"), device in local_devices),
            "commit_info": _commit_info(str(info["git_commit"] or "unknown"), info["started_at"]),
            "benchmarks": _benchmarks(results[results.device == device], device),
            "datetime": info["started_at"],
            "version": pytest_benchmark.__version__,
        }
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
    """Host facts only where the device is the host; a remote device's are not recorded, so null."""
    host = environment.get("host", {})
    facts = environment.get("devices", {}).get(device) or (host if is_host else {})
    return {
        "node": device,
        "processor": facts.get("cpu_model"),
        "machine": facts.get("machine"),
        "python_implementation": "CPython" if facts.get("python") else None,
        "python_version": facts.get("python"),
        "system": (facts.get("platform") or "").split("-")[0] or None,
        "release": facts.get("platform"),
        "cpu": {"brand_raw": facts.get("cpu_model"), "count": facts.get("logical_cpus")},
        "edgegate_device": device,
        "edgegate_host": host,
    }


def _commit_info(commit: str, when: str | None) -> dict[str, Any]:
    """The checkout the run measured; the branch is not recorded by EdgeGate."""
    return {"id": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"), "project": "edgegate",
            "branch": None, "time": when}


def _benchmarks(rows: pd.DataFrame, device: str) -> list[dict[str, Any]]:
    """One entry per (suite, variant, metric with samples); the single values ride along as extra_info."""
    rows = rows.drop_duplicates(["suite", "variant", "metric"], keep="last")
    entries: list[dict[str, Any]] = []
    for (suite, variant), group in rows.groupby(["suite", "variant"], sort=True, dropna=False):
        sampled = group[group.apply(_is_latency, axis=1).astype(bool)]
        extra = _extra_info(group[~group.index.isin(sampled.index)])
        for row in sampled.itertuples():
            entries.append({
                "group": f"{suite}:{row.metric}", "name": f"{row.metric}[{variant}]",
                "fullname": f"{suite}::{variant}[{device}]::{row.metric}",
                "params": {"variant": variant, "device": device, "suite": suite}, "param": variant,
                "extra_info": extra, "options": {**_OPTIONS, "min_rounds": len(json.loads(row.samples))},
                "stats": _stats([float(x) / 1e3 for x in json.loads(row.samples)]),
            })
    return entries


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
