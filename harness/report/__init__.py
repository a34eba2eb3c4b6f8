"""The HTML report: pandas tables from the history, rendered through jinja2 into one file.

Installed plugins add sections (entry point group ``edgegate.report_sections``, see
plugins_registry.report_sections), and the pytest plugin lets a conftest change the page's data
before it is rendered (hook ``pytest_edgegate_report_context``), through ``render_run``'s
``before_render``: the sections are made after it, from the data as it will be shown.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from ..metrics import METRICS
from ..store import HistoryStore
from . import architectures, charts, runtimes

TEMPLATE = "report.html.j2"
# The headline columns, LLM, sentence-encoder and generic-model metrics together; a run's page shows
# those its results have.
COLUMNS = ("size_mb", "ttft_ms", "prefill_tok_s", "decode_ms", "decode_tok_s", "embed_ms", "sentences_per_s",
           "infer_ms", "infer_per_s", "roofline_fraction", "peak_rss_mb", "perplexity", "kl_mean", "top1_agreement",
           "cosine_mean", "rank_spearman", "output_cosine_min", "output_top1_agreement", "power_w",
           "energy_per_token_j")
DETAIL_COLUMNS = tuple(name for name in METRICS if name not in COLUMNS)
TREND_METRICS = ("decode_ms", "perplexity")
LATENCY_CHARTS = (("decode_ms", "Decode latency"), ("infer_ms", "Inference latency"))  # box plots of raw samples
TREND_RUNS = 20  # how many runs of the history the trend charts show
ARCHITECTURE_RUNS = 50  # how far back "Accuracy by architecture" looks for each device's newest run
CHANGE_NOISE = 0.01  # relative changes below this are shown grey: neither better nor worse
KEY = ["suite", "device", "variant"]
VALUE_COLUMNS = (*KEY, "run_id", "metric", "value")  # what trends and baselines read: no samples
UNSUPPORTED = "unsupported on this device"


@dataclass(frozen=True)
class Cell:
    text: str
    title: str = ""
    unavailable: bool = False
    interval: str = ""
    change: str = ""  # relative change against the baseline run, e.g. "+3.1%"
    change_class: str = ""  # "better", "worse" or "same"
    limit: str = ""  # the thresholds that apply, e.g. "<= 20.29"
    straddles: str = ""  # set when the 95% interval contains a limit: a verdict within noise


def render_run(store: HistoryStore, run_id: str, out_dir: Path, template_dir: Path | None = None,
               before_render: Callable[[dict[str, Any]], object] | None = None) -> Path:
    """Write ``<out_dir>/runs/<run_id>.html`` and copy it to ``<out_dir>/latest.html``;
    ``before_render`` may change the page's data in place first."""
    from ..plugins_registry import report_sections

    context = run_context(store, run_id)
    if before_render is not None:
        before_render(context)
    context["plugin_sections"] = report_sections(context)
    html = _environment(template_dir).get_template(TEMPLATE).render(**context)
    target = out_dir / "runs" / f"{run_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_suffix(".html.tmp")
    scratch.write_text(html, encoding="utf-8")
    scratch.replace(target)
    shutil.copyfile(target, out_dir / "latest.html")
    return target


