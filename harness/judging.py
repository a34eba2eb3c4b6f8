"""Judging one measured variant: which limits apply to it, which metrics regressed against the
baseline run beyond their rule and beyond noise, and the verdict both give.

What the judge found on the way (the baseline chosen, runs passed over, the limits shown next to
each value, intervals straddling a limit) is kept for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import gate
from .baselines import BaselineChoice, baseline_samples, find_baseline, skipped_runs
from .metrics import TASK_METRICS
from .profiles import DeviceProfile
from .regression import DEFAULT_RULES, PAIRED_METRICS, compare_metric, compare_paired
from .results import RELATIVE_METRICS, VariantResult
from .store import HistoryStore
from .suites import Suite, VariantSpec
from .verdict import Verdict, decide

Key = tuple[str, str, str]  # suite, device, variant
Limits = dict[str, tuple[gate.Threshold, ...]]


class Judge:
    def __init__(self, store: HistoryStore, run_id: str, baseline_spec: str | None = None, repo: Path | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.store = store
        self.run_id = run_id
        self.baseline_spec = baseline_spec
        self.repo = repo
        self.log = log
        self.baselines: dict[Key, BaselineChoice | None] = {}
        self.skipped_baselines: dict[Key, tuple[str, ...]] = {}  # passing runs not clean enough
        self.limits: dict[Key, dict[str, str]] = {}  # shown next to the values
        self.straddles: dict[Key, dict[str, str]] = {}  # metric -> interval around its limit

    def baseline(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> BaselineChoice | None:
        return find_baseline(self.store, suite.name, device.name, variant.name, self.baseline_spec,
                             exclude_run=self.run_id, repo=self.repo)

    def verdict(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, result: VariantResult,
                reference: VariantResult | None) -> Verdict:
        """Ship, blocked (the thresholds, suite < variant < device profile, and regressions it
        breaks) or inconclusive (a judged metric stayed disturbed); ``reference``: the reference
        variant's result (None when it failed, or when ``result`` is the reference's)."""
        key = (suite.name, device.name, variant.name)
        thresholds = supported(result, gate.merge(suite.thresholds, variant.thresholds,
                                                  applicable(device.thresholds, suite)), self.log)
        is_reference = variant.name == suite.reference
        thresholds = absolute_only(thresholds) if is_reference else thresholds
        reference_values = None if is_reference else (reference.values() if reference else {})
        intervals = gate.Intervals(result.intervals(), result.ratio_intervals())
        breaches = gate.check(thresholds, result.values(), reference_values, result.notes(), intervals)
        self.limits[key] = gate.limits(thresholds, reference_values)
        self.straddles[key] = gate.straddling(thresholds, intervals, reference_values)
        judged = set(thresholds)
        breaches += self.regressions(suite, device, variant, result, judged)
        expected = variant.expected_blocked(device.name)
        judged_regressions = [b for b in breaches if b.threshold.metric not in result.disturbed()]
        excluded = result.excluded + (["regressed against its baseline"] if expected and regressed(judged_regressions)
                                      else [])
        return decide(breaches, judged, result.disturbed(), result.values(), excluded)

    def regressions(self, suite: Suite, device: DeviceProfile, variant: VariantSpec,
                    result: VariantResult, judged: set[str]) -> list[gate.Breach]:
        """Metrics that got worse than the baseline run, beyond their rule and beyond noise
        (each metric compared lands in ``judged``)."""
        choice = self._choose_baseline(suite, device, variant)
        if choice is None:
            return []
        old = baseline_samples(self.store, choice.run_id, suite.name, device.name, variant.name)
        breaches = []
        for name, rule in (suite.regressions or DEFAULT_RULES).items():
            if name in PAIRED_METRICS and name in result.metrics:
                comparison = compare_paired(rule, result.metrics[name].samples, f"the build of run {choice.run_id}")
            elif name in old and name in result.metrics:
                new = result.metrics[name]
                value, samples, unit_size = old[name]
                comparison = compare_metric(rule, value, samples, new.value, new.samples, (unit_size, new.unit_size))
            else:
                continue
            judged.add(name)
            if comparison.regressed:
                reason = f"{comparison.message()} vs baseline {choice.run_id} ({choice.reason})"
                breaches.append(gate.Breach(gate.Threshold(name, "baseline", rule.max_change),
                                            comparison.value, comparison.baseline_value, reason))
        return breaches

    def _choose_baseline(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> BaselineChoice | None:
        key = (suite.name, device.name, variant.name)
        choice = self.baselines[key] = self.baseline(suite, device, variant)
        self.skipped_baselines[key] = choice.skipped if choice else skipped_runs(
            self.store, suite.name, device.name, variant.name, exclude_run=self.run_id)
        for skipped in self.skipped_baselines[key]:
            self.log(f"{variant.name} on {device.name}: not a baseline: run {skipped}")
        if choice is None:
            self.log(f"{variant.name} on {device.name}: no baseline yet, thresholds only")
        return choice


def supported(result: VariantResult, thresholds: Limits, log: Callable[[str], None]) -> Limits:
    """The limits on metrics the variant's runtime can give (LiteRT-LM has no logits: no KL, no
    top-1); each one dropped is logged with the runtime's reason, which the report shows too."""
    dropped = [name for name in thresholds if name in result.metrics and result.metrics[name].unsupported]
    for name in dropped:
        log(f"{result.variant} on {result.device}: {name} limits not judged: {result.metrics[name].note}")
    return {name: rules for name, rules in thresholds.items() if name not in dropped}


def applicable(thresholds: Limits, suite: Suite) -> Limits:
    """A device profile's limits on the metrics this suite measures (an encoder has no decode)."""
    measured = TASK_METRICS[suite.base_model.task]
    return {metric: rules for metric, rules in thresholds.items() if metric in measured}


def absolute_only(thresholds: Limits) -> Limits:
    """The reference is judged only by limits that need no reference."""
    kept = {}
    for metric, rules in thresholds.items():
        absolute = tuple(r for r in rules if not r.kind.endswith("ratio"))
        if absolute and metric not in RELATIVE_METRICS:
            kept[metric] = absolute
    return kept


def regressed(breaches: list[gate.Breach]) -> bool:
    return any(breach.threshold.kind == "baseline" for breach in breaches)
