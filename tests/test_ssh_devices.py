"""SSH transport, deploy, device check and setup against real OpenSSH servers.

The devices are sshd processes the tests start themselves, each in its own network namespace
with its own non-root user (tests/sshdevices.py); nothing here is a mocked transport.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from edgegate.deploy import deploy_tree
from edgegate.devicecheck import probe
from edgegate.devicesetup import setup_device
from edgegate.errors import DeviceUnreachable, HostKeyError, TransportError
from edgegate.profiles import load_profile
from edgegate.transport.ssh import SshTransport

sshdevices = pytest.importorskip("sshdevices")
pytestmark = pytest.mark.slow

if not Path("/usr/sbin/sshd").exists():
    pytest.skip("OpenSSH server not installed (apt-get install openssh-server)", allow_module_level=True)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory):
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("farm"), prefix="egt") as devices:
        yield devices


@pytest.fixture(scope="module")
def device(farm):
    return farm.start("main")


def transport_for(device, tmp_path: Path, name: str = "dev", **profile) -> SshTransport:
    path = tmp_path / f"{name}.yaml"
    path.write_text(device.profile_yaml(**profile))
    return SshTransport(load_profile(path), connect_attempts=2, command_timeout_s=60)


def test_commands_run_as_the_device_user_over_a_nodelay_socket(device, tmp_path: Path) -> None:
    transport = transport_for(device, tmp_path)
    assert transport.run(["id", "-un"], check=True).stdout.strip() == device.user
    sock = transport.connect().sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert transport.connect().remote_cipher.startswith("aes") and "gcm" in transport.connect().remote_cipher
    transport.close()


def test_a_command_timing_out_leaves_the_others_on_its_connection_running(device, tmp_path: Path) -> None:
    """A lease renewal timing out on a loaded device must not cut the measurement beside it: the
    connection still opens channels, so it is kept."""
    transport = transport_for(device, tmp_path)
    finished: list[str] = []
    beside = threading.Thread(target=lambda: finished.append(
        transport.run(["sh", "-c", "sleep 3; echo measured"], timeout_s=30, check=True).stdout))
    beside.start()
    time.sleep(0.5)
    with pytest.raises(TransportError, match="timed out after 1 s"):
        transport.run(["sleep", "20"], timeout_s=1)
    beside.join(timeout=30)
    assert finished == ["measured\n"]
    transport.close()


def test_first_deploy_then_redeploy_sends_nothing(device, tmp_path: Path) -> None:
    files = {"model.onnx": tmp_path / "a.bin", "sub/extra.data": tmp_path / "b.bin"}
    files["model.onnx"].write_bytes(b"x" * 300_000)
    files["sub/extra.data"].write_bytes(b"y" * 1000)
    transport = transport_for(device, tmp_path)
    first = deploy_tree(transport, files, "artifacts")
    assert (first.bytes_sent, first.reused, first.attempts) == (301_000, False, 1)
    again = deploy_tree(transport, files, "artifacts")
    assert (again.bytes_sent, again.reused, again.remote_dir) == (0, True, first.remote_dir)
    listing = transport.run(["wc", "-c", f"{first.remote_dir}/model.onnx"], check=True).stdout
    assert listing.split()[0] == "300000"
    transport.close()


class CorruptingTransport(SshTransport):
    """Damages the first file it uploads, on the device's disk, as a flaky link or disk would."""

    corrupted = 0

    def put(self, local: Path, remote: str) -> int:
        sent = super().put(local, remote)
        if not self.corrupted:
            self.run(["sh", "-c", 'printf Z | dd of="$1" bs=1 seek=10 conv=notrunc 2>/dev/null', "sh", remote], check=True)
            self.corrupted += 1
        return sent


