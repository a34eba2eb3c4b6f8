"""The history on a real PostgreSQL server the tests start (tests/pgserver.py) and on SQLite:
the plugin writes there and finds its baseline there, concurrent writers lose nothing and never
pick half a run as a baseline, and a history moves between the two with every count checked.
The password is in the URL (as a CI secret would be) and must appear nowhere else."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from edgegate.baselines import find_baseline
from edgegate.store import HistoryStore, RunInfo

pgserver = pytest.importorskip("pgserver")

PASSWORD = "tonight-Secret-4242"
WRITERS, RUNS_EACH, METRICS = 4, 20, 10


@pytest.fixture(scope="module")
def pg_url():
    if pgserver.unavailable():  # the SQLite halves still run
        pytest.skip(pgserver.unavailable() or "")
    with pgserver.server(PASSWORD) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    url = request.getfixturevalue("pg_url")
    _empty(url)
    return url


def _empty(url: str) -> None:
    from sqlalchemy import text

    store = HistoryStore(url)
    with store.engine.begin() as db:
        for table in ("results", "verdicts", "artifacts", "baselines", "runs"):
            db.execute(text(f"DELETE FROM {table}"))


@pytest.mark.slow
def test_the_plugin_writes_there_and_the_next_night_finds_its_baseline_there(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path, pg_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _empty(pg_url)
    monkeypatch.setenv("EDGEGATE_HISTORY", pg_url)  # a CI secret: not on the command line
    args = ("suites/", "--device", "local", "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider")
    first = pytester.runpytest_subprocess(*args, timeout=600)
    first.assert_outcomes(passed=3)
    second = pytester.runpytest_subprocess(*args, "--junitxml", "junit.xml", timeout=600)
    second.assert_outcomes(passed=3)
    store = HistoryStore(pg_url)
    runs = store.frame("runs").sort_values("started_at")
    assert len(runs) == 2 and runs.finished_at.notna().all()
    assert find_baseline(store, "tiny", "local", "int4", exclude_run=runs.run_id.iloc[1]).run_id == runs.run_id.iloc[0]
    second.stdout.fnmatch_lines([f"run {runs.run_id.iloc[1]}; history: postgresql+psycopg://edgegate:***@127.0.0.1:*"])
    assert "no baseline yet" not in second.stdout.str()
    report = (tiny_project / "reports" / "latest.html").read_text()
    assert f"{runs.run_id.iloc[0]} (last clean passing run on main/master)" in report
    written = [first.stdout.str(), second.stdout.str(), report, (tiny_project / "junit.xml").read_text(),
               *store.frame("runs").environment, *(p.read_text() for p in (tiny_project / "reports").rglob("*.json"))]
    assert not [text for text in written if PASSWORD in text]
    assert not list((tiny_project / "reports").glob("history.sqlite"))


def _writer(history: str, writer: int, barrier) -> None:
    store = HistoryStore(history)
    barrier.wait()
    for run in range(RUNS_EACH):
        run_id = f"w{writer}-r{run:02d}"
        store.start_run(RunInfo(run_id, f"2026-12-01T00:{run:02d}:{writer:02d}Z", "c", ("s",), ("d",), {}, "main"))
        store.append_results([{"run_id": run_id, "suite": "s", "device": "d", "variant": "v", "metric": f"m{m}",
                               "value": float(m), "samples": [float(m)] * 5} for m in range(METRICS)])
        store.append_verdict({"run_id": run_id, "time": "t", "suite": "s", "device": "d", "variant": "v",
                              "passed": True})
        store.finish_run(run_id, f"2026-12-01T01:{run:02d}:{writer:02d}Z", 0)


def _chooser(history: str, barrier, chosen) -> None:
    """Chooses a baseline again and again while the writers write; each one must be finished then."""
    store = HistoryStore(history)
    barrier.wait()
    for _ in range(60):
        choice = find_baseline(store, "s", "d", "v")
        if choice is not None:
            finished = store.frame("runs", choice.run_id).finished_at.iloc[0]
            chosen.append((choice.run_id, finished is not None and finished == finished))


def test_concurrent_writers_lose_nothing_and_half_a_run_is_never_a_baseline(history: str) -> None:
    HistoryStore(history)  # the schema, once, before the race
    context = multiprocessing.get_context("spawn")
    barrier, chosen = context.Barrier(WRITERS + 1), context.Manager().list()
    processes = [context.Process(target=_writer, args=(history, w, barrier)) for w in range(WRITERS)]
    processes.append(context.Process(target=_chooser, args=(history, barrier, chosen)))
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * (WRITERS + 1)
    counts = HistoryStore(history).counts()
    assert counts["runs"] == WRITERS * RUNS_EACH and counts["verdicts"] == WRITERS * RUNS_EACH
    assert counts["results"] == WRITERS * RUNS_EACH * METRICS
    results = HistoryStore(history).frame("results")
    assert not results.duplicated(["run_id", "metric"]).any()
    assert chosen and all(finished for _, finished in chosen), list(chosen)[:5]
    print(f"{WRITERS} writers x {RUNS_EACH} runs x {METRICS} results on {history.split(':')[0]}: "
          f"{counts['results']} rows, none lost or doubled; {len(chosen)} baselines chosen meanwhile, all finished runs")


def test_a_run_id_already_in_the_history_is_refused(history: str) -> None:
    from edgegate.errors import StoreError

    store = HistoryStore(history)
    run = RunInfo("same", "2026-12-01T00:00:00Z", "c", ("s",), ("d",), {}, "main")
    store.start_run(run)
    with pytest.raises(StoreError, match="run 'same' is already in the history"):
        store.start_run(run)
    store.start_run(run, joining=True)  # xdist workers share one run id on purpose


def test_a_history_moves_from_sqlite_to_postgresql_and_back_with_every_count_checked(
        tmp_path: Path, pg_url: str) -> None:
    from edgegate.cli.__main__ import main

    _empty(pg_url)
    source = tmp_path / "laptop.sqlite"
    _writer(str(source), 0, _NoBarrier())
    HistoryStore(source).promote("s", "d", "v", "w0-r03", pinned=True)
    assert main(["history", "import", "--history", pg_url, "--from", str(source)]) == 0
    assert main(["history", "import", "--history", pg_url, "--from", str(source)]) == 1  # the runs are there already
    back = tmp_path / "back.sqlite"
    assert main(["history", "import", "--history", str(back), "--from", pg_url]) == 0
    assert HistoryStore(back).counts() == HistoryStore(source).counts() == HistoryStore(pg_url).counts()
    assert HistoryStore(back).pinned("s", "d", "v") == "w0-r03"
    for fmt in ("csv", "parquet"):
        output = tmp_path / f"results.{fmt}"
        assert main(["history", "export", "--history", pg_url, "--format", fmt, "--output", str(output)]) == 0
        import pandas as pd

        frame = pd.read_csv(output) if fmt == "csv" else pd.read_parquet(output)
        assert len(frame) == RUNS_EACH * METRICS and json.loads(frame.samples.iloc[0]) == [0.0] * 5
    with sqlite3.connect(back) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone() == (RUNS_EACH * METRICS,)


class _NoBarrier:
    def wait(self) -> None:
        return None


@pytest.mark.slow
def test_two_sessions_on_one_device_from_two_machines_share_the_history_and_take_turns(
        tiny_project: Path, shared_cache: Path, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two pytest sessions (two "CI machines": separate processes, report folders and build caches)
    gate the same namespace SSH device at once into one PostgreSQL history: the device's lease makes
    their measurements take turns, and both runs keep every result."""
    import os
    import subprocess
    import sys

    sshdevices = pytest.importorskip("sshdevices")
    from edgegate.devicesetup import setup_device
    from edgegate.lease import held_intervals, lease_log
    from edgegate.profiles import load_profile
    from edgegate.transport.ssh import SshTransport

    _empty(pg_url)
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("shared"), prefix=f"egq{os.getpid() % 10000}") as farm:
        if not farm.uses_namespaces:
            pytest.skip("needs root and `ip netns` for a namespace device")
        profile = tiny_project / "device_profiles" / "bench.yaml"
        profile.write_text(farm.start("bench").profile_yaml())
        transport = SshTransport(load_profile(profile), command_timeout_s=300)
        assert setup_device("bench", transport, tmp_path_factory.mktemp("wheels"), log=lambda _: None).ready
        caches = [shared_cache, tmp_path_factory.mktemp("cache-b")]  # the second machine builds its own
        sessions = [subprocess.Popen(
            [sys.executable, "-m", "pytest", "suites/", "--device", "bench", "--edgegate-cache", str(cache),
             "--edgegate-reports", str(tiny_project / f"reports-{i}"), "-p", "no:cacheprovider", "-q"],
            cwd=tiny_project, env={**os.environ, "EDGEGATE_HISTORY": pg_url}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for i, cache in enumerate(caches)]
        outputs = [session.communicate(timeout=900)[0] for session in sessions]
        assert [s.returncode for s in sessions] == [0, 0], "\n".join(o[-2000:] for o in outputs)
        log = lease_log("bench", transport)[0]
        transport.close()
    store = HistoryStore(pg_url)
    runs = set(store.frame("runs").run_id)
    results = store.frame("results", columns=("run_id", "variant", "metric"))
    per_run = results.groupby("run_id").size().to_dict()
    assert len(runs) == 2 and set(per_run) == runs and len(set(per_run.values())) == 1, per_run
    spans = sorted((start, end, owner.rsplit(" ", 1)[-1]) for owner, start, end in held_intervals(log))
    assert {run for *_, run in spans} == runs and all(end is not None for _, end, _ in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans  # never two at once


@pytest.mark.slow
def test_xdist_workers_write_one_run_into_postgresql(pytester: pytest.Pytester, tiny_project: Path,
                                                     shared_cache: Path, pg_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    from conftest import LOCAL_PROFILE

    _empty(pg_url)
    for name in ("lab1", "lab2"):  # two local devices, each its own work dir (and lease)
        text = LOCAL_PROFILE.format(work_dir=tiny_project / f"work-{name}").replace("name: local", f"name: {name}")
        (tiny_project / "device_profiles" / f"{name}.yaml").write_text(text)
    monkeypatch.setenv("EDGEGATE_HISTORY", pg_url)
    result = pytester.runpytest_subprocess("suites/", "--device", "lab1", "--device", "lab2", "-n", "2",
                                           "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider",
                                           timeout=600)
    result.assert_outcomes(passed=6)
    store = HistoryStore(pg_url)
    runs = store.frame("runs")
    assert len(runs) == 1 and runs.finished_at.notna().all()
    verdicts = store.frame("verdicts")
    assert len(verdicts) == 6 and set(verdicts.run_id) == set(runs.run_id) and set(verdicts.device) == {"lab1", "lab2"}
    assert set(json.loads(runs.environment.iloc[0])["devices"]) == {"lab1", "lab2"}  # both workers' facts arrived
