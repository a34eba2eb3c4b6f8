"""The fault matrix: real faults on namespace SSH devices in the middle of a suite run.

One pytest run measures the tiny suite on six devices, each hit by its own fault, and then on
``local``: the runner crashing (SIGSEGV), sshd and every session killed, the link cut, the
runner killed by the out-of-memory killer (a cgroup memory limit), the disk filling during an
upload, and uploads damaged on the device. A second run is interrupted with Ctrl-C (SIGINT).
In every case the affected items fail with a reason a person understands, the other items and
devices go on, every result measured before the fault is in the history, and a report is
written. Faults that strike during a measurement are timed by a power "meter" command on the
device that stalls the second runner it serves for a few seconds (``TRIGGER``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import LOCAL_PROFILE, write_tiny_suite

sshdevices = pytest.importorskip("sshdevices")
pytestmark = pytest.mark.slow

if not Path("/usr/sbin/sshd").exists():
    pytest.skip("OpenSSH server not installed (apt-get install openssh-server)", allow_module_level=True)

VARIANTS = ("fp32", "int8", "int4")
PASSPHRASE = "planted-Passphrase-1729"  # of the Ctrl-C device's key: must reach no output
CORE = {"size_mb", "load_ms", "prefill_ms", "ttft_ms", "decode_ms", "decode_tok_s", "peak_rss_mb", "perplexity"}
RUNNER_IMPORTS = "import numpy, onnxruntime, psutil"
# A power meter that marks the second runner it serves (its parent) and stalls it for 3 s.
TRIGGER = """#!/bin/sh
here=$(dirname "$0")
grep -qx "$PPID" "$here/runners" 2>/dev/null || echo "$PPID" >> "$here/runners"
if [ ! -e "$here/hit" ] && [ "$(wc -l < "$here/runners")" -ge 2 ]; then
    echo "$PPID" > "$here/hit.tmp" && mv "$here/hit.tmp" "$here/hit"
    sleep 3
fi
echo 1.5
"""
# Damages, on the device, every int8 model uploaded to the device named "oomcorrupt".
CORRUPTING_CONFTEST = """
from edgegate.transport import ssh

_put = ssh.SshTransport.put


def _damaging_put(self, local, remote):
    sent = _put(self, local, remote)
    if self.profile.name == "oomcorrupt" and "int8_dynamic" in str(local):
        self.run(["sh", "-c", 'printf Z | dd of="$1" bs=1 seek=10 conv=notrunc 2>/dev/null', "sh", remote], check=True)
    return sent


ssh.SshTransport.put = _damaging_put
"""


FARM_PREFIX = "efm"  # + this process's pid in base 36: sessions running side by side get separate farms


def farm_prefix() -> str:
    """This session's farm prefix, after removing the farms of sessions that died."""
    import pwd
    import re

    pattern = re.compile(rf"{FARM_PREFIX}([0-9a-z]{{1,5}})-[a-z0-9]+")
    for user in pwd.getpwall():
        found = pattern.fullmatch(user.pw_name)
        if found and not Path(f"/proc/{int(found.group(1), 36)}").exists():
            sshdevices.remove_leftovers(f"{FARM_PREFIX}{found.group(1)}")
    return f"{FARM_PREFIX}{base36(os.getpid())}"


def base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if number == 0:
            return digits


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory):
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("faults"), prefix=farm_prefix()) as devices:
        if not devices.uses_namespaces:
            pytest.skip("the fault matrix needs root and `ip netns` (cgroups, veth links, tmpfs); "
                        "this machine gives only loopback devices")
        yield devices


def device_dir(device) -> Path:
    """A folder the device user can read (its home; the scratch root is private to root)."""
    return device.home if device.netns else device.root


def ready_python(device, wheels: Path) -> str:
    """A python on the device with numpy, onnxruntime and psutil. This venv's packages under the
    system python of the same version take a second; `edgegate devices setup` takes a minute."""
    from edgegate.devicesetup import setup_device
    from edgegate.profiles import load_profile
    from edgegate.transport.ssh import SshTransport

    wrapper = device_dir(device) / "python"
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    site = sysconfig.get_paths()["purelib"]
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(site)} exec {base} "$@"\n')
    wrapper.chmod(0o755)
    profile = device.root / "ready.yaml"
    profile.write_text(device.profile_yaml())
    transport = SshTransport(load_profile(profile), connect_attempts=2)
    try:
        if base.exists() and transport.run([str(wrapper), "-c", RUNNER_IMPORTS]).exit_status == 0:
            return str(wrapper)
        setup_device(device.name, transport, wheels, log=lambda _: None)
        return "python3"  # the runner then finds the venv that setup made
    finally:
        transport.close()


