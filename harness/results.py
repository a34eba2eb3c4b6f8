"""What measuring one variant on one device produced: the runner's events as metrics, and the rows
the history stores for them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RunnerError
from .stats import Summary, summarize

# Defined only against a reference.
RELATIVE_METRICS = ("kl_mean", "kl_max", "top1_agreement", "cosine_mean", "cosine_min", "rank_spearman",
                    "output_cosine_min", "output_top1_agreement", "output_max_abs_diff", "output_max_rel_diff")
TIMED_UNITS = ("ms", "tok/s", "sent/s", "items/s", "x", "J", "W")  # a lost lease disturbs every metric in these units


@dataclass
class MetricResult:
    name: str
    value: float | None
    unit: str
    samples: list[float] | None = None
    note: str | None = None
    summary: Summary | None = None
    disturbed: str | None = None  # why the timed region stayed disturbed after re-measuring; None: clean
    attempts: int = 1  # how often the runner measured the region
    unit_size: int = 1  # consecutive samples that form one independent unit (a decode round)
    interval: tuple[float, float] | None = None  # 95% interval of a one-number metric (accuracy: bootstrap)
    ratio_interval: tuple[float, float] | None = None  # 95% interval of its ratio to the reference (paired)
    unsupported: bool = False  # the variant's runtime cannot give this metric by design: its limits do not apply


@dataclass
class VariantResult:
    suite: str
    device: str
    variant: str
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)  # run-wide reasons this may not be a baseline

    def values(self) -> dict[str, float | None]:
        return {name: m.value for name, m in self.metrics.items()}

    def notes(self) -> dict[str, str]:
        return {name: m.note for name, m in self.metrics.items() if m.note}

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Metric -> its 95% interval, where one was measured."""
        return {name: m.interval for name, m in self.metrics.items() if m.interval}

    def ratio_intervals(self) -> dict[str, tuple[float, float]]:
        """Metric -> the 95% interval of its ratio to the reference, measured on the same units."""
        return {name: m.ratio_interval for name, m in self.metrics.items() if m.ratio_interval}

    def disturbed(self) -> dict[str, str]:
        """Metric -> why its timed region stayed disturbed."""
        return {name: m.disturbed for name, m in self.metrics.items() if m.disturbed}

    def lease_lost(self, why: str) -> None:
        """Another run may have measured on the device meanwhile: every timing is disturbed."""
        reason = f"the device lease was lost during the measurement ({why})"
        self.excluded.append(reason)
        for metric in self.metrics.values():
            if metric.unit in TIMED_UNITS and not metric.disturbed:
                metric.disturbed = reason


def take_event(event: dict[str, Any], result: VariantResult, log: Callable[[str], None]) -> MetricResult | None:
    """One runner event into ``result``; the metric it carried, if any (to be stored at once)."""
    kind = event.get("event")
    if kind == "metric":
        metric = metric_from_event(event)
        result.metrics[metric.name] = metric
        return metric
    if kind == "error":
        result.errors.append(f"{event.get('measurement')}: {event.get('message')}")
    elif kind == "settings":
        result.settings.update(event.get("settings", {}))
    elif kind == "retry":
        log(f"{result.variant} on {result.device}: timed region disturbed ({'; '.join(event.get('why') or [])}); "
            f"measuring it again in {event.get('wait_s', 0):g} s (attempt {event.get('attempt')})")
    elif kind == "thermal":
        result.settings["thermal"] = {k: event.get(k) for k in ("before", "after", "during_max", "warnings")}
    elif kind == "done" and event.get("failures") and not result.errors:
        raise RunnerError(f"runner reported {event['failures']} failures without saying which")
    return None


def metric_from_event(event: dict[str, Any]) -> MetricResult:
    samples = event.get("samples")
    value = event.get("value")
    summary = summarize(samples) if samples else None
    if summary is not None and value is None:
        value = summary.p50
    region = {"disturbed": event.get("disturbed") or None, "attempts": int(event.get("attempts") or 1),
              "unit_size": int(event.get("unit_size") or 1), "interval": _interval(event),
              "ratio_interval": _interval(event, "ratio_ci_"), "unsupported": bool(event.get("unsupported"))}
    if value is not None and not math.isfinite(float(value)):
        return MetricResult(event["name"], None, event.get("unit", ""), samples, f"not a finite number: {value}",
                            **region)
    note = event.get("note")
    if region["ratio_interval"]:  # kept in the note: the results table has no column for it
        low, high = region["ratio_interval"]
        note = "; ".join(part for part in (note, f"ratio to the reference {event.get('ratio', 0):.4g}, 95% interval "
                                                 f"{low:.4g}-{high:.4g} (same windows on both sides)") if part)
    return MetricResult(event["name"], value, event.get("unit", ""), samples, note, summary, **region)


def _interval(event: dict[str, Any], prefix: str = "ci_") -> tuple[float, float] | None:
    low, high = event.get(f"{prefix}low"), event.get(f"{prefix}high")
    return (float(low), float(high)) if low is not None and high is not None else None


def result_row(run_id: str, git_commit: str, result: VariantResult, metric: MetricResult) -> dict[str, Any]:
    """The history's row for one metric."""
    summary = metric.summary.as_dict() if metric.summary else {}
    if metric.interval and not summary:
        summary = {"ci_low": metric.interval[0], "ci_high": metric.interval[1]}
    return {
        "run_id": run_id, "time": now(), "git_commit": git_commit, "suite": result.suite,
        "device": result.device, "variant": result.variant, "metric": metric.name, "value": metric.value,
        "unit": metric.unit, "samples": metric.samples, "note": metric.note, **summary,
        "disturbed": metric.disturbed, "attempts": metric.attempts, "unit_size": metric.unit_size,
    }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
