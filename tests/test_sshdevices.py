"""The SSH test devices of sshdevices.py are real, limited, breakable and leave nothing behind."""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
    pytest.skip("OpenSSH server (sshd) is not installed", allow_module_level=True)

import paramiko  # noqa: E402

from sshdevices import DeviceLimitUnsupported, SshDevice, SshDeviceFarm, leftovers  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
CPU_LOOP = (
    "import time; c = time.process_time(); w = time.perf_counter(); n = 0\n"
    "while time.process_time() - c < 0.3: n += 1\n"
    "print(time.perf_counter() - w)"
)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshDeviceFarm]:
    with SshDeviceFarm(tmp_path_factory.mktemp("sshdevices"), prefix="egtest") as devices:
        yield devices


@pytest.fixture(scope="module")
def plain(farm: SshDeviceFarm) -> SshDevice:
    return farm.start("plain")


def limited(
    farm: SshDeviceFarm, name: str, *, cpu_quota: float | None = None, memory_mb: int | None = None,
    rate_mbit: float | None = None,
) -> SshDevice:
    """Start a device with limits, skipping (not failing) where this machine cannot apply them."""
    if not farm.uses_namespaces:
        pytest.skip("limits need namespaced devices (root and ip netns)")
    try:
        return farm.start(name, cpu_quota=cpu_quota, memory_mb=memory_mb, rate_mbit=rate_mbit)
    except DeviceLimitUnsupported as exc:
        pytest.skip(f"limit unsupported here: {exc}")


def connect(device: SshDevice, known_hosts: Path | None = None, timeout: float = 5) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or device.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        device.host, device.port, device.user, key_filename=str(device.key_file),
        look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
    )
    return client


def run(device: SshDevice, command: str) -> tuple[int, str]:
    """Run ``command`` on the device; return its exit status and stripped stdout."""
    with connect(device) as client:
        _, stdout, _ = client.exec_command(command, timeout=30)
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status(), out.strip()


def host_key(device: SshDevice) -> str:
    with connect(device) as client:
        transport = client.get_transport()
        assert transport is not None
        return str(transport.get_remote_server_key().get_base64())


def test_login_as_device_user_with_known_host_key(plain: SshDevice, farm: SshDeviceFarm) -> None:
    assert run(plain, "id -un") == (0, plain.user)
    assert run(plain, "echo $HOME") == (0, str(plain.home))
    if farm.uses_namespaces:
        assert plain.user != "root" and run(plain, "id -u")[1] != "0"
        assert plain.host.startswith("198.1") and plain.netns is not None


def test_sftp_put_then_cat(plain: SshDevice, tmp_path: Path) -> None:
    payload = f"edgegate {time.time()}\n"
    local = tmp_path / "payload.txt"
    local.write_text(payload)
    remote = f"{plain.home}/payload-{os.getpid()}.txt"
    with connect(plain) as client, client.open_sftp() as sftp:
        sftp.put(str(local), remote)
    assert run(plain, f"cat {remote} && rm {remote}") == (0, payload.strip())


