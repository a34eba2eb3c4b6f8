"""The HTML report: pandas tables from the history, rendered through jinja2 into one file."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from ..metrics import METRICS
from ..store import HistoryStore

TEMPLATE = "report.html.j2"
COLUMNS = ("size_mb", "ttft_ms", "prefill_tok_s", "decode_ms", "decode_tok_s", "roofline_fraction", "peak_rss_mb",
           "perplexity", "kl_mean", "top1_agreement", "power_w", "energy_per_token_j")
DETAIL_COLUMNS = tuple(name for name in METRICS if name not in COLUMNS)


@dataclass(frozen=True)
class Cell:
    text: str
    title: str = ""
    unavailable: bool = False
    interval: str = ""


def render_run(store: HistoryStore, run_id: str, out_dir: Path, template_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/runs/<run_id>.html`` and copy it to ``<out_dir>/latest.html``."""
    context = run_context(store, run_id)
    html = _environment(template_dir).get_template(TEMPLATE).render(**context)
    target = out_dir / "runs" / f"{run_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_suffix(".html.tmp")
    scratch.write_text(html, encoding="utf-8")
    scratch.replace(target)
    shutil.copyfile(target, out_dir / "latest.html")
    return target


def run_context(store: HistoryStore, run_id: str) -> dict[str, Any]:
    runs = store.frame("runs", run_id)
    results = store.frame("results", run_id)
    verdicts = store.frame("verdicts", run_id)
    artifacts = store.frame("artifacts", run_id)
    run = runs.iloc[0].to_dict() if len(runs) else {"run_id": run_id, "suites": "[]", "devices": "[]"}
    run["suite_names"] = ", ".join(Path(p).name for p in json.loads(run.get("suites") or "[]"))
    run["device_names"] = ", ".join(json.loads(run.get("devices") or "[]"))
    rows = _rows(results, verdicts)
    baselines = json.loads(run.get("environment") or "{}").get("baselines", {})
    for row in rows:
        choice = baselines.get(f"{row['suite']}/{row['device']}/{row['variant']}")
        row["baseline"] = f"{choice['run_id']} ({choice['reason']})" if choice else "none yet: thresholds only"
    return {
        "run": run,
        "environment": json.loads(run.get("environment") or "{}"),
        "columns": [(name, METRICS[name]) for name in COLUMNS],
        "detail_columns": [(name, METRICS[name]) for name in DETAIL_COLUMNS],
        "rows": rows,
        "warnings": _warnings(results),
        "overall": _overall(rows),
        "breaches": [r for r in rows if r["breaches"] or r["error"]],
        "manifests": _manifests(artifacts),
    }


def _rows(results: pd.DataFrame, verdicts: pd.DataFrame) -> list[dict[str, Any]]:
    latest = verdicts.drop_duplicates(["suite", "device", "variant"], keep="last")
    keys = pd.concat([results[["suite", "device", "variant"]], latest[["suite", "device", "variant"]]]).drop_duplicates()
    rows = []
    for suite, device, variant in keys.itertuples(index=False):
        mine = results[(results.suite == suite) & (results.device == device) & (results.variant == variant)]
        verdict = latest[(latest.suite == suite) & (latest.device == device) & (latest.variant == variant)]
        rows.append(_row(suite, device, variant, mine.drop_duplicates("metric", keep="last"), verdict))
    return rows


def _row(suite: str, device: str, variant: str, metrics: pd.DataFrame, verdict: pd.DataFrame) -> dict[str, Any]:
    by_metric = {r["metric"]: r for r in metrics.to_dict("records")}
    passed = bool(verdict.iloc[0]["passed"]) if len(verdict) else None
    return {
        "suite": suite, "device": device, "variant": variant,
        "status": {True: "ship", False: "blocked", None: "not judged"}[passed],
        "breaches": json.loads(verdict.iloc[0]["breaches"]) if len(verdict) else [],
        "error": (verdict.iloc[0]["error"] if len(verdict) else None) or None,
        "cells": [_cell(by_metric.get(name)) for name in COLUMNS],
        "detail_cells": [_cell(by_metric.get(name)) for name in DETAIL_COLUMNS],
    }


def _cell(record: dict[str, Any] | None) -> Cell:
    if record is None:
        return Cell("—", "not measured", unavailable=True)
    value = record.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        note = record.get("note") or "unavailable"
        return Cell(note.split(" (")[0], note, unavailable=True)
    text = _format(float(value))
    if not record.get("n") or pd.isna(record.get("n")):
        return Cell(text, record.get("note") or "")
    title = (f"n={int(record['n'])}, 95% CI of median [{_format(record['ci_low'])}, {_format(record['ci_high'])}], "
             f"p90 {_format(record['p90'])}, p99 {_format(record['p99'])}"
             + (f"; {record['note']}" if record.get("note") else ""))
    return Cell(text, title, interval=f"[{_format(record['ci_low'])}, {_format(record['ci_high'])}]")


def _warnings(results: pd.DataFrame) -> list[dict[str, str]]:
    """Measurements flagged by the runner: contention, throttling, trip points, governors."""
    notes = results.note.fillna("")
    thermal_missing = (results.metric == "temp_max_c") & notes.str.startswith("unavailable")
    flagged = results[notes.str.contains("flagged|trip|dropped|governor") | thermal_missing]
    return [{"device": r["device"], "variant": r["variant"], "metric": r["metric"], "note": r["note"]}
            for r in flagged.drop_duplicates(["device", "variant", "metric"], keep="last").to_dict("records")]


def _format(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.1e}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _overall(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing measured"
    return "ship" if all(r["status"] == "ship" for r in rows) else "blocked"


def _manifests(artifacts: pd.DataFrame) -> list[dict[str, Any]]:
    unique = artifacts.drop_duplicates(["suite", "variant"], keep="last")
    return [
        {"suite": r["suite"], "variant": r["variant"], "recipe": r["recipe"], "key": r["key"],
         "manifest": json.dumps(json.loads(r["manifest"]), indent=2, sort_keys=True)}
        for r in unique.to_dict("records")
    ]


def _environment(template_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("edgegate.report", "templates")]
    if template_dir is not None:
        loaders.insert(0, jinja2.FileSystemLoader(str(template_dir)))
    return jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined)
