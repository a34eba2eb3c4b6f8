"""One run: which suites on which devices; builds, measures, records and judges each variant."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import compat, devicecheck, gate, jobs, paired
from .baselines import BaselineChoice, baseline_samples, find_baseline, skipped_runs
from .devicecheck import DeviceReport
from .errors import DeviceNotReady, EdgeGateError, RunnerError, VariantUnsupported
from .jobs import SLOWDOWN_ENV, decoder_backend, injected_slowdown  # noqa: F401 - the plugin and benches import them from here
from .lease import Leases, lease_owner
from .metrics import TASK_METRICS
from .profiles import DeviceProfile
from .regression import DEFAULT_RULES, PAIRED_METRICS, compare_metric, compare_paired
from .stats import Summary, summarize
from .store import HistoryStore
from .suites import Suite, VariantSpec
from .transport import Transport, open_transport
from .variants.factory import Artifact, VariantFactory
from .verdict import Verdict, decide

# Defined only against a reference.
RELATIVE_METRICS = ("kl_mean", "kl_max", "top1_agreement", "cosine_mean", "cosine_min", "rank_spearman")
TIMED_UNITS = ("ms", "tok/s", "sent/s", "x", "J", "W")  # a lost lease disturbs every metric in these units


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


class RunSession:
    """Memoizes builds and measurements so a reference is measured once per device."""

    def __init__(self, run_id: str, git_commit: str, store: HistoryStore, cache_root: Path,
                 log: Callable[[str], None] = lambda _: None, accept_new_host_keys: bool = False,
                 baseline_spec: str | None = None, repo: Path | None = None,
                 lease_wait_s: float | None = None) -> None:
        self.run_id = run_id
        self.git_commit = git_commit
        self.store = store
        self.cache_root = cache_root
        self.log = log
        self._factories: dict[Path, VariantFactory] = {}
        self._results: dict[tuple[Path, str, str], VariantResult] = {}
        self._transports: dict[str, Transport] = {}
        self._failures: dict[tuple[Path, str, str], EdgeGateError] = {}
        self._device_failures: dict[str, EdgeGateError] = {}
        self._weight_bytes_memo: dict[str, int] = {}
        self.device_reports: dict[str, DeviceReport] = {}
        self.accept_new_host_keys = accept_new_host_keys
        self.baseline_spec = baseline_spec
        self.repo = repo
        self.baselines: dict[tuple[str, str, str], BaselineChoice | None] = {}
        self.skipped_baselines: dict[tuple[str, str, str], tuple[str, ...]] = {}  # passing runs not clean enough
        self.paired_notes: dict[tuple[str, str, str], str] = {}  # why decode was not measured side by side
        self.limits: dict[tuple[str, str, str], dict[str, str]] = {}  # shown next to the values
        self.straddles: dict[tuple[str, str, str], dict[str, str]] = {}  # metric -> interval around its limit
        self.leases = Leases(lease_owner(run_id), lease_wait_s, accept_new_host_keys, log)  # one measurement at a time

    def factory(self, suite: Suite) -> VariantFactory:
        if suite.path not in self._factories:
            self._factories[suite.path] = VariantFactory(suite, self.cache_root, self.log)
        return self._factories[suite.path]

    def measure(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> VariantResult:
        """Build if needed, run the runner on ``device``, record every metric as it arrives."""
        key = (suite.path, device.name, variant.name)
        if key in self._failures:
            raise self._failures[key]
        if key not in self._results:
            try:
                self._results[key] = self._measure(suite, device, variant)
            except EdgeGateError as exc:
                self._failures[key] = exc
                raise
        return self._results[key]

    def judge(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> Verdict:
        """Ship, blocked (the thresholds, suite < variant < device profile, and regressions it
        breaks) or inconclusive (a judged latency stayed disturbed), recorded in the history."""
        result = self.measure(suite, device, variant)
        thresholds = self._supported(result, gate.merge(suite.thresholds, variant.thresholds,
                                                        applicable(device.thresholds, suite)))
        reference = None
        if variant.name == suite.reference:
            thresholds = _absolute_only(thresholds)
        else:
            reference_result = self._reference(suite, device)
            reference = reference_result.values() if reference_result else {}
        intervals = gate.Intervals(result.intervals(), result.ratio_intervals())
        breaches = gate.check(thresholds, result.values(), reference, result.notes(), intervals)
        self.limits[(suite.name, device.name, variant.name)] = gate.limits(thresholds, reference)
        self.straddles[(suite.name, device.name, variant.name)] = gate.straddling(thresholds, intervals, reference)
        judged = set(thresholds)
        breaches += self._regressions(suite, device, variant, result, judged)
        expected = variant.expected_blocked(device.name)
        judged_regressions = [b for b in breaches if b.threshold.metric not in result.disturbed()]
        excluded = result.excluded + (["regressed against its baseline"] if expected and _regressed(judged_regressions)
                                      else [])
        verdict = decide(breaches, judged, result.disturbed(), result.values(), excluded)
        outcome = "error" if result.errors else verdict.outcome
        self.store.append_verdict({
            "run_id": self.run_id, "time": _now(), "suite": suite.name, "device": device.name,
            "variant": variant.name, "passed": verdict.passed and not result.errors, "verdict": outcome,
            "breaches": [b.reason for b in verdict.breaches], "error": "; ".join(result.errors) or None,
            "inconclusive": list(verdict.inconclusive), "baseline_excluded": verdict.baseline_excluded,
            "expected": expected.blocked if expected else None,
        })
        return verdict

    def _supported(self, result: VariantResult, thresholds: dict[str, tuple[gate.Threshold, ...]]
                   ) -> dict[str, tuple[gate.Threshold, ...]]:
        """The limits on metrics the variant's runtime can give (LiteRT-LM has no logits: no KL, no
        top-1); each one dropped is logged with the runtime's reason, which the report shows too."""
        dropped = [name for name in thresholds if name in result.metrics and result.metrics[name].unsupported]
        for name in dropped:
            self.log(f"{result.variant} on {result.device}: {name} limits not judged: {result.metrics[name].note}")
        return {name: rules for name, rules in thresholds.items() if name not in dropped}

    def _regressions(self, suite: Suite, device: DeviceProfile, variant: VariantSpec,
                     result: VariantResult, judged: set[str]) -> list[gate.Breach]:
        """Metrics that got worse than the baseline run, beyond their rule and beyond noise
        (each metric compared lands in ``judged``)."""
        key = (suite.name, device.name, variant.name)
        choice = find_baseline(self.store, suite.name, device.name, variant.name, self.baseline_spec,
                               exclude_run=self.run_id, repo=self.repo)
        self.baselines[key] = choice
        self.skipped_baselines[key] = choice.skipped if choice else skipped_runs(
            self.store, suite.name, device.name, variant.name, exclude_run=self.run_id)
        for skipped in self.skipped_baselines[key]:
            self.log(f"{variant.name} on {device.name}: not a baseline: run {skipped}")
        if choice is None:
            self.log(f"{variant.name} on {device.name}: no baseline yet, thresholds only")
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

    def variant_settings(self) -> dict[str, dict[str, Any]]:
        """Per suite/device/variant: runtime settings (providers, threads, arena) and thermal state."""
        return {f"{result.suite}/{result.device}/{result.variant}": result.settings for result in self._results.values()}

    def record_error(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, error: str) -> None:
        self.store.append_verdict({
            "run_id": self.run_id, "time": _now(), "suite": suite.name, "device": device.name,
            "variant": variant.name, "passed": False, "breaches": [], "error": error,
        })

    def close(self) -> None:
        self.leases.close()
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    def _reference(self, suite: Suite, device: DeviceProfile) -> VariantResult | None:
        """The reference's result, or None if it failed: the others are still measured, and
        every limit relative to the reference then reports that it cannot be checked."""
        try:
            return self.measure(suite, device, suite.variant(suite.reference))
        except EdgeGateError:
            return None

    def _transport(self, device: DeviceProfile) -> Transport:
        if device.name not in self._transports:
            self._transports[device.name] = open_transport(device, self.accept_new_host_keys)
        return self._transports[device.name]

    def ready_transport(self, device: DeviceProfile) -> Transport:
        """The device's transport after a successful probe and runner deploy (once per device).

        A device that failed this once fails every later item at once with the same reason,
        instead of each one waiting for its own timeouts.
        """
        if device.name in self._device_failures:
            raise self._device_failures[device.name]
        transport = self._transport(device)
        if device.name in self.device_reports:
            return transport
        try:
            report = devicecheck.probe(device.name, transport, device.execution_providers, device.threads)
            if not report.ready:
                raise DeviceNotReady(report.explain())
            if devicecheck.runner_too_old(report.facts) is None:  # else every variant is unsupported there
                transport.ensure_runner()
        except EdgeGateError as exc:
            self._device_failures[device.name] = exc
            raise
        self.log(report.explain())
        self.device_reports[device.name] = report
        return transport

    def _measure(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> VariantResult:
        artifact = self.factory(suite).artifact(variant)
        self.store.append_artifact(self.run_id, suite.name, variant.name, artifact.recipe, artifact.key, artifact.manifest)
        transport = self.ready_transport(device)
        job = self._job(suite, device, variant, artifact)
        self._check_supported(suite, device, variant, artifact, job["backend"])
        hashes = {name: facts["sha256"] for name, facts in artifact.manifest["files"].items()
                  if name != artifact.tokenizer.name}  # tokenizing happens here, not on the device
        job["model"] = str(PurePosixPath(transport.stage(artifact.folder, hashes), artifact.model.name))
        self._add_paired(suite, device, variant, artifact, transport, job)
        self.log(f"measuring {variant.name} on {device.name}")
        result = VariantResult(suite.name, device.name, variant.name)
        result.settings["reference"] = suite.reference  # what the report compares each variant with
        if job["inject_slowdown"]:
            result.excluded.append(f"injected slowdown {SLOWDOWN_ENV}={job['inject_slowdown']:g}")
        with self.leases.hold(device) as lease:
            self._run(transport, job, device, result)
        if lease.lost:
            self._lease_lost(result, lease.lost)
        roofline = self._roofline(suite, device, variant, artifact, result) if suite.base_model.task == "causal_lm" else []
        for metric in roofline:
            result.metrics[metric.name] = metric
            self.store.append_results([self._row(result, metric)])
        return result

    def _check_supported(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                         backend: str) -> None:
        """Before the upload: VariantUnsupported when the device cannot run the variant, DeviceNotReady
        when its runtime is not installed (a setup step, not a limit of the device)."""
        facts = self.device_reports[device.name].facts
        missing = compat.not_installed(facts, backend)
        if missing:
            raise DeviceNotReady(f"{variant.name} needs {missing} on {device.name}, which is not installed there: "
                                 f"`edgegate devices setup {device.name} --suite {suite.path}` installs it")
        model = artifact.model if artifact.model.suffix == ".onnx" else None
        reasons = compat.unsupported(device.name, facts, backend, model, device.execution_providers)
        if reasons:
            raise VariantUnsupported(f"{variant.name} on {device.name}: " + "; ".join(reasons))

    def record_unsupported(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, why: str) -> None:
        self.store.append_verdict({
            "run_id": self.run_id, "time": _now(), "suite": suite.name, "device": device.name,
            "variant": variant.name, "passed": False, "verdict": "unsupported", "breaches": [], "unsupported": why,
        })

    def _lease_lost(self, result: VariantResult, why: str) -> None:
        """Another run may have measured on the device meanwhile: every timing is disturbed."""
        reason = f"the device lease was lost during the measurement ({why})"
        result.excluded.append(reason)
        for metric in result.metrics.values():
            if metric.unit in TIMED_UNITS and not metric.disturbed:
                metric.disturbed = reason

    def _roofline(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                  result: VariantResult) -> list[MetricResult]:
        """Decode tok/s against the ceiling that memory bandwidth puts on it (weights read per token)."""
        weight_bytes = self._weight_bytes(artifact)
        if weight_bytes is None:
            why = f"unavailable: the {artifact.recipe} recipe records no weight bytes read per token"
            return [MetricResult("weights_mb_per_token", None, "MB", note=why),
                    MetricResult("roofline_fraction", None, "", note=why)]
        metrics = [MetricResult("weights_mb_per_token", weight_bytes / 1e6, "MB")]
        bandwidth, source = self._bandwidth(suite, device, variant, result)
        decode = result.metrics.get("decode_tok_s")
        if bandwidth is None or decode is None or decode.value is None:
            note = "unavailable: no memory bandwidth (set memory_bandwidth_gbs in the profile)" if bandwidth is None \
                else "unavailable: decode not measured"
            return metrics + [MetricResult("roofline_fraction", None, "", note=note)]
        ceiling = bandwidth * 1e9 / weight_bytes
        basis = f"{bandwidth:.1f} GB/s ({source}) / {weight_bytes / 1e6:.0f} MB per token"
        return metrics + [MetricResult("decode_ceiling_tok_s", ceiling, "tok/s", note=basis),
                          MetricResult("roofline_fraction", decode.value / ceiling, "", note=basis,
                                       disturbed=decode.disturbed)]

    def _weight_bytes(self, artifact: Artifact) -> int | None:
        """Bytes of weights one decode step reads: from the ONNX graph, or as the recipe of another
        runtime's file recorded it (None where it did not)."""
        if artifact.runtime != "onnxruntime":
            recorded = artifact.manifest.get("facts", {}).get("weight_bytes_per_token")
            return int(recorded) if recorded else None
        if artifact.key not in self._weight_bytes_memo:
            import onnx

            from .variants.graph_passes import weight_bytes_per_token

            graph = onnx.load(str(artifact.model), load_external_data=False)
            self._weight_bytes_memo[artifact.key] = weight_bytes_per_token(graph)
        return self._weight_bytes_memo[artifact.key]

    def _bandwidth(self, suite: Suite, device: DeviceProfile, variant: VariantSpec,
                   result: VariantResult) -> tuple[float | None, str]:
        if device.memory_bandwidth_gbs:
            return device.memory_bandwidth_gbs, "the profile's memory_bandwidth_gbs, a spec-sheet figure"
        source = result if variant.name == suite.reference else self._reference(suite, device)
        measured = source.metrics.get("memory_bandwidth_gbs") if source else None
        return (measured.value, "measured on the device") if measured and measured.value else (None, "")

    def _add_paired(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                    transport: Transport, job: dict[str, Any]) -> None:
        """Decode side by side with the baseline run's build when it differs from tonight's (see paired)."""
        measurements = job["measurements"]
        if "decode" not in measurements or "decode_vs_baseline" not in (suite.regressions or DEFAULT_RULES):
            return
        choice = find_baseline(self.store, suite.name, device.name, variant.name, self.baseline_spec,
                               exclude_run=self.run_id, repo=self.repo)
        planned = paired.plan(self.store, self.cache_root, choice, suite, variant.name, artifact)
        if isinstance(planned, str):
            self.log(f"{variant.name} on {device.name}: decode not paired: {planned}")
            self.paired_notes[(suite.name, device.name, variant.name)] = self._night_to_night(
                planned, suite, device, variant, artifact)
            return
        assert choice is not None
        measurements["paired_decode"] = paired.measurement(transport, planned, measurements["decode"], choice)

    def _night_to_night(self, why: str, suite: Suite, device: DeviceProfile, variant: VariantSpec,
                        artifact: Artifact) -> str:
        """Why decode is not paired and, for the same build, what a night-to-night rule can see here."""
        spread = paired.same_build_spread(self.store, suite.name, device.name, variant.name, artifact.key)
        if spread is None or not why.startswith("same build"):
            return why
        runs, low, high = spread
        rule = (suite.regressions or DEFAULT_RULES).get("decode_ms")
        limit = f"its rule's +{rule.max_change:.0%}" if rule else "a rule (decode_ms has none)"
        return (f"{why}. Over {runs} clean runs of this build on {device.name}, its decode median moved between "
                f"{low:.3g} and {high:.3g} ms ({high / low - 1:+.1%}) with nothing changed but the environment: "
                f"a change of the device or its software is seen night to night only beyond that and beyond {limit}")

    def _job(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact) -> dict[str, Any]:
        """The runner's job for this variant; the reference's saved outputs are named for the others."""
        reference_artifact = self.factory(suite).artifact(suite.variant(suite.reference))
        if variant.name == suite.reference:
            has_reference = True
        else:
            reference = self._reference(suite, device)
            needed = "perplexity" if suite.base_model.task == "causal_lm" else "gold_spearman"
            has_reference = reference is not None and needed in reference.metrics
        return jobs.job(suite, device, variant, artifact, reference_artifact, has_reference,
                        self._transport(device).device_path)

    def _run(self, transport: Transport, job: dict[str, Any], device: DeviceProfile, result: VariantResult) -> None:
        try:
            with closing(transport.run_job(job, device.measurement_timeout_s)) as events:  # Ctrl-C stops the runner too
                for event in events:
                    self._take(event, result)
        except RunnerError as exc:
            if not result.errors:
                raise
            # the runner said why before it exited (e.g. the model would not load): say that first
            raise RunnerError(f"{'; '.join(result.errors)} ({exc})", exc.stdout, exc.stderr) from None

    def _take(self, event: dict[str, Any], result: VariantResult) -> None:
        kind = event.get("event")
        if kind == "metric":
            metric = _metric(event)
            result.metrics[metric.name] = metric
            self.store.append_results([self._row(result, metric)])
        elif kind == "error":
            result.errors.append(f"{event.get('measurement')}: {event.get('message')}")
        elif kind == "settings":
            result.settings.update(event.get("settings", {}))
        elif kind == "retry":
            self.log(f"{result.variant} on {result.device}: timed region disturbed ({'; '.join(event.get('why') or [])}); "
                     f"measuring it again in {event.get('wait_s', 0):g} s (attempt {event.get('attempt')})")
        elif kind == "thermal":
            result.settings["thermal"] = {k: event.get(k) for k in ("before", "after", "during_max", "warnings")}
        elif kind == "done" and event.get("failures") and not result.errors:
            raise RunnerError(f"runner reported {event['failures']} failures without saying which")

    def _row(self, result: VariantResult, metric: MetricResult) -> dict[str, Any]:
        summary = metric.summary.as_dict() if metric.summary else {}
        if metric.interval and not summary:
            summary = {"ci_low": metric.interval[0], "ci_high": metric.interval[1]}

        return {
            "run_id": self.run_id, "time": _now(), "git_commit": self.git_commit, "suite": result.suite,
            "device": result.device, "variant": result.variant, "metric": metric.name, "value": metric.value,
            "unit": metric.unit, "samples": metric.samples, "note": metric.note, **summary,
            "disturbed": metric.disturbed, "attempts": metric.attempts, "unit_size": metric.unit_size,
        }


def _interval(event: dict[str, Any], prefix: str = "ci_") -> tuple[float, float] | None:
    low, high = event.get(f"{prefix}low"), event.get(f"{prefix}high")
    return (float(low), float(high)) if low is not None and high is not None else None




def applicable(thresholds: dict[str, tuple[gate.Threshold, ...]], suite: Suite) -> dict[str, tuple[gate.Threshold, ...]]:
    """A device profile's limits on the metrics this suite measures (an encoder has no decode)."""
    measured = TASK_METRICS[suite.base_model.task]
    return {metric: rules for metric, rules in thresholds.items() if metric in measured}


def _regressed(breaches: list[gate.Breach]) -> bool:
    return any(breach.threshold.kind == "baseline" for breach in breaches)


def _metric(event: dict[str, Any]) -> MetricResult:
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










def _absolute_only(thresholds: dict[str, tuple[gate.Threshold, ...]]) -> dict[str, tuple[gate.Threshold, ...]]:
    kept = {}
    for metric, rules in thresholds.items():
        absolute = tuple(r for r in rules if not r.kind.endswith("ratio"))
        if absolute and metric not in RELATIVE_METRICS:
            kept[metric] = absolute
    return kept


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
