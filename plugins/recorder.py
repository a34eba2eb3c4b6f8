"""The run recorder: registered only when EdgeGate has something to measure in this session."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from edgegate import benchjson, environment, progress
from edgegate.profiles import DeviceProfile
from edgegate.report import render_run
from edgegate.session import SLOWDOWN_ENV, RunSession, injected_slowdown
from edgegate.store import RunInfo

from .extensions import HookedStore, RunnerOutput, report_hook
from .options import Settings
from .terminal import open_display
from .workers import is_worker, merge_facts, publish_to_controller, run_id_for

SETTINGS_KEY = pytest.StashKey[Settings]()
RECORDER_KEY = pytest.StashKey["Recorder"]()
BULKY_FACTS = ("onnx_kernels",)  # the device's kernel list: checked per variant, not kept in the history


class Recorder:
    """Owns the run: its id, the history store, the devices, and the report at the end."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.run_id = run_id_for(config)  # on an xdist worker: the controller's, shared by all workers
        self.profiles: dict[str, DeviceProfile] = {
            name: settings.profile(name) for name in settings.devices
        }
        self.store = HookedStore(settings.history, config)  # pytest_edgegate_result_before_store on each row
        self.suites: list[str] = []
        self.display = open_display(config, self.run_id, settings.cache_dir)  # bars or lines, -q/-v
        progress.activate(self.display)
        self.runner_output = RunnerOutput(self.display.say)  # a runtime's prints on the runner's stdout, by default
        self.session = RunSession(self.run_id, environment.git_commit(settings.rootdir), self.store,
                                  settings.cache_dir, self.log, settings.accept_new_host_keys,
                                  baseline_spec=settings.baseline, repo=settings.rootdir,
                                  lease_wait_s=settings.lease_wait_s)
        self.report: Path | None = None
        self.benchmark_files: list[Path] = []
        self.environment: dict[str, object] = {}
        self.report_error: str | None = None
        self.interrupted = False
        self.worker_facts: list[dict[str, Any]] = []  # on the xdist controller: what each worker learnt
        self._started = False

    def start(self, suites: list[str]) -> None:
        self.suites = suites
        self.environment = {"host": environment.host_manifest()}
        slowdown = injected_slowdown()
        if slowdown:  # recorded with the run: such a run is never a baseline, and the report says why
            self.environment["inject_slowdown"] = {"variable": SLOWDOWN_ENV, "share": slowdown}
        self.store.start_run(RunInfo(
            self.run_id, _now(), self.session.git_commit, tuple(suites), tuple(self.profiles), self.environment,
            branch=environment.git_branch(self.settings.rootdir),
        ), joining=is_worker(self.config))
        self._started = True

    def log(self, line: str) -> None:
        self.display.message(line)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.display.end_of_item()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.session.close()
        progress.deactivate(self.display)
        self.runner_output.close()
        if not self._started:
            return
        facts = merge_facts([*self.worker_facts, self._facts()])
        if is_worker(self.config):  # the xdist controller finishes the run and writes the report, once
            publish_to_controller(self.config, self.environment, facts)
            return
        self.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        local = [name for name, profile in self.profiles.items() if profile.transport == "local"]
        try:
            self.store.finish_run(self.run_id, _now(), int(exitstatus), {**self.environment, **facts})
            self.benchmark_files = benchjson.write_run(self.store, self.run_id, self.settings.reports_dir / "benchmarks", local)
            self.report = render_run(self.store, self.run_id, self.settings.reports_dir, self.settings.templates,
                                     before_render=report_hook(self.config))
        except Exception as exc:  # noqa: BLE001 - the history is safe; say so instead of a traceback
            self.report_error = (f"could not write the report ({type(exc).__name__}: {exc}); every result is in "
                                 f"{self.store.label}: re-render with `edgegate report {self.run_id}`")

    def _facts(self) -> dict[str, Any]:
        devices = {name: {k: v for k, v in report.facts.items() if k not in BULKY_FACTS}
                   for name, report in self.session.device_reports.items()}
        baselines = {"/".join(key): (vars(choice) if choice else None) for key, choice in self.session.baselines.items()}
        skipped = {"/".join(key): list(runs) for key, runs in self.session.skipped_baselines.items() if runs}
        return {"devices": devices, "baselines": baselines, "variants": self.session.variant_settings(),
                "limits": {"/".join(key): shown for key, shown in self.session.limits.items()},
                "skipped_baselines": skipped,
                "straddles": {"/".join(key): found for key, found in self.session.straddles.items() if found},
                "not_paired": {"/".join(key): why for key, why in self.session.paired_notes.items()}}

    def adopt(self, environment: dict[str, Any], facts: dict[str, Any]) -> None:
        """On the xdist controller: a finished worker's part of the run, reported with the rest."""
        self.environment = environment
        self.worker_facts.append(facts)
        self._started = True

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self._started:
            return
        quiet = self.config.get_verbosity() < 0  # -q: the run, its verdicts and its report, nothing else
        terminalreporter.currentfspath = None  # the items' line is done: write_line must not add a blank one
        terminalreporter.section("EdgeGate")
        terminalreporter.write_line(f"run {self.run_id}; history: {self.store.label}")  # bench/ scripts parse it
        counts = self._verdict_counts()
        if counts:
            terminalreporter.write_line("verdicts: " + ", ".join(f"{count} {name}" for name, count in counts.items()),
                                        yellow="inconclusive" in counts and "blocked" not in counts,
                                        red="blocked" in counts or "error" in counts)
        if self.environment.get("inject_slowdown"):
            terminalreporter.write_line(f"{SLOWDOWN_ENV} was set: timings were slowed on purpose; this run is never "
                                        "a baseline", yellow=True)
        if self.interrupted:
            terminalreporter.write_line("interrupted: everything measured before the interruption is in the history "
                                        "and the report; the items not run have no verdict", yellow=True)
        if self.report is not None:
            terminalreporter.write_line(f"report: {self.report}")
            if self.config.get_verbosity() > 0:
                terminalreporter.write_line(f"pytest-benchmark files: {', '.join(map(str, self.benchmark_files))}")
            if not quiet:
                terminalreporter.write_line(f"latest: {self.settings.reports_dir / 'latest.html'}")
        if self.report_error:
            terminalreporter.write_line(self.report_error, red=True)


    def _verdict_counts(self) -> dict[str, int]:
        """How many items of this run got each verdict (every worker's, read from the history)."""
        try:
            verdicts = self.store.frame("verdicts", self.run_id)
        except Exception:  # noqa: BLE001 - a summary line is not worth a traceback
            return {}
        latest = verdicts.drop_duplicates(["suite", "device", "variant"], keep="last")
        order = ("ship", "blocked", "inconclusive", "error", "unsupported")
        counted = latest.verdict.fillna("ship").value_counts().to_dict()
        return {name: int(counted[name]) for name in order if name in counted}


def recorder(config: pytest.Config) -> Recorder:
    """The session's recorder, created and registered on first use."""
    if RECORDER_KEY not in config.stash:
        instance = Recorder(config, config.stash[SETTINGS_KEY])
        config.stash[RECORDER_KEY] = instance
        config.pluginmanager.register(instance, "edgegate-recorder")
    return config.stash[RECORDER_KEY]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