def test_corrupted_upload_is_detected_and_redone(device, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(bytes(range(256)) * 400)
    path = tmp_path / "dev.yaml"
    path.write_text(device.profile_yaml())
    transport = CorruptingTransport(load_profile(path), connect_attempts=2)
    result = deploy_tree(transport, {"model.onnx": source}, "artifacts")
    assert result.attempts == 2 and result.bytes_sent == 2 * source.stat().st_size
    remote = f"{result.remote_dir}/model.onnx"
    transport.run(["sh", "-c", 'printf Q >> "$1"', "sh", remote], check=True)  # bit rot after deploy
    healed = deploy_tree(transport, {"model.onnx": source}, "artifacts")
    assert not healed.reused and healed.bytes_sent == source.stat().st_size
    assert transport.run(["wc", "-c", remote], check=True).stdout.split()[0] == str(source.stat().st_size)
    transport.close()


def test_remote_paths_with_shell_metacharacters_stay_quoted(device, tmp_path: Path) -> None:
    work_dir = f"{device.home}/odd dir; touch PWNED $(touch PWNED2)"
    transport = transport_for(device, tmp_path, work_dir=work_dir)
    source = tmp_path / "f.bin"
    source.write_bytes(b"data")
    result = deploy_tree(transport, {"it's here.bin": source}, "artifacts")
    assert result.remote_dir.startswith(work_dir)
    home_listing = transport.run(["ls", "-1a", device.home], check=True).stdout.splitlines()
    assert "PWNED" not in home_listing and "PWNED2" not in home_listing
    transport.close()


def test_unknown_host_key_is_refused_with_how_to_accept(farm, tmp_path: Path) -> None:
    device = farm.start("hostkey")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    profile_path = tmp_path / "dev.yaml"
    profile_path.write_text(device.profile_yaml().replace(str(device.known_hosts), str(empty)))
    with pytest.raises(HostKeyError, match=r"not in .*known_hosts.*--edgegate-accept-new-host-keys"):
        SshTransport(load_profile(profile_path), connect_attempts=1).connect()
    accepting = SshTransport(load_profile(profile_path), accept_new_host_key=True, connect_attempts=1)
    accepting.run(["true"], check=True)
    accepting.close()
    assert device.host in empty.read_text()
    strict = SshTransport(load_profile(profile_path), connect_attempts=1)
    strict.run(["true"], check=True)  # now known: no opt-in needed
    strict.close()


def test_changed_host_key_is_refused(device, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    entry = device.host if device.port == 22 else f"[{device.host}]:{device.port}"
    other = paramiko.Ed25519Key.from_private_key_file(str(device.key_file))  # any other ed25519 key
    forged.write_text(f"{entry} ssh-ed25519 {other.get_base64()}\n")
    profile_path = tmp_path / "dev.yaml"
    profile_path.write_text(device.profile_yaml().replace(str(device.known_hosts), str(forged)))
    with pytest.raises(HostKeyError, match="CHANGED"):
        SshTransport(load_profile(profile_path), accept_new_host_key=True, connect_attempts=1).connect()


def test_missing_onnxruntime_is_reported_with_the_fix(farm, tmp_path: Path) -> None:
    bare = farm.start("bare")
    transport = transport_for(bare, tmp_path, python="/usr/bin/python3")
    report = probe("bare", transport)
    transport.close()
    assert not report.ready
    assert "onnxruntime" in report.problems[0] and "edgegate devices setup bare" in report.problems[0]
    assert report.facts["cpu_count"] >= 1 and report.facts["memory_mb"] > 0


def test_device_that_is_down_is_reported_unreachable(farm, tmp_path: Path) -> None:
    down = farm.start("down")
    farm.kill_sshd("down")
    transport = transport_for(down, tmp_path)
    with pytest.raises(DeviceUnreachable, match=r"device down \(egt-down@.*\) is unreachable after 2 attempts: ConnectionRefused"):
        transport.run(["true"])
    farm.start_sshd("down")
    assert transport.run(["true"]).exit_status == 0
    transport.close()


@pytest.fixture(scope="module")
def ready_device(farm, tmp_path_factory: pytest.TempPathFactory):
    """A device made ready by `devices setup` (venv from wheels pushed over SSH), with its report."""
    fresh = farm.start("setup")
    transport = transport_for(fresh, tmp_path_factory.mktemp("setup"))
    before = probe("setup", transport)
    report = setup_device("setup", transport, tmp_path_factory.mktemp("wheels"), log=lambda _: None)
    transport.close()
    return fresh, before, report


def test_setup_makes_a_device_ready_then_the_runner_measures_there(ready_device, tiny_artifacts: dict, tmp_path: Path) -> None:
    device, before, report = ready_device
    assert not before.ready and report.ready, report.explain()
    transport = transport_for(device, tmp_path)
    assert transport.python().endswith("/venv/bin/python")
    transport.ensure_runner()
    artifact = tiny_artifacts["int4"]
    folder = transport.stage(artifact.folder, {"model.onnx": artifact.manifest["files"]["model.onnx"]["sha256"]})
    job = {"model": f"{folder}/model.onnx", "providers": ["CPUExecutionProvider"], "threads": 1, "measurements": {
        "decode": {"prompt_ids": list(range(5, 15)), "tokens": 3, "warmup": 0, "repetitions": 2}}}
    events = list(transport.run_job(job, timeout_s=120))
    metrics = {e["name"]: e for e in events if e["event"] == "metric"}
    assert len(metrics["decode_ms"]["samples"]) == 6
    assert events[-1] == {"event": "done", "failures": 0}
    transport.close()


def test_suite_runs_on_a_namespace_device_next_to_local(ready_device, pytester: pytest.Pytester, tiny_project: Path,
                                                        shared_cache: Path) -> None:
    import sqlite3

    device = ready_device[0]
    (tiny_project / "device_profiles" / "nsdev.yaml").write_text(device.profile_yaml().replace("name: setup", "name: nsdev"))
    result = pytester.runpytest_subprocess("suites/", "--device", "local", "--device", "nsdev",
                                           "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    with sqlite3.connect(tiny_project / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT device, variant FROM results WHERE metric = 'decode_ms'").fetchall()
    assert sorted(rows) == sorted((d, v) for d in ("local", "nsdev") for v in ("fp32", "int8", "int4"))
    html = (tiny_project / "reports" / "latest.html").read_text()
    assert html.count("<td class=\"name\">nsdev</td>") >= 3 and html.count("<td class=\"name\">local</td>") >= 3