def run_context(store: HistoryStore, run_id: str) -> dict[str, Any]:
    """What the page shows, read for what it shows: this run's rows, its baselines' values and the
    trend window's, never the whole history (the render time stays flat as the history grows)."""
    runs = store.frame("runs", columns=("run_id", "started_at"))
    results = store.frame("results", run_id)
    verdicts = store.frame("verdicts", run_id)
    artifacts = store.frame("artifacts", run_id)
    mine = store.frame("runs", run_id)
    run = mine.iloc[0].to_dict() if len(mine) else {"run_id": run_id, "suites": "[]", "devices": "[]"}
    run["suite_names"] = ", ".join(Path(p).name for p in json.loads(run.get("suites") or "[]"))
    environment = json.loads(run.get("environment") or "{}")
    run["device_names"] = ", ".join(_with_architecture(name, environment) for name in json.loads(run.get("devices") or "[]"))
    baselines = environment.get("baselines") or {}
    baseline_runs = {tuple(key.split("/", 2)): choice["run_id"] for key, choice in baselines.items()
                     if choice and choice.get("run_id") and len(key.split("/", 2)) == 3}
    values = store.frame("results", within={"run_id": set(baseline_runs.values())}, columns=VALUE_COLUMNS) \
        if baseline_runs else results.iloc[0:0]
    rows = _rows(results, verdicts, _baseline_values(values, baseline_runs))
    limits = json.loads(run.get("environment") or "{}").get("limits", {})
    measured = set(results.metric)  # an LLM run shows no encoder columns, and the other way round
    for row in rows:
        key = f"{row['suite']}/{row['device']}/{row['variant']}"
        choice = baselines.get(key)
        row["baseline"] = f"{choice['run_id']} ({choice['reason']})" if choice else "none yet: thresholds only"
        row["skipped_baselines"] = environment.get("skipped_baselines", {}).get(key, [])
        row["not_paired"] = _night_to_night_words(environment.get("not_paired", {}).get(key), choice)
        shown, near = limits.get(key, {}), environment.get("straddles", {}).get(key, {})
        row["cells"] = [_limited(c, shown.get(n, ""), near.get(n, "")) for n, c in zip(COLUMNS, row["cells"])
                        if n in measured]
        row["detail_cells"] = [_limited(c, shown.get(n, ""), near.get(n, ""))
                               for n, c in zip(DETAIL_COLUMNS, row["detail_cells"]) if n in measured]
    return {
        "run": run,
        "environment": environment,
        "columns": [(name, METRICS[name]) for name in COLUMNS if name in measured],
        "detail_columns": [(name, METRICS[name]) for name in DETAIL_COLUMNS if name in measured],
        "rows": rows,
        "warnings": _warnings(results),
        "overall": _overall(rows),
        "breaches": [r for r in rows if r["breaches"] or r["error"]],
        "manifests": _manifests(artifacts),
        "charts": _charts(results, store.frame("results", within={"run_id": _window(runs, run_id),
                          "metric": TREND_METRICS}, columns=VALUE_COLUMNS), runs, run_id, baseline_runs),
        "architectures": _architectures(store, runs, run_id),
        "unsupported": [r for r in rows if r["status"] == UNSUPPORTED],
        "runtimes": runtimes.sections(results, artifacts, {(r["suite"], r["device"], r["variant"]): r["status"]
                                                           for r in rows}, environment),
    }


def _architectures(store: HistoryStore, runs: pd.DataFrame, run_id: str) -> list[dict[str, Any]]:
    """Accuracy per architecture over the last ARCHITECTURE_RUNS runs (each device's newest there)."""
    recent = _window(runs, run_id, ARCHITECTURE_RUNS)
    accuracy = store.frame("results", within={"run_id": recent, "metric": architectures.ACCURACY},
                           columns=VALUE_COLUMNS)
    described = store.frame("runs", within={"run_id": set(accuracy.run_id) | {run_id}},
                            columns=("run_id", "started_at", "environment"))
    return architectures.sections(accuracy, described, run_id)


def _with_architecture(device: str, environment: dict[str, Any]) -> str:
    facts = (environment.get("devices") or {}).get(device) or {}
    return f"{device} ({architectures.architecture(facts['machine'])})" if facts.get("machine") else device


def _limited(cell: Cell, limit: str, straddles: str) -> Cell:
    """The cell with the limits that apply to it, flagged when its interval straddles one."""
    title = "; ".join(t for t in (cell.title, straddles) if isinstance(t, str) and t)
    return replace(cell, limit=limit, straddles=straddles, title=title)


def _baseline_values(history: pd.DataFrame, baseline_runs: dict[tuple[str, ...], str]) -> dict[tuple[str, ...], float]:
    """(suite, device, variant, metric) -> the value its baseline run measured (one merge, no loops)."""
    if not baseline_runs or history.empty:
        return {}
    chosen = pd.DataFrame([(*key, run) for key, run in baseline_runs.items()], columns=[*KEY, "run_id"])
    found = history.merge(chosen, on=[*KEY, "run_id"])[[*KEY, "metric", "value"]]
    found = found.drop_duplicates([*KEY, "metric"], keep="last").dropna(subset=["value"])
    return {(s, d, v, m): float(x) for s, d, v, m, x in found.itertuples(index=False)}


def _rows(results: pd.DataFrame, verdicts: pd.DataFrame,
          baseline_values: dict[tuple[str, ...], float] | None = None) -> list[dict[str, Any]]:
    latest = verdicts.drop_duplicates(KEY, keep="last")
    keys = pd.concat([results[KEY], latest[KEY]]).drop_duplicates()
    by_key = {key: group for key, group in results.groupby(KEY, sort=False)} if len(results) else {}
    verdict_by_key = {key: group for key, group in latest.groupby(KEY, sort=False)} if len(latest) else {}
    empty_results, empty_verdict = results.iloc[0:0], latest.iloc[0:0]
    rows = []
    for suite, device, variant in keys.itertuples(index=False):
        key = (suite, device, variant)
        mine = by_key.get(key, empty_results)
        rows.append(_row(suite, device, variant, mine.drop_duplicates("metric", keep="last"),
                         verdict_by_key.get(key, empty_verdict), baseline_values or {}))
    return rows


