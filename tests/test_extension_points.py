"""Extension points (entry points), EdgeGate's pytest hooks, and the host-runner protocol.

The plugins here are real distributions: a folder with their modules and a ``.dist-info`` with
``entry_points.txt``, put on PYTHONPATH, as pip would leave them in site-packages. One pytest run
on ``local`` (module fixture ``plugin_run``) measures the tiny model's fp32 export and a plugin
recipe's copy of it on a plugin backend, with a plugin power sensor, hooks in a conftest.py, and
a plugin report section beside a broken one; the tests below read what it left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edgegate.errors import ConfigError, RunnerError
from edgegate.runner.entrypoints import plugins
from edgegate.runner.protocol import PROTOCOL_VERSION

from conftest import LOCAL_PROFILE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WATTS = 7.25  # what the toy meter reads

TOY_BACKEND = '''
from edgegate.runner.backends.onnxruntime import OnnxRuntimeBackend

REQUIRES = ("onnxruntime",)


class ToyBackend(OnnxRuntimeBackend):
    LABEL = "Toy runtime"
    IMPORTS = "onnxruntime"

    def __init__(self, *args, **kwargs):
        print("toy runtime says hello", flush=True)  # as a runtime library would, on the runner's stdout
        super().__init__(*args, **kwargs)

    def settings(self):
        return {**super().settings(), "toy_backend": True}
'''
TOY_SENSOR = '''
class ToyMeter:
    name = "toy_meter"

    def __init__(self, watts):
        self.watts = watts

    def describe(self):
        return "toy meter (a test plugin)"

    def read_watts(self):
        return self.watts

    def read_energy_j(self):
        return None


def open_meter(settings):
    return ToyMeter(float(settings["watts"]))
'''
TOY_RECIPE = '''
import shutil

NAME = "toy_copy"
PARENT = "export_fp32"
TOOLS = ()
DEFAULTS = {}
RUNTIME = "toy_onnx"


def build(ctx):
    for path in ctx.parent.iterdir():
        if path.name.startswith("model.onnx") or path.name == "tokenizer.json":
            shutil.copy2(path, ctx.out_dir / path.name)
    return {"copied_from": ctx.parent.name}
'''
TOY_SECTION = '''
def section(context):
    return {"title": "Toy plugin section", "text": f"{len(context['rows'])} rows, overall {context['overall']} <b>"}
'''
TOY_TRANSPORT = '''
from edgegate.transport.local import LocalTransport


class PigeonTransport(LocalTransport):
    def __init__(self, profile, accept_new_host_key=False):
        super().__init__(profile)
        self.loft = profile.transport_settings["loft"]
'''
TOY_ENTRY_POINTS = {
    "edgegate.backends": {"toy_onnx": "edgegate_toyplugin.backend:ToyBackend"},
    "edgegate.sensors": {"toy_meter": "edgegate_toyplugin.sensor:open_meter"},
    "edgegate.recipes": {"toy_copy": "edgegate_toyplugin.recipe"},
    "edgegate.report_sections": {"toy": "edgegate_toyplugin.section:section"},
    "edgegate.transports": {"pigeon": "edgegate_toyplugin.transport:PigeonTransport"},
}
BROKEN_ENTRY_POINTS = {group: {f"broken_{group.split('.')[1]}": "edgegate_nowhere.thing:Thing"}
                       for group in TOY_ENTRY_POINTS}
CONFTEST = '''
import dataclasses

from edgegate.gate import Breach, Threshold


def pytest_edgegate_result_before_store(config, row):
    row["note"] = "; ".join(part for part in (row.get("note"), "bench: lab-7") if part)


def pytest_edgegate_report_context(config, context):
    context["warnings"].append({"device": "local", "variant": "all", "metric": "-",
                                "note": "hooked: measured in the maintenance window"})


def pytest_edgegate_verdict(config, item, verdict, result):
    if not result.settings.get("toy_backend"):
        return None
    breach = Breach(Threshold("size_mb", "max", 0.0), result.metrics["size_mb"].value, 0.0,
                    "size_mb: the lab allows no toy runtime on its shelf")
    return dataclasses.replace(verdict, outcome="blocked", breaches=(*verdict.breaches, breach))
'''
PROFILE = LOCAL_PROFILE + "power_sensor: {{kind: toy_meter, watts: {watts}}}\n"  # the plugin's sensor
SUITE = """\
schema: 1
name: plug
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  toy: {recipe: toy_copy}
measurements:
  prefill: {prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}
  decode: {prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}
  accuracy: {windows: 2, window_tokens: 32}
