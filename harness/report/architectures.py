"""Accuracy side by side per CPU architecture, when a suite has run on more than one.

Quantized kernels differ between CPUs (x86's VNNI, ARM's dot-product and matrix instructions),
so a quantized variant's perplexity, KL and top-1 can depend on where it runs: the gate judges
each device on its own numbers, and this table puts them next to each other. Each device's
newest run of the suite is used (this run's, for the devices it measured); the architecture is
the one the device's probe reported in that run.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

ACCURACY = ("perplexity", "kl_mean", "top1_agreement")
SAME = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def machines(runs: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    """(run_id, device) -> the architecture and CPU its probe reported in that run."""
    found = {}
    for run_id, text in zip(runs.run_id, runs.environment.fillna("{}")):
        devices = (json.loads(text) or {}).get("devices") or {}
        for device, facts in devices.items():
            if isinstance(facts, dict) and facts.get("machine"):
                found[(run_id, device)] = (architecture(str(facts["machine"])), str(facts.get("cpu_model") or ""))
    return found


def architecture(machine: str) -> str:
    return SAME.get(machine.lower(), machine.lower())


def sections(history: pd.DataFrame, runs: pd.DataFrame, run_id: str) -> list[dict[str, Any]]:
    """One table per suite of this run that has accuracy on two or more architectures."""
    arch = machines(runs)
    order = {r: i for i, r in enumerate(runs.sort_values("started_at").run_id)}
    mine = history[history.run_id == run_id]
    return [table for suite in dict.fromkeys(mine.suite)
            if (table := _table(suite, history[(history.suite == suite) & history.metric.isin(ACCURACY)],
                                arch, order, run_id))]


def _table(suite: str, accuracy: pd.DataFrame, arch: dict[tuple[str, str], tuple[str, str]], order: dict[str, int],
           run_id: str) -> dict[str, Any] | None:
    columns = _newest_per_device(accuracy, arch, order, run_id)
    if len({c["arch"] for c in columns}) < 2:
        return None
    values = {(r.run_id, r.device, r.variant, r.metric): r.value for r in accuracy.itertuples(index=False)}
    variants = list(dict.fromkeys(accuracy[accuracy.run_id.isin({c["run_id"] for c in columns})].variant))
    rows = [{"variant": v, "cells": [[_text(values.get((c["run_id"], c["device"], v, m)), m) for m in ACCURACY]
                                     for c in columns]} for v in variants]
    return {"suite": suite, "columns": columns, "metrics": ACCURACY, "rows": rows}


def _newest_per_device(accuracy: pd.DataFrame, arch: dict[tuple[str, str], tuple[str, str]], order: dict[str, int],
                       run_id: str) -> list[dict[str, str]]:
    """Each device's newest run with accuracy results and a known architecture, this run first."""
    newest: dict[str, str] = {}
    for run, device in accuracy[["run_id", "device"]].drop_duplicates().itertuples(index=False):
        if (run, device) not in arch:
            continue
        rank = (run == run_id, order.get(run, -1))
        held = newest.get(device)
        if held is None or rank > (held == run_id, order.get(held, -1)):
            newest[device] = run
    columns = [{"arch": arch[(run, device)][0], "cpu": arch[(run, device)][1], "device": device, "run_id": run}
               for device, run in newest.items()]
    return sorted(columns, key=lambda c: (c["arch"], c["device"]))


def _text(value: Any, metric: str) -> str:
    if value is None or pd.isna(value):
        return "—"
    return {"perplexity": f"{value:.3f}", "kl_mean": f"{value:.2e}"}.get(metric, f"{value:.4f}")