def start_device(farm, name: str, wheels: Path, trigger: bool = False, **limits: object):
    device = farm.start(name, **limits)
    python = ready_python(device, wheels)
    extra: dict[str, object] = {}
    if trigger:
        script = device_dir(device) / "trigger.sh"
        script.write_text(TRIGGER)
        script.chmod(0o755)
        extra["power_sensor"] = {"kind": "command", "command": f"sh {script}"}
    return device, python, extra


@dataclass
class Harness:
    """One `pytest suites/ --device ...` run in a subprocess, with faults injected while it runs."""

    root: Path
    process: subprocess.Popen[str] | None = None

    def run(self, devices: list[str], cache: Path, on_hit: dict[Path, Callable[[int], None]],
            env: dict[str, str] | None = None, timeout_s: float = 400) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest", "suites/", *[a for d in devices for a in ("--device", d)],
                   "--edgegate-cache", str(cache), "-p", "no:cacheprovider", "--junitxml=junit.xml", "-rA"]
        self.process = subprocess.Popen(command, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
        injector = Injector(on_hit)
        injector.start()
        began = time.monotonic()
        try:
            stdout, stderr = self.process.communicate(timeout=timeout_s)
        finally:
            injector.stop()
        injector.raise_failures()
        print(f"harness run: {time.monotonic() - began:.1f} s")
        return subprocess.CompletedProcess(command, self.process.returncode, stdout, stderr)


class Injector(threading.Thread):
    """Watches the trigger's hit files; calls each action once with the stalled runner's pid."""

    def __init__(self, on_hit: dict[Path, Callable[[int], None]]) -> None:
        super().__init__(daemon=True)
        self.pending = dict(on_hit)
        self.failures: list[BaseException] = []
        self.fired: list[Path] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while self.pending and not self._halt.wait(0.05):
            for hit, action in list(self.pending.items()):
                text = hit.read_text().strip() if hit.exists() else ""
                if text:
                    del self.pending[hit]
                    try:
                        action(int(text))
                        self.fired.append(hit)
                    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                        self.failures.append(exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def raise_failures(self) -> None:
        if self.failures:
            raise self.failures[0]


def make_project(root: Path, tiny_model_dir: Path, profiles: dict[str, str], conftest: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(conftest)
    shutil.copytree(tiny_model_dir, root / "suites" / "tiny_model")
    (root / "device_profiles").mkdir()
    (root / "device_profiles" / "local.yaml").write_text(LOCAL_PROFILE.format(work_dir=root / "device-work"))
    for name, text in profiles.items():
        (root / "device_profiles" / f"{name}.yaml").write_text(text)
    write_tiny_suite(root)
    return root


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """Item name (``int8[crash]``) -> (passed | failed | error | skipped, message)."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                status = {"failure": "failed"}.get(kind, kind)
                message = (element.get("message") or "") + "\n" + (element.text or "")
        found[case.get("name")] = (status, message)
    return found


def history(root: Path) -> tuple[dict[tuple[str, str], set[str]], list[tuple], list[tuple]]:
    """(device, variant) -> metric names recorded; the verdict rows; the runs."""
    with sqlite3.connect(root / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT device, variant, metric FROM results").fetchall()
        verdicts = db.execute("SELECT device, variant, passed, error FROM verdicts").fetchall()
        runs = db.execute("SELECT run_id, exit_status, finished_at FROM runs").fetchall()
    metrics: dict[tuple[str, str], set[str]] = {}
    for device, variant, metric in rows:
        metrics.setdefault((device, variant), set()).add(metric)
    return metrics, verdicts, runs


def lost_results(metrics: dict[tuple[str, str], set[str]], expected: dict[tuple[str, str], set[str]]) -> list[str]:
    """Every metric known to have been measured that is not in the history."""
    return [f"{device}/{variant}/{name}" for (device, variant), names in expected.items()
            for name in sorted(names - metrics.get((device, variant), set()))]


def device_command(device, argv: list[str]) -> str:
    from edgegate.profiles import load_profile
    from edgegate.transport.ssh import SshTransport

    transport = SshTransport(load_profile(device.root / "ready.yaml"), connect_attempts=2)
    try:
        return transport.run(argv, check=True).stdout
    finally:
        transport.close()


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def processes_of(user: str) -> dict[int, bytes]:
    """pid -> command line of every process ``user`` runs."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            continue
    return found


def runner_pids(user: str) -> list[int]:
    return [pid for pid, command in processes_of(user).items() if b"edgegate_runner" in command]


def disk_size_kb(tiny_artifacts: dict) -> int:
    """A disk that holds the fp32 and int4 models but not fp32 and int8 (tmpfs counts whole pages)."""
    pages = {name: -(-artifact.manifest["files"]["model.onnx"]["bytes"] // 4096) * 4096
             for name, artifact in tiny_artifacts.items()}
    if pages["int8"] - pages["int4"] < 16 * 1024:
        pytest.skip(f"the tiny int8 and int4 models are too close in size for a disk that fits one: {pages}")
    return (pages["fp32"] + (pages["int8"] + pages["int4"]) // 2) // 1024


# Item -> what its failure must say. Every other item must pass.
EXPECTED_FAILURES = {
    "int8[diskcrash]": "No space left on device",  # the disk holds fp32 and int4, not fp32 and int8
    "int4[diskcrash]": "was killed by SIGSEGV: it crashed",  # the second runner there
    "int8[sshdkill]": "closed before the runner finished",
    "int4[sshdkill]": "is unreachable after 3 attempts: ConnectionRefusedError",
    "int8[linkcut]": "sent nothing for 5 s (measurement_timeout_s)",
    "int4[linkcut]": "is unreachable after 3 attempts",
    "fp32[oomcorrupt]": "was killed by SIGKILL; on a device this is most often the out-of-memory killer",
    "int8[oomcorrupt]": "failed verification 3 times",
    "int4[oomcorrupt]": "perplexity <= 1.5 x reference cannot be checked: no reference value",
}
# What was measured of each faulted item before its fault struck (the rest of each item is complete).
MEASURED_BEFORE_FAULT = {
    ("diskcrash", "int8"): set(), ("diskcrash", "int4"): {"size_mb"},
    ("sshdkill", "int8"): {"size_mb"}, ("sshdkill", "int4"): set(),
    ("linkcut", "int8"): {"size_mb"}, ("linkcut", "int4"): set(),
    ("oomcorrupt", "fp32"): {"size_mb", "load_ms", "prefill_ms", "decode_ms", "perplexity", "peak_rss_mb"},
    ("oomcorrupt", "int8"): set(),
}


def test_fault_matrix(farm, tiny_model_dir: Path, tiny_artifacts: dict, shared_cache: Path,
                      tmp_path: Path) -> None:
    """Six faults on four devices: each hits only its items, with its reason."""
    wheels = tmp_path / "wheels"
    started = {name: start_device(farm, name, wheels, **options) for name, options in {
        "diskcrash": {"trigger": True},
        "sshdkill": {"trigger": True},
        "linkcut": {"trigger": True},
        "oomcorrupt": {"memory_mb": 160},  # the runner needs ~65 MB; the reference's bandwidth test allocates 256 MB
    }.items()}
    artifacts_disk = farm.small_disk("diskcrash", "edgegate/artifacts", disk_size_kb(tiny_artifacts))
    profiles = {name: device.profile_yaml(python=python, **extra) for name, (device, python, extra) in started.items()}
    linkcut, python, extra = started["linkcut"]  # a short connect timeout: the dead connection is noticed sooner
    profiles["linkcut"] = linkcut.profile_yaml(python=python, measurement_timeout_s=5, **extra).replace(
        "connect_timeout_s: 5", "connect_timeout_s: 2")
    root = make_project(tmp_path / "project", tiny_model_dir, profiles, CORRUPTING_CONFTEST)
    hits = {name: device_dir(started[name][0]) / "hit" for name in ("diskcrash", "sshdkill", "linkcut")}
    done = Harness(root).run(list(started), shared_cache, {
        hits["diskcrash"]: lambda pid: os.kill(pid, signal.SIGSEGV),
        hits["sshdkill"]: lambda pid: farm.kill_device("sshdkill"),
        hits["linkcut"]: lambda pid: farm.link_down("linkcut"),
    })
    output = done.stdout + done.stderr
    assert all(hit.exists() for hit in hits.values()) and done.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-5000:]

    found = outcomes(root / "junit.xml")
    assert len(found) == 3 * len(started)
    for item, (status, message) in found.items():
        expected = EXPECTED_FAILURES.get(item)
        if expected:
            assert status == "failed" and expected in message, (item, status, message)
        else:
            assert status == "passed", (item, status, message)

    metrics, verdicts, runs = history(root)
    assert sorted((d, v) for d, v, _, _ in verdicts) == sorted((d, v) for d in started for v in VARIANTS)
    measured = {("oomcorrupt", "int4"): CORE, **{(d, "fp32"): CORE | {"memory_bandwidth_gbs"} for d in hits}}
    lost = lost_results(metrics, {**measured, **MEASURED_BEFORE_FAULT})
    assert lost == [], lost
    assert metrics[("diskcrash", "fp32")] == metrics[("sshdkill", "fp32")] == metrics[("linkcut", "fp32")]
    assert runs[0][1] == 1 and runs[0][2] is not None

    report = (root / "reports" / "latest.html").read_text()
    for phrase in (*started, "SIGSEGV", "SIGKILL", "No space left on device", "failed verification"):
        assert phrase in report, phrase
    on_disk = device_command(started["diskcrash"][0], ["ls", "-1", str(artifacts_disk)]).split()
    assert len(on_disk) == 2 and not [name for name in on_disk if ".tmp-" in name]  # fp32, int4: int8's partial upload went
    print(f"\nfault matrix: 6 faults on {len(started)} devices; {len(EXPECTED_FAILURES)} items failed with their reason, "
          f"{len(found) - len(EXPECTED_FAILURES)} other items passed; results lost: {len(lost)}")


def encrypted_copy(key: Path, passphrase: str) -> Path:
    """The device's client key, encrypted with ``passphrase``."""
    copy = key.with_name(f"{key.name}-encrypted")
    shutil.copyfile(key, copy)
    copy.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", str(copy)], check=True, capture_output=True)
    return copy


def test_ctrl_c_keeps_every_result_and_writes_the_report(farm, tiny_model_dir: Path, tiny_artifacts: dict,
                                                          shared_cache: Path, tmp_path: Path) -> None:
    """SIGINT mid-measurement: the run stops, keeps what it measured, reports, leaves no runner.
    The device's key is encrypted; its passphrase, from the environment, reaches no output."""
    device, python, extra = start_device(farm, "intr", tmp_path / "wheels", trigger=True)
    key = encrypted_copy(device.key_file, PASSPHRASE)
    profile = device.profile_yaml(python=python, **extra).replace(str(device.key_file), str(key))
    root = make_project(tmp_path / "project", tiny_model_dir, {"intr": profile})
    harness = Harness(root)
    interrupt = lambda pid: harness.process.send_signal(signal.SIGINT)  # noqa: E731 - what Ctrl-C sends
    done = harness.run(["intr", "local"], shared_cache, {device_dir(device) / "hit": interrupt},
                       env={"EDGEGATE_SSH_PASSPHRASE": PASSPHRASE})
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]  # pytest's "interrupted"
    assert "KeyboardInterrupt" in output and "Traceback" not in output, output[-3000:]

    metrics, verdicts, runs = history(root)
    assert [(v, passed) for d, v, passed, _ in verdicts if d == "intr"] == [("fp32", 1)]
    local_done = {(d, v): CORE for d, v, _, _ in verdicts if d == "local"}  # if local came first
    lost = lost_results(metrics, {("intr", "fp32"): CORE, ("intr", "int8"): {"size_mb"}, **local_done})
    assert lost == [], lost
    (run_id, exit_status, finished_at), = runs
    assert exit_status == 2 and finished_at is not None
    assert (root / "reports" / "runs" / f"{run_id}.html").exists()
    assert f"run {run_id}" in done.stdout and "interrupted: everything measured before the interruption" in done.stdout
    assert wait_until(lambda: not runner_pids(device.user), 30), "the runner outlived the interrupted run"
    written = [root / "junit.xml", *(root / "reports").rglob("*"), *(root / "device_profiles").iterdir()]
    assert PASSPHRASE not in output
    assert not [path for path in written if path.is_file() and PASSPHRASE.encode() in path.read_bytes()]


def test_every_wait_on_a_device_is_bounded_by_its_profile(farm, tmp_path: Path) -> None:
    """A hung login, a hung command and a stalled upload each end after the profile's timeout."""
    from edgegate.errors import DeviceUnreachable, TransportError
    from edgegate.profiles import load_profile
    from edgegate.transport.ssh import SshTransport

    device = farm.start("hang", rate_mbit=8)  # 1 MB/s: an upload still under way when the link is cut
    profile = tmp_path / "hang.yaml"
    profile.write_text(device.profile_yaml().replace("connect_timeout_s: 5", "connect_timeout_s: 1\n  command_timeout_s: 1"
                                                                               "\n  upload_timeout_s: 2"))
    transport = SshTransport(load_profile(profile), connect_attempts=2)
    with pytest.raises(TransportError, match=r"`sleep 30` timed out after 1 s"):
        transport.run(["sleep", "30"])

    farm.freeze_sshd("hang")
    began = time.monotonic()
    with pytest.raises(DeviceUnreachable, match="unreachable after 2 attempts"):
        SshTransport(load_profile(profile), connect_attempts=2).run(["true"])
    assert time.monotonic() - began < 20  # two logins of at most 1 s each, and a back-off
    farm.freeze_sshd("hang", frozen=False)

    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(8 << 20))
    failure: list[BaseException] = []
    upload = threading.Thread(target=lambda: _capture(failure, transport.put, source, f"{device.home}/big.bin"))
    upload.start()
    assert wait_until(lambda: any(command.startswith(b"cat\0") for command in processes_of(device.user).values()), 20)
    farm.link_down("hang")
    upload.join(timeout=60)
    assert not upload.is_alive() and failure, "the upload did not end"
    assert isinstance(failure[0], TransportError)
    assert "made no progress for 2 s (upload_timeout_s)" in str(failure[0]), failure[0]


def _capture(into: list[BaseException], call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        into.append(exc)


def test_a_silent_local_runner_is_stopped_after_the_measurement_timeout(tiny_artifacts: dict, tmp_path: Path) -> None:
    """The local transport's watchdog: a runner that stops reporting is killed, with the reason."""
    from edgegate.errors import RunnerError
    from edgegate.profiles import load_profile
    from edgegate.transport.local import LocalTransport

    profile = tmp_path / "local.yaml"
    profile.write_text(LOCAL_PROFILE.format(work_dir=tmp_path / "work") + "measurement_timeout_s: 2\n")
    transport = LocalTransport(load_profile(profile))
    job = {"model": str(tiny_artifacts["int4"].model), "providers": ["CPUExecutionProvider"], "threads": 1,
           "power": {"kind": "command", "command": "sleep 4"}, "measurements": {}}  # the meter hangs
    began = time.monotonic()
    with pytest.raises(RunnerError, match=r"sent nothing for 2 s \(measurement_timeout_s\) and was stopped"):
        list(transport.run_job(job, transport.profile.measurement_timeout_s))
    assert time.monotonic() - began < 30


def test_the_runner_command_line_quotes_what_the_profile_says(farm, tmp_path: Path) -> None:
    """A python path with shell metacharacters is one (missing) program, never a second command."""
    from edgegate.errors import RunnerError
    from edgegate.profiles import load_profile
    from edgegate.transport.ssh import SshTransport

    device = farm.start("quote")
    marker = device.home / "PWNED"
    profile = tmp_path / "quote.yaml"
    profile.write_text(device.profile_yaml(python=f"python3; touch {marker}; echo $(touch {marker}2)"))
    transport = SshTransport(load_profile(profile), connect_attempts=1)
    transport.ensure_runner()
    with pytest.raises(RunnerError, match="exited with 127"):
        list(transport.run_job({"model": "none"}, timeout_s=30))
    transport.close()
    assert not marker.exists() and not Path(f"{marker}2").exists()