thresholds:
  perplexity: {max_ratio: 1.5}
regressions: {decode_ms: false, prefill_ms: false, ttft_ms: false}
"""


def write_distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]],
                       modules: dict[str, str] | None = None) -> Path:
    """A distribution as pip installs it: its modules and ``<name>-0.1.dist-info`` in ``root``."""
    for relative, text in (modules or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items()) + "\n"
        for group, entries in entry_points.items()))
    return root


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy plugin and a broken one, installed side by side in one folder."""
    root = tmp_path_factory.mktemp("site-packages")
    toy = {f"edgegate_toyplugin/{name}.py": text for name, text in (
        ("__init__", ""), ("backend", TOY_BACKEND), ("sensor", TOY_SENSOR), ("recipe", TOY_RECIPE),
        ("section", TOY_SECTION), ("transport", TOY_TRANSPORT))}
    write_distribution(root, "edgegate-toyplugin", TOY_ENTRY_POINTS, toy)
    return write_distribution(root, "edgegate-brokenplugin", BROKEN_ENTRY_POINTS)


def plugin_env(plugin_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")]))}


@dataclass
class PluginRun:
    project: Path
    done: subprocess.CompletedProcess[str]

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.project / "reports" / "history.sqlite") as db:
            return db.execute(sql).fetchall()

    def page(self) -> str:
        return (self.project / "reports" / "latest.html").read_text()


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_cache: Path,
               plugin_path: Path) -> PluginRun:
    project = tmp_path_factory.mktemp("plugin-project")
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST)
    shutil.copytree(tiny_model_dir, project / "suites" / "tiny_model")
    (project / "suites" / "suite_plug.yaml").write_text(SUITE)
    (project / "device_profiles").mkdir()
    (project / "device_profiles" / "local.yaml").write_text(PROFILE.format(work_dir=project / "work", watts=WATTS))
    done = subprocess.run([sys.executable, "-m", "pytest", "suites/", "--device", "local", "--edgegate-cache",
                           str(shared_cache), "-p", "no:cacheprovider", "-p", "no:randomly", "-rA"],
                          cwd=project, env=plugin_env(plugin_path), capture_output=True, text=True, timeout=600, check=False)
    return PluginRun(project, done)


def test_a_plugin_backend_sensor_and_recipe_measure_the_suite(plugin_run: PluginRun) -> None:
    output = plugin_run.done.stdout + plugin_run.done.stderr
    assert "1 failed, 1 passed" in output, output[-3000:]  # toy: blocked by the conftest's verdict hook
    (environment,) = plugin_run.query("SELECT environment FROM runs")
    settings = json.loads(environment[0])["variants"]
    assert settings["plug/local/toy"]["toy_backend"] is True  # the plugin's backend ran the toy variant
    assert "toy_backend" not in settings["plug/local/fp32"]
    manifest = plugin_run.query("SELECT manifest FROM artifacts WHERE variant = 'toy'")[0][0]
    assert json.loads(manifest)["runtime"] == "toy_onnx"  # the plugin's recipe built it, for the plugin's backend
    peaks = dict(plugin_run.query("SELECT variant, value FROM results WHERE metric = 'power_peak_w'"))
    assert peaks == {"fp32": WATTS, "toy": WATTS}  # the plugin's sensor, read during decode
    notes = [note for (note,) in plugin_run.query("SELECT note FROM results WHERE metric = 'power_w'")]
    assert notes and all("toy meter (a test plugin)" in note for note in notes)


