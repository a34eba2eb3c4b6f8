"""Real OpenSSH servers that play "edge devices" in tests.

:class:`SshDeviceFarm` starts one ``/usr/sbin/sshd`` per device.  When it runs as root and
``ip netns`` works, every device gets

* a network namespace ``<prefix>-<name>`` joined to the root namespace by a veth pair
  (root side ``<prefix>h<N>`` = ``198.18.N.1/30``, device side ``<prefix>d<N>`` =
  ``198.18.N.2/30``; N = 256..511 continues in ``198.19.(N-256).0/30``), plus a low-priority
  ``unreachable`` route for the /30 so that, while the link is down, nothing can leak through
  the default route;
* a non-root login user ``<prefix>-<name>`` with a home under ``/home`` and a key-only login;
* cgroup v1 groups ``cpu`` and ``memory`` at ``edgegate-tests/<prefix>-<name>``, which hold
  sshd and therefore every session it spawns;
* optionally a ``tbf`` rate limit on both ends of the veth.

Otherwise (or with ``force_loopback=True``) each device is an sshd on ``127.0.0.1`` and a free
port, running as the current user; limits cannot be applied there and are ignored.

:meth:`SshDeviceFarm.close` removes everything the farm made, step by step, even if steps
fail; a new farm first removes leftovers of a crashed run that used the same prefix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

import armroot
import yaml

SSHD = "/usr/sbin/sshd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "edgegate-tests"
CGROUP_CONTROLLERS = ("cpu", "memory")
CPU_SHARES_MAX = 262144  # cgroup v1: the largest weight a group can have (a task at nice 0 weighs 1024)
ADDRESS_LOCK = Path("/run/lock/edgegate-sshdevices.lock")
GUARD_ROUTE_METRIC = 4242
MAX_DEVICE_INDEX = 511
READY_TIMEOUT_S = 10.0
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,15}")

Step = tuple[str, Callable[[], object]]  # a cleanup step: what it does, and how


class DeviceError(RuntimeError):
    """A device could not be started, changed or removed."""


class DeviceLimitUnsupported(DeviceError):
    """A requested limit (cpu, memory, rate) cannot be applied on this machine."""


@dataclass(frozen=True)
class SshDevice:
    """One running test device and everything a client needs to log in to it."""

    name: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    home: Path
    netns: str | None
    cgroup: str | None
    root: Path
    chroot: Path | None = None  # where the device's own root file system is, seen from this machine

    def profile_yaml(self, work_dir: str | None = None, python: str = "python3", **extra: object) -> str:
        """Text of an EdgeGate device profile (schema 1, ssh transport) for this device.

        ``work_dir`` defaults to ``<home>/edgegate`` on a namespaced device and to a folder
        under the device's scratch root in loopback mode (whose home is the real home of the
        current user).  ``extra`` keys are added to (or replace keys of) the mapping.
        """
        default_dir = self.home / "edgegate" if self.netns else self.root / "work"
        profile: dict[str, object] = {
            "schema": 1,
            "name": self.name,
            "transport": "ssh",
            "ssh": {
                "host": self.host,
                "port": self.port,
                "user": self.user,
                "key_file": str(self.key_file),
                "known_hosts": str(self.known_hosts),
                "connect_timeout_s": 5,
            },
            "work_dir": work_dir or str(default_dir),
            "python": python,
            "threads": 1,
            "tags": ["namespace-device" if self.netns else "loopback-device"],
        }
        profile.update(extra)
        return str(yaml.safe_dump(profile, sort_keys=False))


@dataclass
class _DeviceState:
    """What the farm must remember about one device to restart it and to remove it."""

    name: str
    root: Path
    user: str | None = None  # a user the farm created (None: the current user)
    netns: str | None = None
    host_veth: str | None = None
    subnet: str | None = None  # "198.18.N.0/30", for the guard route
    cgroup: str | None = None
    config: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    device: SshDevice | None = None
    mounts: list[Path] = field(default_factory=list)  # small disks, device roots: unmounted before the user goes


class SshDeviceFarm:
    """Starts and stops SSH test devices; a context manager.

    ``close()`` tears everything down (sshd and sessions killed, namespaces, veths and routes
    deleted, cgroups removed, users deleted with their homes), running every step even when an
    earlier one fails.  In loopback mode (not root, ``ip netns`` unusable, or
    ``force_loopback=True``) ``cpu_quota``, ``memory_mb`` and ``rate_mbit`` are ignored, and
    stale sshd processes of a crashed earlier run cannot be found.
    """

    def __init__(self, scratch: Path, prefix: str = "egdev", force_loopback: bool = False) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r} must match {PREFIX_RE.pattern}")
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._devices: dict[str, _DeviceState] = {}
        self._namespaces = not force_loopback and self._probe_namespaces()
        if self._namespaces:
            remove_leftovers(prefix)

    @property
    def uses_namespaces(self) -> bool:
        """True when devices live in their own network namespaces (root mode)."""
        return self._namespaces

    @property
    def devices(self) -> dict[str, SshDevice]:
        """The devices started so far, by name."""
        return {name: s.device for name, s in self._devices.items() if s.device is not None}

    def __enter__(self) -> SshDeviceFarm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- starting -----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        cpu_quota: float | None = None,
        memory_mb: int | None = None,
        rate_mbit: float | None = None,
        root_fs: Path | None = None,
        cpu: str = armroot.DEFAULT_CPU,
    ) -> SshDevice:
        """Start device ``name`` and return it once its sshd accepts TCP connections.

        ``cpu_quota=0.5`` is half a core (cfs_quota_us = 0.5 * cfs_period_us), ``memory_mb``
        sets memory.limit_in_bytes (and memsw, so there is no escape to swap), ``rate_mbit``
        puts a tbf qdisc on both ends of the device's link.  All three are ignored in loopback
        mode.  ``root_fs`` (namespaced mode only) is a root file system the device's sessions are
        chrooted into, through a writable overlay of its own (tests/armroot.py: an arm64 Debian),
        its programs run on qemu's ``cpu`` model.
        A device that fails to start is removed again before the error propagates.
        """
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"device name {name!r} must match {NAME_RE.pattern}")
        if name in self._devices:
            raise ValueError(f"device {name!r} already started")
        state = _DeviceState(name=name, root=self.scratch / name)
        self._devices[name] = state
        try:
            if self._namespaces:
                self._start_namespaced(state, cpu_quota, memory_mb, rate_mbit, root_fs, cpu)
            elif root_fs is not None:
                raise DeviceLimitUnsupported("a device with its own root file system needs namespaced mode (root)")
            else:
                self._start_loopback(state)
        except BaseException:
            with contextlib.suppress(DeviceError):
                self._teardown(self._devices.pop(name))
            raise
        assert state.device is not None
        return state.device

    def _start_namespaced(
        self, state: _DeviceState, cpu_quota: float | None, memory_mb: int | None, rate_mbit: float | None,
        root_fs: Path | None = None, cpu: str = armroot.DEFAULT_CPU,
    ) -> None:
        ident = f"{self.prefix}-{state.name}"
        host_key, client_key = _prepare_root(state.root)
        state.user = ident
        home = _create_user(ident, client_key.with_suffix(".pub"))
        chroot = self._enter_root(state, root_fs, cpu) if root_fs is not None else None
        state.cgroup = _create_cgroups(ident, cpu_quota, memory_mb)
        state.netns = ident
        index = self._connect_namespace(state)
        if rate_mbit is not None:
            _limit_rate(state, rate_mbit)
        host = _device_address(index)
        state.config = _write_sshd_config(
            state.root, host_key, listen=f"{host}:22", user=ident,
            authorized_keys=home / ".ssh" / "authorized_keys", strict=True, chroot=chroot,
            environment={"QEMU_CPU": cpu} if chroot else None,
        )
        self._launch(state, host, 22)
        known = _write_known_hosts(state.root, host, 22, host_key)
        state.device = SshDevice(
            name=state.name, host=host, port=22, user=ident, key_file=client_key, known_hosts=known,
            home=home, netns=ident, cgroup=state.cgroup, root=state.root, chroot=chroot,
        )

    @staticmethod
    def _enter_root(state: _DeviceState, root_fs: Path, cpu: str) -> Path:
        """Mount the device's overlay of ``root_fs`` (mounted before sshd starts: the namespace
        ``ip netns exec`` gives sshd is a copy of this one); return the chroot folder."""
        assert state.user is not None
        entry = pwd.getpwnam(state.user)
        points = armroot.mount_device_root(root_fs, state.user, state.root, state.user, entry.pw_uid, entry.pw_gid, cpu)
        state.mounts += points
        return points[0]

    def _connect_namespace(self, state: _DeviceState) -> int:
        """Create the namespace and its veth pair with the next free /30; return its index."""
        assert state.netns is not None
        _run(["ip", "netns", "add", state.netns])
        with _address_lock():
            index = _free_index()
            host_veth, dev_veth = f"{self.prefix}h{index}", f"{self.prefix}d{index}"
            state.host_veth = host_veth
            _run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", dev_veth])
            _run(["ip", "addr", "add", f"{_host_address(index)}/30", "dev", host_veth])
        state.subnet = _subnet(index)
        _run(["ip", "route", "add", "unreachable", state.subnet, "metric", str(GUARD_ROUTE_METRIC)])
        _run(["ip", "link", "set", dev_veth, "netns", state.netns])
        _disable_ipv6(host_veth)
        _disable_ipv6(dev_veth, state.netns)
        _run(["ip", "-n", state.netns, "addr", "add", f"{_device_address(index)}/30", "dev", dev_veth])
        _run(["ip", "-n", state.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", state.netns, "link", "set", dev_veth, "up"])
        _run(["ip", "link", "set", host_veth, "up"])
        return index

    def _start_loopback(self, state: _DeviceState) -> None:
        host_key, client_key = _prepare_root(state.root)
        authorized = state.root / "authorized_keys"
        shutil.copyfile(client_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        me = pwd.getpwuid(os.geteuid())
        port = _free_port()
        if os.geteuid() == 0:
            _ensure_privsep_dir()
        state.config = _write_sshd_config(
            state.root, host_key, listen=f"127.0.0.1:{port}", user=me.pw_name,
            authorized_keys=authorized, strict=False,
        )
        self._launch(state, "127.0.0.1", port)
        known = _write_known_hosts(state.root, "127.0.0.1", port, host_key)
        state.device = SshDevice(
            name=state.name, host="127.0.0.1", port=port, user=me.pw_name, key_file=client_key,
            known_hosts=known, home=Path(me.pw_dir), netns=None, cgroup=None, root=state.root,
        )

    def _launch(self, state: _DeviceState, host: str, port: int) -> None:
        """Start sshd for ``state`` (inside its cgroups and namespace) and wait until it listens."""
        assert state.config is not None
        log = state.root / "sshd.log"
        command = [SSHD, "-D", "-e", "-f", str(state.config), "-E", str(log)]
        if state.netns:
            _ensure_privsep_dir()
            # nsenter, not `ip netns exec`: that one remounts /sys for the namespace, which hides
            # /sys/fs/cgroup, and a runner that cannot read its cgroup's CPU quota takes the other
            # devices' work for contention (a container keeps its cgroup files visible too)
            command = ["nsenter", f"--net=/run/netns/{state.netns}", "--", *command]
        if state.cgroup:
            command = _in_cgroups(state.cgroup, command)
        with open(state.root / "sshd.stderr", "ab") as stderr:
            state.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
            )
        _wait_for_port(host, port, state.process, state.root)

    # -- faults -------------------------------------------------------------------------------

    def kill_sshd(self, name: str) -> None:
        """Kill the device's listening sshd (SIGKILL); sessions already open keep running."""
        state = self._state(name)
        if state.process is not None:
            _stop_process(state.process, signal.SIGKILL)
            state.process = None

    def start_sshd(self, name: str) -> None:
        """Start the device's sshd again (same config, same host key); no-op if it runs."""
        state = self._state(name)
        if state.process is not None and state.process.poll() is None:
            return
        assert state.device is not None
        (state.root / "sshd.pid").unlink(missing_ok=True)
        self._launch(state, state.device.host, state.device.port)

    def link_bytes(self, name: str) -> tuple[int, int]:
        """Bytes the device's link has carried so far (to the device, from it), from the root-side
        veth's kernel counters: every byte on the wire, SSH framing and TCP included."""
        statistics = Path("/sys/class/net") / self._host_veth(name) / "statistics"
        return int((statistics / "tx_bytes").read_text()), int((statistics / "rx_bytes").read_text())

    def link_down(self, name: str) -> None:
        """Set the root-side veth down, like a cut cable (namespaced mode only)."""
        _run(["ip", "link", "set", self._host_veth(name), "down"])

    def link_up(self, name: str) -> None:
        """Set the root-side veth up again; the kernel restores the connected route."""
        _run(["ip", "link", "set", self._host_veth(name), "up"])

    def kill_device(self, name: str) -> None:
        """SIGKILL sshd, every session and whatever they run, like a board losing power;
        ``start_sshd`` brings the device back."""
        state = self._state(name)
        if state.process is not None:
            _stop_tree(state.process)
            state.process = None
        if state.user:
            _kill_device_processes(state.netns, state.cgroup, state.user)

    def freeze_sshd(self, name: str, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the listening sshd: the kernel still accepts TCP connections, but
        nothing answers on them, like a hung board. Sessions already open are not affected."""
        state = self._state(name)
        if state.process is not None:
            state.process.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def small_disk(self, name: str, folder: str, size_kb: int) -> Path:
        """Mount a ``size_kb`` tmpfs at ``<home>/<folder>``, owned by the device user: a disk
        that fills up (namespaced mode only). It is mounted in sshd's mount namespace (``ip
        netns exec`` gives sshd its own), so only the device sees it, until sshd restarts."""
        state = self._state(name)
        if not state.user or state.process is None:
            raise DeviceLimitUnsupported("a small disk needs namespaced mode (root) and a running sshd")
        entry = pwd.getpwnam(state.user)
        path = Path(entry.pw_dir)
        for part in Path(folder).parts:
            path = path / part
            path.mkdir(exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        options = f"size={int(size_kb)}k,uid={entry.pw_uid},gid={entry.pw_gid},mode=0755"
        _run(["nsenter", "-t", str(state.process.pid), "-m", "--",
              "mount", "-t", "tmpfs", "-o", options, f"edgegate-{state.user}", str(path)])
        state.mounts.append(path)
        return path

    def _state(self, name: str) -> _DeviceState:
        if name not in self._devices:
            raise KeyError(f"no device {name!r} in this farm")
        return self._devices[name]

    def _host_veth(self, name: str) -> str:
        veth = self._state(name).host_veth
        if veth is None:
            raise DeviceError(f"device {name!r} has no link to cut (loopback mode)")
        return veth

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every device; raise one DeviceError listing the steps that failed, if any."""
        errors: list[str] = []
        for name in list(self._devices):
            try:
                self._teardown(self._devices.pop(name))
            except DeviceError as exc:
                errors.append(str(exc))
        if self._namespaces:
            errors += _attempt(("remove cgroup parents", _remove_cgroup_parents))
        if errors:
            raise DeviceError("teardown incomplete:\n" + "\n".join(errors))

    def _teardown(self, state: _DeviceState) -> None:
        """Remove one device, running every step even when an earlier one fails."""
        steps: list[Step] = []
        if state.process is not None:
            steps.append(("stop sshd", partial(_stop_tree, state.process)))
        steps.append(("kill sessions", partial(_kill_device_processes, state.netns, state.cgroup, state.user)))
        steps += [(f"unmount {path}", partial(_unmount, path)) for path in reversed(state.mounts)]
        if state.user and (armroot.MOUNTS / state.user).exists():
            steps.append(("remove chroot folder", partial((armroot.MOUNTS / state.user).rmdir)))
        if state.subnet:
            steps.append(("delete guard route", partial(_delete_route, state.subnet)))
        if state.host_veth:
            steps.append(("delete veth", partial(_delete_link, state.host_veth)))
        if state.netns:
            steps.append(("delete netns", partial(_delete_netns, state.netns)))
        if state.cgroup:
            steps.append(("remove cgroups", partial(_remove_cgroup, state.cgroup)))
        if state.user:
            steps.append(("delete user", partial(_delete_user, state.user)))
        _run_steps(steps, f"device {state.name}")

    @staticmethod
    def _probe_namespaces() -> bool:
        """True when we are root and can create (and delete) a network namespace."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return False
        probe = f"edgegate-probe-{os.getpid()}"
        if _run(["ip", "netns", "add", probe], check=False).returncode != 0:
            return False
        _run(["ip", "netns", "delete", probe], check=False)
        return True


# -- commands and processes -------------------------------------------------------------------


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command; with ``check`` raise DeviceError carrying its output on failure."""
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise DeviceError(f"{shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _attempt(step: Step) -> list[str]:
    """Run one named cleanup step; return [] or a one-line description of its failure."""
    what, action = step
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - cleanup must go on
        return [f"{what}: {exc}"]
    return []


def _run_steps(steps: list[Step], heading: str) -> None:
    """Run every step even when some fail; then raise one DeviceError listing the failures."""
    errors = [error for step in steps for error in _attempt(step)]
    if errors:
        raise DeviceError(f"{heading}: " + "; ".join(errors))


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL the given pids (never ourselves); ignore those already gone."""
    for pid in set(pids) - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid``, found through /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _stop_process(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal a process we started and reap it (SIGKILL after 5 s)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill a process we started together with its descendants (the sessions it forked)."""
    children = _descendants(process.pid)
    _stop_process(process, signal.SIGKILL)
    _kill_pids(children)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
    return pids


def _device_pids(netns: str | None, cgroup: str | None, user: str | None) -> set[int]:
    """Pids inside the device's namespace, its cgroups or owned by its user."""
    pids: set[int] = set()
    if netns:
        result = _run(["ip", "netns", "pids", netns], check=False)
        pids.update(int(p) for p in result.stdout.split() if p.isdigit())
    if cgroup:
        for controller in CGROUP_CONTROLLERS:
            procs = CGROUP_ROOT / controller / cgroup / "cgroup.procs"
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    if user:
        with contextlib.suppress(KeyError):
            pids.update(_pids_of_uid(pwd.getpwnam(user).pw_uid))
    return {p for p in pids if _pid_alive(p)} - {os.getpid()}


def _kill_device_processes(netns: str | None, cgroup: str | None, user: str | None) -> None:
    """Kill everything belonging to a device, repeating while processes keep appearing."""
    deadline = time.monotonic() + 5
    while pids := _device_pids(netns, cgroup, user):
        if time.monotonic() > deadline:
            raise DeviceError(f"processes still alive: {sorted(pids)}")
        _kill_pids(pids)
        time.sleep(0.05)


# -- keys, users, sshd ------------------------------------------------------------------------


def _prepare_root(root: Path) -> tuple[Path, Path]:
    """Create a fresh scratch root with a host key and a client key; return both private keys."""
    root.mkdir(parents=True, exist_ok=True)
    keys = (root / "ssh_host_ed25519_key", root / "client_ed25519")
    for key in keys:
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        _run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", f"edgegate-{root.name}", "-f", str(key)])
    return keys


def _create_user(user: str, public_key: Path) -> Path:
    """Create a key-only login user (password field ``*``) with ~/.ssh/authorized_keys."""
    _run(["useradd", "-m", "-s", "/bin/bash", "-p", "*", "-c", "EdgeGate test device", user])
    entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    shutil.copyfile(public_key, authorized)
    authorized.chmod(0o600)
    for path in (ssh_dir, authorized):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return home


def _delete_user(user: str) -> None:
    """Delete a user we created, with its home and mail spool."""
    with contextlib.suppress(KeyError):
        pwd.getpwnam(user)
        _kill_device_processes(None, None, user)
        result = _run(["userdel", "-r", "-f", user], check=False)
        if result.returncode not in (0, 12):  # 12: home could not be removed fully, checked below
            raise DeviceError(f"userdel {user} failed ({result.returncode}): {result.stderr.strip()}")
    home = Path("/home") / user
    if home.exists():
        shutil.rmtree(home)


def _ensure_privsep_dir() -> None:
    """sshd running as root needs /run/sshd (its privilege-separation chroot)."""
    path = Path("/run/sshd")
    if not path.is_dir():
        path.mkdir(mode=0o755, exist_ok=True)


def _write_sshd_config(
    root: Path, host_key: Path, *, listen: str, user: str, authorized_keys: Path, strict: bool,
    chroot: Path | None = None, environment: dict[str, str] | None = None,
) -> Path:
    """Write the device's sshd_config; key-only login for ``user`` only, sftp enabled (sshd's own,
    which works inside a ``chroot`` too)."""
    lines = [
        f"ListenAddress {listen}",
        f"HostKey {host_key}",
        f"PidFile {root / 'sshd.pid'}",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {authorized_keys}",
        f"StrictModes {'yes' if strict else 'no'}",
        f"AllowUsers {user}",
        f"PermitRootLogin {'prohibit-password' if user == 'root' else 'no'}",
        "Subsystem sftp internal-sftp",
        "MaxStartups 100",
        "MaxSessions 50",
        "ClientAliveInterval 5",
        "UseDNS no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        *([f"ChrootDirectory {chroot}"] if chroot else []),
        *([f"SetEnv {' '.join(f'{k}={v}' for k, v in environment.items())}"] if environment else []),
    ]
    config = root / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


def _write_known_hosts(root: Path, host: str, port: int, host_key: Path) -> Path:
    """known_hosts holding exactly this device's host key (``[host]:port`` unless port 22)."""
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    known = root / "known_hosts"
    known.write_text(f"{name} {key_type} {key_b64}\n")
    return known


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], root: Path) -> None:
    """Poll until ``host:port`` accepts TCP; raise with the sshd log if it dies or times out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    status = process.poll()
    _stop_process(process, signal.SIGKILL)
    logs = "\n".join(_tail(root / n) for n in ("sshd.log", "sshd.stderr"))
    raise DeviceError(f"sshd for {root.name} not reachable on {host}:{port} (exit {status}):\n{logs}")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path.name} missing)"


# -- cgroups ----------------------------------------------------------------------------------


def _create_cgroups(ident: str, cpu_quota: float | None, memory_mb: int | None) -> str | None:
    """Create ``edgegate-tests/<ident>`` in the cpu and memory hierarchies and set the limits.

    Returns the relative cgroup name, or None when cgroups are unusable and no limit was asked.
    """
    dirs = [CGROUP_ROOT / c / CGROUP_PARENT / ident for c in CGROUP_CONTROLLERS]
    try:
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if cpu_quota is None and memory_mb is None:
            return None
        raise DeviceLimitUnsupported(f"cannot create cgroups: {exc}") from exc
    cgroup = f"{CGROUP_PARENT}/{ident}"
    if cpu_quota is not None:
        _set_cpu_quota(dirs[0], cpu_quota)
    if memory_mb is not None:
        _set_memory_limit(dirs[1], memory_mb)
    return cgroup


def _set_cpu_quota(path: Path, cores: float) -> None:
    if cores <= 0:
        raise ValueError("cpu_quota must be positive")
    period = int((path / "cpu.cfs_period_us").read_text())
    (path / "cpu.cfs_quota_us").write_text(str(max(1000, int(cores * period))))
    # A real device's cores are its own. Without this, the farm's group competes at the root as one
    # task against every busy host process (pytest, its xdist workers), and eight devices capped at
    # a quarter core each got a ninth of the machine between them while eight workers ran.
    (path.parent / "cpu.shares").write_text(str(CPU_SHARES_MAX))


def _set_memory_limit(path: Path, memory_mb: int) -> None:
    limit = str(int(memory_mb) * 1024 * 1024)
    (path / "memory.limit_in_bytes").write_text(limit)
    memsw = path / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        memsw.write_text(limit)
    with contextlib.suppress(OSError):
        (path / "memory.swappiness").write_text("0")


def _in_cgroups(cgroup: str, command: list[str]) -> list[str]:
    """Wrap ``command`` in ``sh`` that moves itself into the cgroups, then execs it."""
    moves = "; ".join(
        f"echo $$ > {shlex.quote(str(CGROUP_ROOT / c / cgroup / 'cgroup.procs'))} || exit 97"
        for c in CGROUP_CONTROLLERS
    )
    return ["sh", "-c", f'{moves}; exec "$@"', "sh", *command]


def _remove_cgroup(cgroup: str) -> None:
    """rmdir the device's cgroups (their processes must be gone); retry briefly on EBUSY."""
    for controller in CGROUP_CONTROLLERS:
        path = CGROUP_ROOT / controller / cgroup
        for attempt in range(50):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.05)


