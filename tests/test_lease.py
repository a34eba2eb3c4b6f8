"""Device leases on the local transport: waiting, renewal, takeover of a dead run's lease, and two
real pytest runs on one device taking turns. The same leases over SSH: tests/test_fleet.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from pathlib import Path

import pytest

from edgegate.errors import ConfigError
from edgegate.lease import DeviceBusy, Leases, held_intervals, lease_log
from edgegate.profiles import DeviceProfile, load_profile
from edgegate.store import HistoryStore
from edgegate.transport import open_transport


def local_device(tmp_path: Path, ttl_s: float = 60) -> DeviceProfile:
    path = tmp_path / "board.yaml"
    path.write_text(f"schema: 1\nname: board\ntransport: local\npython: auto\nwork_dir: {tmp_path / 'work'}\n"
                    f"lease: {{ttl_s: {ttl_s}, wait_s: 5}}\n")
    return load_profile(path)


def intervals(device: DeviceProfile) -> list[tuple[str, float, float | None]]:
    return held_intervals(lease_log(device.name, open_transport(device))[0])


def test_a_held_device_makes_the_next_run_wait_then_fail_naming_the_holder(tmp_path: Path) -> None:
    device = local_device(tmp_path)
    first, waited = Leases("nightly on ci-1", log=lambda _: None), []
    second = Leases("dev run", wait_s=1.0, log=waited.append)
    with first.hold(device):
        started = time.monotonic()
        with pytest.raises(DeviceBusy, match=r"device board is busy: leased by nightly on ci-1 \(since .*Z, "
                                             r"expires in \d+ s unless renewed\); waited 1 s"):
            with second.hold(device):
                pass
        assert time.monotonic() - started >= 1.0
        assert waited and "waiting up to 1 s" in waited[0]
        with pytest.raises(DeviceBusy):  # found busy once: the run's later measurements fail at once
            with second.hold(device):
                pass
    with Leases("third run", wait_s=0).hold(device) as lease:
        assert lease.took_over is None
    owners = [owner for owner, _, _ in intervals(device)]
    assert owners == ["nightly on ci-1", "third run"]
    first.close()


def test_a_held_lease_is_renewed_past_its_ttl(tmp_path: Path) -> None:
    device = local_device(tmp_path, ttl_s=4)
    holder = Leases("long measurement")
    with holder.hold(device):
        time.sleep(6)  # past the ttl: only renewals (every ttl/3) keep it
        with pytest.raises(DeviceBusy, match="leased by long measurement"):
            with Leases("impatient", wait_s=0).hold(device):
                pass
    with Leases("after", wait_s=0).hold(device):
        pass
    holder.close()


HOLD_AND_HANG = """
import sys, time
from pathlib import Path
from edgegate.lease import Leases
from edgegate.profiles import load_profile
with Leases("doomed run", wait_s=0).hold(load_profile(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lease_of_a_killed_run_expires_and_is_taken_over(tmp_path: Path) -> None:
    device = local_device(tmp_path, ttl_s=2)
    doomed = subprocess.Popen([sys.executable, "-c", HOLD_AND_HANG, str(device.path)], stdout=subprocess.PIPE, text=True)
    assert doomed.stdout is not None and doomed.stdout.readline().strip() == "held"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    with Leases("next run", wait_s=60).hold(device) as lease:
        assert lease.took_over is not None and lease.took_over.owner == "doomed run"
    log = lease_log(device.name, open_transport(device))[0]
    takeover = next(entry for entry in log if entry["event"] == "took_over")
    assert takeover["owner"] == "next run" and takeover["previous_owner"] == "doomed run"
    assert takeover["time"] >= takeover["previous_expires"]
    (dead, _, dead_until), (alive, since, _) = intervals(device)
    assert (dead, alive) == ("doomed run", "next run") and dead_until is not None and dead_until <= since


def test_profile_lease_fields_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("schema: 1\ntransport: local\nlease: {ttl_s: 0}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: lease.ttl_s: must be at least 1"):
        load_profile(path)
    path.write_text("schema: 1\ntransport: local\nlease: {wait: 5}\n")
    with pytest.raises(ConfigError, match=r"lease.wait: unknown key"):
        load_profile(path)


def test_a_run_finding_its_device_busy_fails_its_items_naming_the_holder(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path, tiny_artifacts: dict) -> None:
    device = load_profile(tiny_project / "device_profiles" / "local.yaml")
    with Leases("the nightly on ci-7").hold(device):
        result = pytester.runpytest_subprocess("suites/", "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider",
                                               "--edgegate-lease-wait", "0")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*fp32 on local: device local is busy: leased by the nightly on ci-7 (since *"])


def start_run(root: Path, cache: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    output = root / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "pytest", "suites/", "--edgegate-cache", str(cache),
                                    "-p", "no:cacheprovider"], cwd=root, stdout=sink, stderr=subprocess.STDOUT)
    return process, output


def waiting_or_ended(process: subprocess.Popen[bytes], output: Path) -> bool:
    return "leased by the test" in output.read_text() or process.poll() is not None


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def test_two_concurrent_runs_on_one_device_take_turns(tiny_project: Path, shared_cache: Path, tiny_artifacts: dict) -> None:
    """Both runs are started while the device is held, so both wait; once it is free they measure
    one at a time: no two measurement leases in the device's log overlap."""
    device = load_profile(tiny_project / "device_profiles" / "local.yaml")
    gate = Leases("the test")
    with gate.hold(device):
        runs = [start_run(tiny_project, shared_cache, name) for name in ("a", "b")]
        for process, output in runs:
            wait_for(partial(waiting_or_ended, process, output), f"run {output.stem} to wait for the device")
            assert process.poll() is None, output.read_text()
    for process, output in runs:
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    gate.close()
    held = [interval for interval in intervals(device) if interval[0] != "the test"]
    run_ids = set(HistoryStore(tiny_project / "reports" / "history.sqlite").frame("runs").run_id)
    assert len(run_ids) == 2 and len(held) == 6
    assert Counter(owner.rsplit(" run ", 1)[-1] for owner, _, _ in held) == {run_id: 3 for run_id in run_ids}
    for (_, _, end), (_, start, _) in pairwise(held):
        assert end is not None and end <= start, held
