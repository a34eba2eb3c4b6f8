"""One run: which suites on which devices; builds, measures, records and judges each variant.

``RunSession`` orchestrates; each concern has its own module: the device connections
(connections), the runner's job (jobs), what the device can run (compat), side-by-side decode
against the baseline's build (paired), the runner's events as results (results), the roofline
(roofline), the limits and regressions (judging), the verdict rows (verdict_rows).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path, PurePosixPath
from typing import Any

from . import compat, jobs, paired, verdict_rows
from .connections import DeviceConnections
from .devicecheck import DeviceReport
from .errors import DeviceNotReady, EdgeGateError, RunnerError, VariantUnsupported
from .jobs import SLOWDOWN_ENV, decoder_backend, injected_slowdown  # noqa: F401 - the plugin and benches import them from here
from .judging import Judge
from .lease import Leases, lease_owner
from .profiles import DeviceProfile
from .results import MetricResult, VariantResult, result_row, take_event
from .roofline import Roofline
from .store import HistoryStore
from .suites import Suite, VariantSpec
from .transport import Transport
from .variants.factory import Artifact, VariantFactory
from .verdict import Verdict

__all__ = ["MetricResult", "RunSession", "VariantResult"]

Key = tuple[str, str, str]  # suite, device, variant
# per task: the reference's metric that exists only once it saved its outputs on the device
REFERENCE_SAVED_BY = {"causal_lm": "perplexity", "sentence_embedding": "gold_spearman", "generic": "infer_ms"}


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
        self._failures: dict[tuple[Path, str, str], EdgeGateError] = {}
        self.connections = DeviceConnections(accept_new_host_keys, log)
        self.judge_ = Judge(store, run_id, baseline_spec, repo, log)
        self.roofline = Roofline()
        self.paired_notes: dict[Key, str] = {}  # why decode was not measured side by side
        self.leases = Leases(lease_owner(run_id), lease_wait_s, log=log, connect=self.connections.transport)

    # what the report shows besides the results
    @property
    def device_reports(self) -> dict[str, DeviceReport]:
        return self.connections.reports

    @property
    def baselines(self) -> dict[Key, Any]:
        return self.judge_.baselines

    @property
    def skipped_baselines(self) -> dict[Key, tuple[str, ...]]:
        return self.judge_.skipped_baselines

    @property
    def limits(self) -> dict[Key, dict[str, str]]:
        return self.judge_.limits

    @property
    def straddles(self) -> dict[Key, dict[str, str]]:
        return self.judge_.straddles

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

    def judge(self, suite: Suite, device: DeviceProfile, variant: VariantSpec,
              review: Callable[[Verdict, VariantResult], Verdict] | None = None) -> Verdict:
        """The variant's verdict (judging.Judge), recorded in the history; ``review`` sees it
        first and may answer another (the plugin's pytest_edgegate_verdict hook)."""
        result = self.measure(suite, device, variant)
        reference = None if variant.name == suite.reference else self._reference(suite, device)
        verdict = self.judge_.verdict(suite, device, variant, result, reference)
        if review is not None:
            verdict = review(verdict, result)
        expected = variant.expected_blocked(device.name)
        self.store.append_verdict(verdict_rows.judged(self.run_id, suite, device, variant, verdict, result, expected))
        return verdict

    def variant_settings(self) -> dict[str, dict[str, Any]]:
        """Per suite/device/variant: runtime settings (providers, threads, arena) and thermal state."""
        return {f"{result.suite}/{result.device}/{result.variant}": result.settings for result in self._results.values()}

    def record_error(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, error: str) -> None:
        self.store.append_verdict(verdict_rows.error(self.run_id, suite, device, variant, error))

    def record_unsupported(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, why: str) -> None:
        self.store.append_verdict(verdict_rows.unsupported(self.run_id, suite, device, variant, why))

    def ready_transport(self, device: DeviceProfile) -> Transport:
        return self.connections.ready(device)

    def close(self) -> None:
        self.leases.close()
        self.connections.close()

    def _reference(self, suite: Suite, device: DeviceProfile) -> VariantResult | None:
        """The reference's result, or None if it failed: the others are still measured, and
        every limit relative to the reference then reports that it cannot be checked."""
        try:
            return self.measure(suite, device, suite.variant(suite.reference))
        except EdgeGateError:
            return None

    def _measure(self, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> VariantResult:
        artifact = self.factory(suite).artifact(variant)
        self.store.append_artifact(self.run_id, suite.name, variant.name, artifact.recipe, artifact.key, artifact.manifest)
        transport = self.connections.ready(device)
        job = self._job(suite, device, variant, artifact)
        self._check_supported(suite, device, variant, job["backend"], artifact)
        job["model"] = str(PurePosixPath(transport.stage(artifact.folder, _device_files(artifact)), artifact.model.name))
        jobs.stage_files(job, transport)  # inputs too large to travel inside the job
        self._pair_decode(suite, device, variant, artifact, transport, job)
        self.log(f"measuring {variant.name} on {device.name}")
        result = VariantResult(suite.name, device.name, variant.name)
        result.settings["reference"] = suite.reference  # what the report compares each variant with
        if job["inject_slowdown"]:
            result.excluded.append(f"injected slowdown {SLOWDOWN_ENV}={job['inject_slowdown']:g}")
        with self.leases.hold(device) as lease:
            self._run(transport, job, device, result)
        if lease.lost:
            result.lease_lost(lease.lost)
        if suite.base_model.task == "causal_lm":
            measured_on = result if variant.name == suite.reference else self._reference(suite, device)
            for metric in self.roofline.metrics(device, artifact, result, measured_on):
                self._store_metric(result, metric)
        return result

    def _job(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact) -> dict[str, Any]:
        """The runner's job for this variant; the reference's saved outputs are named for the others."""
        reference_artifact = self.factory(suite).artifact(suite.variant(suite.reference))
        if variant.name == suite.reference:
            has_reference = True
        else:
            reference = self._reference(suite, device)
            has_reference = reference is not None and REFERENCE_SAVED_BY[suite.base_model.task] in reference.metrics
        return jobs.job(suite, device, variant, artifact, reference_artifact, has_reference,
                        self.connections.transport(device).device_path)

    def _check_supported(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, backend: str,
                         artifact: Artifact) -> None:
        """Before the upload: VariantUnsupported when the device cannot run the variant, DeviceNotReady
        when its runtime is not installed (a setup step, not a limit of the device)."""
        facts = self.connections.reports[device.name].facts
        missing = compat.not_installed(facts, backend)
        if missing:
            raise DeviceNotReady(f"{variant.name} needs {missing} on {device.name}, which is not installed there: "
                                 f"`edgegate devices setup {device.name} --suite {suite.path}` installs it")
        model = artifact.model if artifact.model.suffix == ".onnx" else None
        reasons = compat.unsupported(device.name, facts, backend, model, device.execution_providers)
        if reasons:
            raise VariantUnsupported(f"{variant.name} on {device.name}: " + "; ".join(reasons))

    def _pair_decode(self, suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                     transport: Transport, job: dict[str, Any]) -> None:
        choice = self.judge_.baseline(suite, device, variant)
        not_paired = paired.add_to_job(job, self.store, self.cache_root, choice, suite, device.name, variant.name,
                                       artifact, transport)
        if not_paired is not None:
            why, note = not_paired
            self.log(f"{variant.name} on {device.name}: decode not paired: {why}")
            self.paired_notes[(suite.name, device.name, variant.name)] = note

    def _run(self, transport: Transport, job: dict[str, Any], device: DeviceProfile, result: VariantResult) -> None:
        try:
            with closing(transport.run_job(job, device.measurement_timeout_s)) as events:  # Ctrl-C stops the runner too
                for event in events:
                    metric = take_event(event, result, self.log)
                    if metric is not None:
                        self._store_metric(result, metric)
        except RunnerError as exc:
            if not result.errors:
                raise
            # the runner said why before it exited (e.g. the model would not load): say that first
            raise RunnerError(f"{'; '.join(result.errors)} ({exc})", exc.stdout, exc.stderr) from None

    def _store_metric(self, result: VariantResult, metric: MetricResult) -> None:
        result.metrics[metric.name] = metric
        self.store.append_results([result_row(self.run_id, self.git_commit, result, metric)])


def _device_files(artifact: Artifact) -> dict[str, str]:
    """The artifact's files the device needs, with their hashes (tokenizing happens on the host)."""
    return {name: facts["sha256"] for name, facts in artifact.manifest["files"].items()
            if name != artifact.tokenizer.name}