def _row(suite: str, device: str, variant: str, metrics: pd.DataFrame, verdict: pd.DataFrame,
         baseline_values: dict[tuple[str, ...], float] | None = None) -> dict[str, Any]:
    by_metric = {r["metric"]: r for r in metrics.to_dict("records")}
    base = baseline_values or {}
    return {
        "suite": suite, "device": device, "variant": variant,
        "status": _status(verdict),
        "breaches": json.loads(verdict.iloc[0]["breaches"]) if len(verdict) else [],
        "inconclusive": _json_list(verdict.iloc[0].get("inconclusive")) if len(verdict) else [],
        "baseline_excluded": (verdict.iloc[0].get("baseline_excluded") if len(verdict) else None) or None,
        "expected": _text(verdict.iloc[0].get("expected")) if len(verdict) else None,
        "error": (verdict.iloc[0]["error"] if len(verdict) else None) or None,
        "unsupported": _text(verdict.iloc[0].get("unsupported")) if len(verdict) else None,
        "cells": [_cell(by_metric.get(name), base.get((suite, device, variant, name)), name) for name in COLUMNS],
        "detail_cells": [_cell(by_metric.get(name), base.get((suite, device, variant, name)), name)
                         for name in DETAIL_COLUMNS],
    }


def change(value: float, baseline: float | None, metric: str) -> tuple[str, str]:
    """("+3.1%", "worse"|"better"|"same") for ``value`` against ``baseline``; ("", "") when not comparable."""
    if baseline is None or not math.isfinite(baseline) or baseline == 0 or not math.isfinite(value):
        return "", ""
    relative = (value - baseline) / abs(baseline)
    if abs(relative) < CHANGE_NOISE:
        kind = "same"
    else:
        lower_better = METRICS[metric].better == "lower" if metric in METRICS else True
        kind = "better" if (relative < 0) == lower_better else "worse"
    return f"{relative * 100:+.1f}%", kind


def _samples(text: Any) -> list[float]:
    if not isinstance(text, str) or not text:
        return []
    try:
        values = json.loads(text)
    except ValueError:
        return []
    return [float(v) for v in values if isinstance(v, (int, float))] if isinstance(values, list) else []


def _charts(results: pd.DataFrame, history: pd.DataFrame, runs: pd.DataFrame, run_id: str,
            baseline_runs: dict[tuple[str, ...], str]) -> list[dict[str, Any]]:
    """Per device: Pareto, decode latency boxes, roofline bars, trends and power traces, as inline SVG."""
    if results.empty:
        return []
    several_suites = results.suite.nunique() > 1
    latest = results.drop_duplicates([*KEY, "metric"], keep="last")
    latest = latest.assign(label=latest.variant if not several_suites else latest.suite + "/" + latest.variant)
    window = _window(runs, run_id)
    recent = history[history.metric.isin(TREND_METRICS) & history.run_id.isin(window)]
    recent = recent.drop_duplicates(["run_id", *KEY, "metric"], keep="last")
    recent = recent.assign(label=recent.variant if not several_suites else recent.suite + "/" + recent.variant)
    trends = {key: group for key, group in recent.groupby(["device", "metric"], sort=False)}
    devices = []
    for device, mine in latest.groupby("device", sort=False):
        values = mine.pivot_table(index="label", columns="metric", values="value", aggfunc="last", sort=False)
        items: list[dict[str, Any]] = []
        if {"decode_ms", "perplexity"} <= set(values.columns):
            table = values.reset_index().rename(columns={"label": "variant"}).to_dict("records")
            items.append(_item("Latency vs accuracy", charts.pareto(table, f"Latency vs accuracy on {device}")))
        for metric, heading in LATENCY_CHARTS:
            timed = mine[mine.metric == metric]
            samples = {label: _samples(text) for label, text in zip(timed.label, timed.samples)}
            samples = {label: s for label, s in samples.items() if s}
            if samples:
                items.append(_item(heading, charts.latency_distribution(samples, f"{heading} on {device}")))
        if "roofline_fraction" in values.columns and values["roofline_fraction"].notna().any():
            items.append(_item("Roofline fraction", charts.bars(values["roofline_fraction"].dropna().to_dict(),
                                                                "roofline fraction (decode tok/s / ceiling)",
                                                                f"Roofline fraction on {device}")))
        marks = {(s + "/" + v if several_suites else v): run for (s, d, v), run in baseline_runs.items() if d == device}
        for metric in TREND_METRICS:
            points = trends.get((device, metric))
            if points is not None and len(points):
                records = [{"run_id": r, "variant": v, "value": x}
                           for r, v, x in zip(points.run_id, points.label, points.value)]
                unit = METRICS[metric].unit
                items.append(_item(f"{metric} trend", charts.trend(
                    records, marks, f"{metric} over the last {len(window)} runs on {device}",
                    f"{metric} ({unit})" if unit else metric, runs=window)))
        power = mine[mine.metric == "power_w"]
        for label, text in zip(power.label, power.samples):
            watts = _samples(text)
            if watts:
                items.append(_item(f"Power: {label}", charts.power_trace(watts, f"Power of {label} on {device}")))
        if items:
            devices.append({"device": device, "figures": items})
    return devices


