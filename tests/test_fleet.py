"""A fleet: device selection by tag, the shared history under concurrent writers, leases over SSH,
and one suite run on four namespace devices (two slowed by a CPU quota) with pytest-xdist."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path

import pytest
from edgegate.devicesetup import setup_device
from edgegate.errors import ConfigError
from edgegate.lease import DeviceBusy, Leases, held_intervals, lease_log
from edgegate.profiles import DeviceProfile, ProfileCatalog, load_profile
from edgegate.store import HistoryStore, RunInfo
from edgegate.transport.ssh import SshTransport
from edgegate_pytest.items import ItemDevices
from edgegate_pytest.options import resolve_devices

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
FLEET = ("f0", "f1", "f2", "f3")
SLOWED = {"f1": 0.25, "f3": 0.25}  # cores (cgroup cpu quota)


def test_devices_are_selected_by_name_tag_or_all() -> None:
    catalog = ProfileCatalog(PROFILES)
    assert resolve_devices(["tag:jetson", "local", "jetson-nano"], catalog) == ("jetson-nano", "jetson-orin-nano", "local")
    assert set(resolve_devices(["all"], catalog)) >= {"local", "jetson-nano", "jetson-orin-nano", "raspberry-pi-5"}
    with pytest.raises(ConfigError, match=r"--device: no device profile has tag 'tpu'; tags in use: .*jetson"):
        resolve_devices(["tag:tpu"], catalog)


def test_the_scheduler_knows_each_suite_items_device_from_the_suites_and_devices(tiny_suite_file: Path) -> None:
    root = tiny_suite_file.parent.parent
    devices = ItemDevices(root, ("jetson-nano", "pi[5]"))
    suite_item = "suites/suite_tiny.yaml::int4[jetson-nano]"
    assert devices.of(suite_item) == "jetson-nano"
    assert devices.of(suite_item + "@jetson-nano") == "jetson-nano"  # older pytest: xdist's group suffix
    assert devices.of("suites/suite_tiny.yaml::fp32[pi[5]]") == "pi[5]"  # a name a pattern would misread
    assert devices.of("suites/suite_tiny.yaml::int4[orin]") is None  # not a selected device
    assert devices.of("suites/suite_tiny.yaml::nope[jetson-nano]") is None  # no such variant
    assert devices.of("tests/test_x.py::test_y[jetson-nano]") is None  # not a suite item: xdist's own rules
    assert devices.of("suites/suite_tiny.yaml") is None


def test_a_tag_matching_nothing_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    (pytester.path / "device_profiles").mkdir()
    (pytester.path / "device_profiles" / "board.yaml").write_text("schema: 1\ntransport: local\ntags: [arm64]\n")
    result = pytester.runpytest("--device", "tag:jetson")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device: no device profile has tag 'jetson'; tags in use: arm64"])


def _write_rows(path: str, worker: int) -> None:
    store = HistoryStore(Path(path))
    store.start_run(RunInfo("shared-run", f"t{worker}", "abc", ("s",), FLEET, {}), joining=True)
    for index in range(30):
        store.append_results([{"run_id": "shared-run", "device": f"f{worker}", "metric": "m", "value": index}])
        store.append_verdict({"run_id": "shared-run", "time": "t", "suite": "s", "device": f"f{worker}",
                              "variant": str(index), "passed": True})


def test_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite")  # created by the racing writers themselves
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_rows, args=(path, worker)) for worker in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    store = HistoryStore(Path(path))
    assert len(store.frame("runs")) == 1
    results = store.frame("results")
    assert sorted(zip(results.device, results.value)) == sorted((f"f{w}", float(i)) for w in range(4) for i in range(30))
    assert len(store.frame("verdicts")) == 120


# -- namespace devices --------------------------------------------------------------------------

sshdevices = pytest.importorskip("sshdevices")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("fleet"), prefix="egfleet") as devices:
        if not devices.uses_namespaces:
            pytest.skip("namespace devices need root and `ip netns`")
        yield devices


@pytest.fixture(scope="module")
def fleet(farm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Profile text per device. f0 is made ready by `devices setup`; the others use its venv (one
    filesystem), which saves three installs and changes nothing about how they are reached."""
    devices = [farm.start(name, cpu_quota=SLOWED.get(name)) for name in FLEET]
    scratch = tmp_path_factory.mktemp("fleet-profiles")
    (scratch / "f0.yaml").write_text(devices[0].profile_yaml())
    transport = SshTransport(load_profile(scratch / "f0.yaml"))
    assert setup_device("f0", transport, scratch / "wheels", log=lambda _: None).ready
    transport.close()
    venv_python = f"{devices[0].home}/edgegate/venv/bin/python"
    return {device.name: device.profile_yaml(python=venv_python, tags=["fleet", "namespace-device"])
            for device in devices}


def ssh_device(fleet: dict[str, str], folder: Path, name: str, **lease: float) -> DeviceProfile:
    text = fleet[name] + (f"lease: {json.dumps(lease)}\n" if lease else "")
    (folder / f"{name}.yaml").write_text(text)
    return load_profile(folder / f"{name}.yaml")