def test_hooks_in_a_conftest_change_what_is_stored_rendered_and_judged(plugin_run: PluginRun) -> None:
    notes = [note for (note,) in plugin_run.query("SELECT note FROM results")]
    assert notes and all(note.endswith("bench: lab-7") for note in notes)  # every row, before it was stored
    (bench_file,) = (plugin_run.project / "reports" / "benchmarks" / "edgegate-local").glob("0001_*.json")
    extra = json.loads(bench_file.read_text())["benchmarks"][0]["extra_info"]
    assert extra["power_w_note"].endswith("bench: lab-7") and "toy meter" in extra["power_w_note"]
    verdicts = plugin_run.query("SELECT variant, verdict, breaches FROM verdicts ORDER BY rowid")
    assert [v for v in verdicts if v[0] == "toy"][-1][1] == "blocked"  # the item's last row: the hook's verdict
    assert "the lab allows no toy runtime" in [v for v in verdicts if v[0] == "toy"][-1][2]
    assert [v[1] for v in verdicts if v[0] == "fp32"] == ["ship"]
    assert "toy on local: size_mb: the lab allows no toy runtime on its shelf" in plugin_run.done.stdout
    page = plugin_run.page()
    assert "hooked: measured in the maintenance window" in page  # pytest_edgegate_report_context
    assert "bench: lab-7" in page


def test_report_sections_and_stray_output_of_plugins_are_shown(plugin_run: PluginRun) -> None:
    page = plugin_run.page()
    assert "<h2>Toy plugin section</h2>" in page
    assert "2 rows, overall blocked &lt;b&gt;" in page  # text is escaped; it saw the hooked verdict
    assert ("entry point edgegate.report_sections &#39;broken_report_sections = edgegate_nowhere.thing:Thing&#39; "
            "of edgegate-brokenplugin 0.1 could not be loaded: ModuleNotFoundError") in page
    assert "runner on local printed: toy runtime says hello" in plugin_run.done.stdout
    assert "Traceback" not in plugin_run.done.stdout