def test_unknown_host_key_is_refused(plain: SshDevice, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        connect(plain, known_hosts=empty)


def test_cpu_quota_slows_a_busy_loop(farm: SshDeviceFarm, plain: SshDevice) -> None:
    slow = limited(farm, "cpuq", cpu_quota=0.25)
    command = f"{SYSTEM_PYTHON} -c '{CPU_LOOP}'"
    with ThreadPoolExecutor(2) as pool:
        fast_run, slow_run = pool.map(lambda d: run(d, command), (plain, slow))
    assert fast_run[0] == 0 and slow_run[0] == 0
    fast_s, slow_s = float(fast_run[1]), float(slow_run[1])
    # 0.3 s of CPU at a quarter core needs >= ~1.1 s of wall time whatever else runs here.
    assert slow_s > 1.0, (fast_s, slow_s)
    assert throttled_periods(slow) >= 5 and throttled_periods(plain) == 0
    if fast_s < 0.45:  # the unlimited loop got most of a core: the machine was not too busy to compare
        assert slow_s > 2 * fast_s, (fast_s, slow_s)


def throttled_periods(device: SshDevice) -> int:
    """How often the CFS quota stopped the device's cgroup (cgroup v1 cpu.stat)."""
    assert device.cgroup is not None
    stat = Path("/sys/fs/cgroup/cpu", device.cgroup, "cpu.stat").read_text().split()
    return int(stat[stat.index("nr_throttled") + 1])


def test_memory_limit_kills_a_big_allocation(farm: SshDeviceFarm, plain: SshDevice) -> None:
    small = limited(farm, "mem", memory_mb=64)
    command = f'{SYSTEM_PYTHON} -c "b = bytearray(200 * 1024 * 1024)"'
    assert run(plain, command)[0] == 0
    assert run(small, command)[0] != 0  # OOM-killed: SIGKILL (-1 from paramiko, or 137 via a shell)


def test_killed_sshd_refuses_then_restarts_with_same_host_key(farm: SshDeviceFarm) -> None:
    device = farm.start("victim")
    key = host_key(device)
    farm.kill_sshd("victim")
    with pytest.raises((OSError, paramiko.ssh_exception.NoValidConnectionsError)):
        connect(device, timeout=2)
    farm.start_sshd("victim")
    assert host_key(device) == key
    assert run(device, "echo back") == (0, "back")


def test_cut_link_times_out_then_recovers(farm: SshDeviceFarm) -> None:
    if not farm.uses_namespaces:
        pytest.skip("links exist only for namespaced devices")
    device = farm.start("cable")
    farm.link_down("cable")
    started = time.monotonic()
    with pytest.raises((OSError, paramiko.SSHException)):
        connect(device, timeout=2)
    assert time.monotonic() - started < 5
    farm.link_up("cable")
    assert run(device, "echo up") == (0, "up")


def timed_upload(device: SshDevice, data: bytes) -> float:
    with connect(device) as client, client.open_sftp() as sftp:
        started = time.perf_counter()
        sftp.putfo(io.BytesIO(data), f"{device.home}/blob.bin")
        return time.perf_counter() - started


def test_rate_limit_slows_uploads(farm: SshDeviceFarm, plain: SshDevice) -> None:
    slow = limited(farm, "rate", rate_mbit=8)
    data = os.urandom(2 * 1024 * 1024)
    with ThreadPoolExecutor(2) as pool:
        fast_s, slow_s = pool.map(lambda d: timed_upload(d, data), (plain, slow))
    assert slow_s >= 1.5, (fast_s, slow_s)  # 16 Mbit at 8 Mbit/s: ideally 2 s
    assert fast_s < slow_s / 2, (fast_s, slow_s)


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    farm = SshDeviceFarm(tmp_path, prefix="egclose")
    try:
        devices = [farm.start("one"), farm.start("two", cpu_quota=0.5, memory_mb=128, rate_mbit=50)]
        pids = [int((d.root / "sshd.pid").read_text()) for d in devices]
        client = connect(devices[1])  # an open session must not keep anything alive
        _, stdout, _ = client.exec_command("echo $$; exec sleep 60")
        pids.append(int(stdout.readline()))
        assert all(_alive(pid) for pid in pids)
    finally:
        farm.close()
    client.close()
    assert _eventually(lambda: not any(_alive(pid) for pid in pids))
    if farm.uses_namespaces:
        assert leftovers("egclose") == {"netns": [], "links": [], "users": [], "cgroups": [], "routes": []}
        assert not [p for p in Path("/home").iterdir() if p.name.startswith("egclose-")]


def test_new_farm_removes_leftovers_of_a_crashed_one(tmp_path: Path) -> None:
    crashed = SshDeviceFarm(tmp_path / "crashed", prefix="egcrash")
    if not crashed.uses_namespaces:
        pytest.skip("leftovers are only searched for in namespaced mode")
    try:
        device = crashed.start("lost", cpu_quota=0.5, memory_mb=128, rate_mbit=50)
        pid = int((device.root / "sshd.pid").read_text())
        found = leftovers("egcrash")  # no close(): as if pytest had been killed
        assert found["netns"] and found["links"] and found["users"] and found["cgroups"]
        SshDeviceFarm(tmp_path / "next", prefix="egcrash").close()
        assert _eventually(lambda: not _alive(pid))  # a killed process may take a moment to exit
        assert leftovers("egcrash") == {"netns": [], "links": [], "users": [], "cgroups": [], "routes": []}
    finally:
        crashed.close()


def _eventually(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_loopback_fallback(tmp_path: Path) -> None:
    with SshDeviceFarm(tmp_path, prefix="eglo", force_loopback=True) as farm:
        assert not farm.uses_namespaces
        device = farm.start("lo")
        assert device.host == "127.0.0.1" and device.netns is None and device.cgroup is None
        assert run(device, "echo ok") == (0, "ok")
        pid = int((device.root / "sshd.pid").read_text())
    assert _eventually(lambda: not _alive(pid))
    with socket.socket() as sock:
        assert sock.connect_ex((device.host, device.port)) != 0


def test_profile_yaml(plain: SshDevice) -> None:
    profile = yaml.safe_load(plain.profile_yaml(python="/usr/bin/python3", threads=2, description="ns"))
    assert profile["schema"] == 1 and profile["transport"] == "ssh" and profile["name"] == plain.name
    assert profile["ssh"] == {
        "host": plain.host, "port": plain.port, "user": plain.user, "key_file": str(plain.key_file),
        "known_hosts": str(plain.known_hosts), "connect_timeout_s": 5,
    }
    assert Path(profile["ssh"]["key_file"]).is_absolute() and Path(profile["ssh"]["known_hosts"]).is_file()
    assert profile["work_dir"] == str(plain.home / "edgegate" if plain.netns else plain.root / "work")
    assert profile["python"] == "/usr/bin/python3" and profile["threads"] == 2 and profile["description"] == "ns"
    assert yaml.safe_load(plain.profile_yaml(work_dir="/tmp/w"))["work_dir"] == "/tmp/w"