HOLD_AND_HANG = """
import sys, time
from pathlib import Path
from edgegate.lease import Leases
from edgegate.profiles import load_profile
with Leases("crashed nightly", wait_s=0).hold(load_profile(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(600)
"""


def test_leases_work_over_ssh_and_a_dead_runs_lease_is_taken_over(fleet: dict[str, str], tmp_path: Path) -> None:
    device = ssh_device(fleet, tmp_path, "f2", ttl_s=2)
    holder = Leases("nightly")
    with holder.hold(device):
        with pytest.raises(DeviceBusy, match=r"device f2 is busy: leased by nightly \(since "):
            with Leases("dev run", wait_s=0).hold(device):
                pass
    holder.close()
    doomed = subprocess.Popen([sys.executable, "-c", HOLD_AND_HANG, str(device.path)], stdout=subprocess.PIPE, text=True)
    assert doomed.stdout is not None and doomed.stdout.readline().strip() == "held"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    successor = Leases("next nightly", wait_s=60)
    with successor.hold(device) as lease:
        assert lease.took_over is not None and lease.took_over.owner == "crashed nightly"
    successor.close()
    transport = SshTransport(device)
    log, holder_now = lease_log("f2", transport)
    transport.close()
    assert holder_now is None
    assert [owner for owner, _, _ in held_intervals(log)] == ["nightly", "crashed nightly", "next nightly"]


def _deployed(device: DeviceProfile) -> bool:
    """The device has a staged variant: its worker is past setup and asks for the lease next."""
    folder = Path(device.work_dir) / "artifacts"
    return folder.is_dir() and any(".tmp-" not in child.name for child in folder.iterdir())


def test_a_suite_runs_on_four_devices_in_parallel_into_one_run_and_report(
        fleet: dict[str, str], tiny_project: Path, shared_cache: Path, tiny_artifacts: dict) -> None:
    """The test holds every device's lease until each worker has deployed to its device, so all
    four then measure at once however unevenly the workers started on a loaded machine."""
    pytest.importorskip("xdist")
    devices = [ssh_device(fleet, tiny_project / "device_profiles", name) for name in FLEET]
    output = tiny_project / "fleet.out"
    gate = Leases("the test")
    with ExitStack() as holding:
        for device in devices:
            holding.enter_context(gate.hold(device))
        with output.open("wb") as sink:
            run = subprocess.Popen([sys.executable, "-m", "pytest", "suites/", "--device", "tag:fleet", "-n", "auto",
                                    "-v", "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider"],
                                   cwd=tiny_project, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not all(map(_deployed, devices)) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    gate.close()
    assert run.wait(timeout=300) == 0, output.read_text()[-4000:]
    text = output.read_text()
    assert re.search(r"\b4 workers \[12 items\]", text) and "12 passed" in text, text[-4000:]
    workers = {(device, worker) for worker, device in re.findall(r"\[(gw\d+)\].* PASSED \S+::\w+\[(f\d)\]", text)}
    assert sorted(device for device, _ in workers) == list(FLEET), workers  # each device on one worker
    run_id = _check_one_run_in_history_and_report(tiny_project)
    _check_devices_measured_in_parallel(devices, run_id)


def _check_one_run_in_history_and_report(root: Path) -> str:
    store = HistoryStore(root / "reports" / "history.sqlite")
    runs = store.frame("runs")
    assert len(runs) == 1 and runs.exit_status[0] == 0
    run_id = runs.run_id[0]
    assert set(json.loads(runs.environment[0])["devices"]) == set(FLEET)  # each worker's device facts came back
    decode = store.frame("results", where={"metric": "decode_ms"})
    assert set(decode.run_id) == {run_id}
    assert sorted(zip(decode.device, decode.variant)) == sorted((d, v) for d in FLEET for v in ("fp32", "int4", "int8"))
    verdicts = store.frame("verdicts")
    assert len(verdicts) == 12 and set(verdicts.run_id) == {run_id} and verdicts.passed.all()
    assert [p.name for p in (root / "reports" / "runs").glob("*.html")] == [f"{run_id}.html"]
    html = (root / "reports" / "latest.html").read_text()
    assert all(html.count(f'<td class="name">{name}</td>') >= 3 for name in FLEET)
    return str(run_id)


def _check_devices_measured_in_parallel(devices: list[DeviceProfile], run_id: str) -> None:
    spans = []
    for device in devices:
        transport = SshTransport(device)
        measured = [i for i in held_intervals(lease_log(device.name, transport)[0]) if i[0].endswith(f"run {run_id}")]
        transport.close()
        assert len(measured) == 3 and all(end is not None for _, _, end in measured)
        for (_, _, end), (_, start, _) in pairwise(measured):
            assert end <= start  # one measurement at a time on each device
        spans += [(start, +1) for _, start, _ in measured] + [(end, -1) for _, _, end in measured]
    busy, most = 0, 0
    for _, step in sorted(spans):
        busy += step
        most = max(most, busy)
    assert most >= 3, f"at most {most} devices measured at the same time"