def _remove_cgroup_parents() -> None:
    """Remove the shared ``edgegate-tests`` parents when no other farm still uses them."""
    for controller in CGROUP_CONTROLLERS:
        with contextlib.suppress(FileNotFoundError):
            parent = CGROUP_ROOT / controller / CGROUP_PARENT
            if not any(p.is_dir() for p in parent.iterdir()):
                parent.rmdir()


# -- network ----------------------------------------------------------------------------------


def _subnet(index: int) -> str:
    """The /30 of device ``index``: 198.18.N.0/30 for N < 256, then 198.19.(N-256).0/30."""
    if not 1 <= index <= MAX_DEVICE_INDEX:
        raise ValueError(f"device index {index} out of range")
    return f"198.{18 + index // 256}.{index % 256}.0/30"


def _host_address(index: int) -> str:
    return _subnet(index).replace(".0/30", ".1")


def _device_address(index: int) -> str:
    return _subnet(index).replace(".0/30", ".2")


@contextlib.contextmanager
def _address_lock() -> Iterator[None]:
    """Serialise address allocation between farms (other processes included)."""
    with open(ADDRESS_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_index() -> int:
    """The lowest device index whose /30 is neither addressed nor routed in the root namespace."""
    output = _run(["ip", "-4", "-o", "addr", "show"]).stdout + _run(["ip", "-4", "route", "show"]).stdout
    used = set(output.split())
    for index in range(1, MAX_DEVICE_INDEX + 1):
        if _subnet(index) not in used and f"{_host_address(index)}/30" not in used:
            return index
    raise DeviceError("no free 198.18.0.0/15 subnet left")


def _disable_ipv6(interface: str, netns: str | None = None) -> None:
    """Keep the veth quiet: no IPv6 link-local chatter (best effort)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    _run([*prefix, "sysctl", "-q", "-w", f"net.ipv6.conf.{interface}.disable_ipv6=1"], check=False)


def _limit_rate(state: _DeviceState, rate_mbit: float) -> None:
    """tbf on the root-side veth (host -> device) and on the device-side veth (device -> host)."""
    if shutil.which("tc") is None:
        raise DeviceLimitUnsupported("tc is not installed")
    assert state.host_veth is not None and state.netns is not None
    burst = max(16 * 1024, int(rate_mbit * 1e6 / 8 / 100))  # 10 ms of traffic, at least 16 KiB
    tbf = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "50ms"]
    ends = (("tc",), state.host_veth), (("tc", "-n", state.netns), _peer_name(state.host_veth))
    for command, veth in ends:
        result = _run([*command, "qdisc", "add", "dev", veth, *tbf], check=False)
        if result.returncode != 0:
            raise DeviceLimitUnsupported(f"tc tbf on {veth} failed: {result.stderr.strip()}")


def _peer_name(host_veth: str) -> str:
    """``<prefix>h<N>`` -> ``<prefix>d<N>``."""
    match = re.fullmatch(r"(.*)h(\d+)", host_veth)
    assert match is not None
    return f"{match.group(1)}d{match.group(2)}"


def _delete_route(subnet: str) -> None:
    result = _run(["ip", "route", "del", "unreachable", subnet, "metric", str(GUARD_ROUTE_METRIC)], check=False)
    if result.returncode != 0 and "No such process" not in result.stderr:
        raise DeviceError(result.stderr.strip())


def _delete_link(link: str) -> None:
    if link in _links():
        result = _run(["ip", "link", "delete", link], check=False)
        if result.returncode != 0 and "Cannot find device" not in result.stderr:  # gone with its netns meanwhile
            raise DeviceError(f"ip link delete {link} failed ({result.returncode}): {result.stderr.strip()}")


def _delete_netns(netns: str) -> None:
    if netns in _netns_names():
        _run(["ip", "netns", "delete", netns])


def _links() -> list[str]:
    """Interface names in the root namespace."""
    lines = _run(["ip", "-o", "link", "show"]).stdout.splitlines()
    return [line.split(":", 2)[1].strip().split("@")[0] for line in lines if ":" in line]


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


# -- leftovers --------------------------------------------------------------------------------


def leftovers(prefix: str) -> dict[str, list[str]]:
    """What a farm with ``prefix`` may have left behind: netns, links, users, cgroups; plus
    orphaned guard routes of any farm."""
    ident = re.compile(rf"{re.escape(prefix)}-[a-z0-9]+")
    veth = re.compile(rf"{re.escape(prefix)}[hd]\d+")
    cgroups = [
        f"{c}/{CGROUP_PARENT}/{p.name}"
        for c in CGROUP_CONTROLLERS
        if (CGROUP_ROOT / c / CGROUP_PARENT).is_dir()
        for p in (CGROUP_ROOT / c / CGROUP_PARENT).iterdir()
        if p.is_dir() and ident.fullmatch(p.name)
    ]
    return {
        "netns": [n for n in _netns_names() if ident.fullmatch(n)],
        "links": [link for link in _links() if veth.fullmatch(link)],
        "users": [u.pw_name for u in pwd.getpwall() if ident.fullmatch(u.pw_name)],
        "cgroups": cgroups,
        "routes": _guard_routes(),
    }


def _guard_routes() -> list[str]:
    """Guard routes (of any farm) whose /30 no longer has its host address: crashed runs.

    A live device always has its root-side address, so only orphans are listed; routes carry
    no owner, which is why this is not limited to one prefix.
    """
    addresses = set(_run(["ip", "-4", "-o", "addr", "show"]).stdout.split())
    routes = _run(["ip", "-4", "route", "show", "type", "unreachable"]).stdout.splitlines()
    stale = []
    for line in routes:
        parts = line.split()
        if len(parts) < 4 or parts[2:4] != ["metric", str(GUARD_ROUTE_METRIC)]:
            continue
        match = re.fullmatch(r"198\.(18|19)\.(\d+)\.0/30", parts[1])
        if match and f"{parts[1].replace('.0/30', '.1')}/30" not in addresses:
            stale.append(parts[1])
    return stale


def remove_leftovers(prefix: str) -> None:
    """Remove everything a crashed farm with ``prefix`` left; each step runs even if one fails."""
    found = leftovers(prefix)
    cgroups = sorted({c.split("/", 1)[1] for c in found["cgroups"]})
    steps: list[Step] = []
    steps += [(f"kill processes of {u}", partial(_kill_device_processes, None, None, u)) for u in found["users"]]
    steps += [(f"kill processes in {n}", partial(_kill_device_processes, n, None, None)) for n in found["netns"]]
    steps += [(f"kill processes in {g}", partial(_kill_device_processes, None, g, None)) for g in cgroups]
    steps += [(f"remove cgroup {g}", partial(_remove_cgroup, g)) for g in cgroups]
    steps += [(f"delete netns {n}", partial(_delete_netns, n)) for n in found["netns"]]
    steps += [(f"delete link {link}", partial(_delete_link, link)) for link in found["links"]]
    steps.append(("delete orphaned guard routes", _delete_orphaned_routes))  # includes those just orphaned
    steps += [(f"unmount {m}", partial(_unmount, Path(m))) for u in found["users"]
              for folder in (Path("/home") / u, armroot.MOUNTS / u) for m in _mounts_under(folder)]
    steps += [(f"delete user {u}", partial(_delete_user, u)) for u in found["users"]]
    _run_steps(steps, "could not remove leftovers")


def _delete_orphaned_routes() -> None:
    for subnet in _guard_routes():
        _delete_route(subnet)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first."""
    with contextlib.suppress(OSError):
        points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        inside = [p for p in points if p == str(folder) or p.startswith(f"{folder}/")]
        return sorted(inside, key=len, reverse=True)
    return []


def _unmount(path: Path) -> None:
    if str(path) in {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()}:
        _run(["umount", "-l", str(path)])