def run_runner(job: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run([sys.executable, "-m", "edgegate.runner"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_a_broken_backend_or_sensor_is_one_line_naming_its_distribution(plugin_path: Path) -> None:
    code, events = run_runner({"protocol": PROTOCOL_VERSION, "model": "/nonexistent/model.onnx",
                               "backend": "broken_backends", "providers": [], "threads": 1,
                               "power": {"kind": "broken_sensors"}, "measurements": {}}, plugin_env(plugin_path))
    assert code == 1
    where = "'{} = edgegate_nowhere.thing:Thing' of edgegate-brokenplugin 0.1 could not be loaded: ModuleNotFoundError"
    (load,) = [e for e in events if e["event"] == "error" and e["measurement"] == "load"]
    assert load["message"].startswith("entry point edgegate.backends " + where.format("broken_backends"))
    assert "traceback" not in load and "\n" not in load["message"]
    power = [e for e in events if e["event"] == "metric" and e["name"] == "power_w"]
    assert power[0]["value"] is None
    assert power[0]["note"].startswith("unavailable: entry point edgegate.sensors " + where.format("broken_sensors"))


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, plugin_path: Path) -> Iterator[Path]:
    """The plugins on this process's path, their entry points read afresh."""
    monkeypatch.syspath_prepend(str(plugin_path))
    plugins.cache_clear()
    yield plugin_path
    plugins.cache_clear()


def test_a_broken_recipe_is_one_line_when_a_suite_names_it(installed: Path, tmp_path: Path) -> None:
    from edgegate.plugins_registry import PluginError
    from edgegate.suites import load_suite
    from edgegate.variants.recipes import RECIPES

    assert "toy_copy" in RECIPES and RECIPES["toy_copy"].RUNTIME == "toy_onnx"
    suite = tmp_path / "suite_broken.yaml"
    suite.write_text(SUITE.replace("recipe: toy_copy", "recipe: broken_recipes"))
    with pytest.raises(PluginError) as raised:
        load_suite(suite)
    assert str(raised.value).startswith("entry point edgegate.recipes 'broken_recipes = edgegate_nowhere.thing:Thing' "
                                        "of edgegate-brokenplugin 0.1 could not be loaded: ModuleNotFoundError")
    assert "\n" not in str(raised.value)


def test_a_plugin_transport_is_a_profile_kind_and_an_unknown_one_lists_the_known(installed: Path, tmp_path: Path) -> None:
    from edgegate.profiles import load_profile
    from edgegate.transport import open_transport

    path = tmp_path / "pigeon.yaml"
    path.write_text("schema: 1\nname: pigeon\ntransport: pigeon\npigeon: {loft: 3}\n")
    transport = open_transport(load_profile(path))
    assert type(transport).__name__ == "PigeonTransport" and transport.loft == 3
    path.write_text("schema: 1\nname: pigeon\ntransport: carrier\n")
    with pytest.raises(ConfigError) as raised:
        load_profile(path)
    assert raised.value.path == path and raised.value.field == "transport"
    assert "must be one of local, ssh, broken_transports, pigeon, got 'carrier'" in str(raised.value)


def test_the_runner_refuses_a_job_of_another_protocol(tmp_path: Path) -> None:
    code, events = run_runner({"protocol": PROTOCOL_VERSION + 1})
    assert code == 2
    assert [e["event"] for e in events] == ["start", "error", "done"]
    assert events[1]["message"].startswith(f"this runner speaks protocol {PROTOCOL_VERSION}, the job is protocol "
                                           f"{PROTOCOL_VERSION + 1}")
    assert "`edgegate devices setup <device>`" in events[1]["message"]
    from edgegate.profiles import load_profile
    from edgegate.transport.local import LocalTransport

    profile = tmp_path / "local.yaml"
    profile.write_text(f"schema: 1\nname: local\ntransport: local\npython: auto\nwork_dir: {tmp_path}\n")
    seen: list[dict[str, Any]] = []
    with pytest.raises(RunnerError, match="runner on local exited with 2"):  # after the events it sent
        for event in LocalTransport(load_profile(profile)).run_job({"protocol": PROTOCOL_VERSION + 1}, 60):
            seen.append(event)  # noqa: PERF402 - kept up to the error, which list() would lose
    assert [e.get("measurement") for e in seen if e["event"] == "error"] == ["protocol"]


def test_the_host_refuses_a_runner_of_another_protocol_and_stamps_its_jobs(tiny_suite_file: Path, tmp_path: Path) -> None:
    from edgegate.jobs import runtime_fields
    from edgegate.profiles import load_profile
    from edgegate.suites import load_suite
    from edgegate.transport.base import parse_events

    start = json.dumps({"event": "start", "protocol": PROTOCOL_VERSION + 1, "python": "3.12.0"})
    with pytest.raises(RunnerError, match=f"runner on board7: the runner speaks protocol {PROTOCOL_VERSION + 1}"):
        list(parse_events([start], "board7"))
    profile = tmp_path / "local.yaml"
    profile.write_text("schema: 1\nname: local\ntransport: local\n")
    fields = runtime_fields(load_suite(tiny_suite_file), load_profile(profile), "onnxruntime")
    assert fields["protocol"] == PROTOCOL_VERSION


def test_non_json_output_is_logged_with_the_device_and_a_glued_event_kept(caplog: pytest.LogCaptureFixture) -> None:
    from edgegate.transport.base import parse_events

    lines = [b"NPU driver 2.1 loaded\n", 'warming up{"event": "done", "failures": 0}\n', "\n"]
    with caplog.at_level(logging.WARNING, logger="edgegate.runner_output"):
        events = list(parse_events(lines, "board7"))
    assert events == [{"event": "log", "line": "NPU driver 2.1 loaded"}, {"event": "log", "line": "warming up"},
                      {"event": "done", "failures": 0}]
    assert [r.getMessage() for r in caplog.records] == ["runner on board7 printed: NPU driver 2.1 loaded",
                                                       "runner on board7 printed: warming up"]


def test_edgegate_registers_its_own_as_its_built_in_tables_resolve_them() -> None:
    """pyproject.toml's entry points and the tables the runner uses without them name the same objects."""
    import importlib

    from edgegate.plugins_registry import BUILTIN_TRANSPORTS
    from edgegate.runner import backends, sensors
    from edgegate.transport import BUILTIN
    from edgegate.variants.recipes import RECIPES

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]

    def resolve(value: str) -> Any:
        module, _, attribute = value.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded

    expected = {
        "edgegate.backends": {name: backends.BACKENDS[name] for name in backends._WHERE},
        "edgegate.sensors": dict(sensors.OPENERS),
        "edgegate.transports": dict(BUILTIN),
        "edgegate.recipes": {name: RECIPES[name] for name in RECIPES.builtin},  # type: ignore[attr-defined]
    }
    assert tuple(BUILTIN) == BUILTIN_TRANSPORTS
    for group, table in expected.items():
        registered = {name: resolve(value) for name, value in groups[group].items()}
        assert registered == table, f"pyproject.toml [project.entry-points.\"{group}\"] differs from the built-in table"
