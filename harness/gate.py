"""Thresholds: limits on a metric, absolute or as a ratio to the reference variant."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import Fields
from .errors import ConfigError
from .metrics import METRICS

RULE_KEYS = ("max", "min", "max_ratio", "min_ratio")


@dataclass(frozen=True)
class Threshold:
    """One limit on one metric. ``*_ratio`` limits compare with the reference variant's value."""

    metric: str
    kind: str  # one of RULE_KEYS
    limit: float

    def describe(self) -> str:
        symbol = "<=" if self.kind.startswith("max") else ">="
        suffix = " x reference" if self.kind.endswith("ratio") else ""
        return f"{self.metric} {symbol} {self.limit:g}{suffix}"


@dataclass(frozen=True)
class Intervals:
    """95% intervals of the measured values (``absolute``) and of their ratios to the reference
    measured on the same units (``ratio``). A ratio limit is judged against the ratio's interval:
    the text's own difficulty, shared by a variant and its reference, widens either alone."""

    absolute: dict[str, tuple[float, float]] = field(default_factory=dict)
    ratio: dict[str, tuple[float, float]] = field(default_factory=dict)

    def around(self, rule: Threshold, reference: dict[str, float | None] | None) -> tuple[float, float] | None:
        """The interval to set against ``rule``'s limit, in the metric's own unit; None if unknown."""
        if not rule.kind.endswith("ratio"):
            return self.absolute.get(rule.metric)
        ratio, ref_value = self.ratio.get(rule.metric), (reference or {}).get(rule.metric)
        if ratio is None or ref_value is None or math.isnan(ref_value):
            return None
        return ratio[0] * ref_value, ratio[1] * ref_value


@dataclass(frozen=True)
class Breach:
    """A threshold that did not hold (or could not be checked), with the numbers behind it."""

    threshold: Threshold
    value: float | None
    limit_value: float | None
    reason: str

    def message(self, device: str, variant: str) -> str:
        return f"{variant} on {device}: {self.reason}"


def parse_thresholds(path: Path, prefix: str, raw: object) -> dict[str, tuple[Threshold, ...]]:
    """Read ``{metric: {max|min|max_ratio|min_ratio: number}}``; unknown metrics are errors."""
    fields = Fields(path, prefix, raw or {})
    result: dict[str, tuple[Threshold, ...]] = {}
    for metric in list(fields.data):
        if metric not in METRICS:
            raise ConfigError(path, fields.name(metric), f"unknown metric; known: {', '.join(METRICS)}")
        rules = fields.sub(metric, required=True)
        result[metric] = tuple(
            Threshold(metric, key, float(rules.number(key)))
            for key in RULE_KEYS
            if key in rules.data
        )
        if not result[metric]:
            raise ConfigError(path, rules.prefix, f"needs one of {', '.join(RULE_KEYS)}")
        rules.finish()
    return result


def check(
    thresholds: dict[str, tuple[Threshold, ...]],
    values: dict[str, float | None],
    reference: dict[str, float | None] | None,
    notes: dict[str, str] | None = None,
    intervals: Intervals | None = None,
) -> list[Breach]:
    """Every threshold that ``values`` break, in metric order. Unknowable counts as broken. A
    breach of a metric with a 95% interval gives it, and says when the interval straddles the limit."""
    breaches = []
    for metric, rules in thresholds.items():
        for rule in rules:
            breach = _check_one(rule, values.get(metric), reference, (notes or {}).get(metric),
                                (intervals or Intervals()).around(rule, reference))
            if breach is not None:
                breaches.append(breach)
    return breaches


def _check_one(
    rule: Threshold, value: float | None, reference: dict[str, float | None] | None, note: str | None,
    interval: tuple[float, float] | None = None,
) -> Breach | None:
    if value is None or math.isnan(value):
        why = note or "not measured"
        return Breach(rule, None, None, f"{rule.describe()} cannot be checked: {rule.metric} {why}")
    limit = rule.limit
    basis = ""
    if rule.kind.endswith("ratio"):
        ref_value = (reference or {}).get(rule.metric)
        if ref_value is None or math.isnan(ref_value):
            return Breach(rule, value, None, f"{rule.describe()} cannot be checked: no reference value")
        limit = rule.limit * ref_value
        basis = f" ({rule.limit:g} x reference {ref_value:.4g})"
    broke = value > limit if rule.kind.startswith("max") else value < limit
    if not broke:
        return None
    unit = METRICS[rule.metric].unit
    symbol = ">" if rule.kind.startswith("max") else "<"
    shown = f" (95% interval {interval[0]:.4g}-{interval[1]:.4g}{_straddles(interval, limit)})" if interval else ""
    return Breach(rule, value, limit,
                  f"{rule.metric} = {value:.4g}{unit and ' ' + unit}{shown} {symbol} limit {limit:.4g}{basis}")


def _straddles(interval: tuple[float, float], limit: float) -> str:
    return ", straddles the limit: within noise of it" if interval[0] <= limit <= interval[1] else ""


def merge(*layers: dict[str, tuple[Threshold, ...]]) -> dict[str, tuple[Threshold, ...]]:
    """Later layers replace earlier ones metric by metric (suite < variant < device profile)."""
    merged: dict[str, tuple[Threshold, ...]] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def limits(thresholds: dict[str, tuple[Threshold, ...]], reference: dict[str, float | None] | None) -> dict[str, str]:
    """Each metric's limits as they apply to this variant, e.g. ``<= 20.29`` (ratios resolved)."""
    shown: dict[str, str] = {}
    for metric, rules in thresholds.items():
        parts = []
        for rule in rules:
            limit = _resolved(rule, reference)
            if limit is not None:
                parts.append(f"{'<=' if rule.kind.startswith('max') else '>='} {limit:.4g}")
        if parts:
            shown[metric] = ", ".join(parts)
    return shown


def straddling(thresholds: dict[str, tuple[Threshold, ...]], intervals: Intervals,
               reference: dict[str, float | None] | None) -> dict[str, str]:
    """Metrics whose 95% interval contains one of their limits: the verdict on them is within noise."""
    found: dict[str, str] = {}
    for metric, rules in thresholds.items():
        for rule in rules:
            limit, interval = _resolved(rule, reference), intervals.around(rule, reference)
            if limit is not None and interval is not None and interval[0] <= limit <= interval[1]:
                found[metric] = f"95% interval {interval[0]:.4g}-{interval[1]:.4g} straddles the limit {limit:.4g}"
    return found


def _resolved(rule: Threshold, reference: dict[str, float | None] | None) -> float | None:
    if not rule.kind.endswith("ratio"):
        return rule.limit
    ref_value = (reference or {}).get(rule.metric)
    return rule.limit * ref_value if ref_value is not None and not math.isnan(ref_value) else None