def _item(heading: str, svg: Markup) -> dict[str, Any]:
    return {"heading": heading, "svg": svg}


def _window(runs: pd.DataFrame, run_id: str, size: int = TREND_RUNS) -> list[str]:
    """The last ``size`` run ids up to and including ``run_id``, oldest first."""
    ordered = runs.sort_values("started_at", kind="stable").run_id.tolist() if len(runs) else []
    if run_id not in ordered:
        return (ordered + [run_id])[-size:]
    return ordered[:ordered.index(run_id) + 1][-size:]


def _cell(record: dict[str, Any] | None, baseline: float | None = None, metric: str = "") -> Cell:
    if record is None:
        return Cell("—", "not measured", unavailable=True)
    value = record.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        note = record.get("note") or "unavailable"
        return Cell(note.split(" (")[0], note, unavailable=True)
    text = _format(float(value))
    delta, kind = change(float(value), baseline, metric)
    against = f"baseline {_format(baseline)}" if delta and baseline is not None else ""
    if not record.get("n") or pd.isna(record.get("n")):
        note = record.get("note")
        title = "; ".join(t for t in (note if isinstance(note, str) else "", against) if t)
        interval = _interval(record)
        return Cell(text, title or (note if isinstance(note, str) else ""), interval=interval, change=delta, change_class=kind)
    title = (f"n={int(record['n'])}, 95% CI of median [{_format(record['ci_low'])}, {_format(record['ci_high'])}], "
             f"p90 {_format(record['p90'])}, p99 {_format(record['p99'])}"
             + (f"; {record['note']}" if record.get("note") else "") + (f"; {against}" if against else ""))
    return Cell(text, title, interval=f"[{_format(record['ci_low'])}, {_format(record['ci_high'])}]",
                change=delta, change_class=kind)


def _interval(record: dict[str, Any]) -> str:
    """A one-number metric's 95% interval (accuracy: bootstrap over windows, sentences or pairs)."""
    low, high = record.get("ci_low"), record.get("ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{_format(float(low))}, {_format(float(high))}]"


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
    # a variant blocked as its suite expects (xfail) is no news: it does not block the run
    # nor does a variant the device cannot run: it cannot ship there, and nothing was measured to regress
    statuses = {r["status"] for r in rows if not (r["status"] == "blocked" and r.get("expected"))
                and r["status"] != UNSUPPORTED} or {"ship"}
    if statuses == {"ship"}:
        return "ship"
    return "inconclusive" if statuses <= {"ship", "inconclusive"} else "blocked"


def _status(verdict: pd.DataFrame) -> str:
    """ship | blocked | inconclusive | error, or "not judged"; rows written before verdicts had a
    name say only passed or not."""
    if not len(verdict):
        return "not judged"
    row = verdict.iloc[0]
    named = row.get("verdict")
    if isinstance(named, str) and named:
        return {"error": "blocked", "unsupported": UNSUPPORTED}.get(named, named)
    return "ship" if bool(row["passed"]) else "blocked"


def _text(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def _json_list(raw: Any) -> list[str]:
    return json.loads(raw) if isinstance(raw, str) and raw else []


def _night_to_night_words(why: str | None, choice: dict[str, Any] | None) -> str:
    """What the judgement can and cannot see when only the environment changed (same build)."""
    if not why or not choice or not why.startswith("same build"):
        return ""
    measured = why.split(". ", 1)[1] + "." if ". " in why else (
        "Too few clean runs of this build to say how far the environment alone moves it here.")
    return ("Same build as the baseline, so decode was not measured side by side with it: only the "
            f"night-to-night rules judged latency. {measured}")


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
