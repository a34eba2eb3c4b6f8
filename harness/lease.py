"""Device leases: one run at a time measures on a device, whichever host it runs from.

The lease lives on the device, in ``<work_dir>/lease/``: ``lease.json`` (owner, token, start,
expiry) and ``lease.log`` (who took, took over and released it, and when). Every change is one
short python process on the device that holds an flock on ``lease/lock`` while it reads,
decides and replaces ``lease.json`` (write, then rename), so two runs racing for a device cannot
both win, over SSH or locally; the kernel drops the flock when that process ends, so a crash
never leaves the lock itself held. Only the device's clock is used, so host clocks need not agree.

A run holds the lease for each measurement (the runner's job), not for the whole run: two runs
on one device take turns measurement by measurement, and no run waits on another's builds or
other devices. The holder renews the lease from a background thread every ttl/3; a run that died
stops renewing, its lease expires ttl later and the next run takes it over (the log says whose).
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import EdgeGateError, TransportError
from .profiles import DeviceProfile
from .transport import Transport, open_transport

LEASE_DIR = "lease"
COMMAND_TIMEOUT_S = 60.0
POLL_S = 2.0

# Runs on the device with its python (3.6+, standard library only); prints one JSON answer.
LEASE_SCRIPT = r"""
import fcntl, json, os, sys, time
op, folder, token, arg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if not os.path.isdir(folder):
    os.makedirs(folder, exist_ok=True)
path = os.path.join(folder, "lease.json")

def read():
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None

def write(lease):
    scratch = path + ".tmp-" + token
    with open(scratch, "w") as handle:
        json.dump(lease, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(scratch, path)

def log(event, lease, **extra):
    entry = dict(event=event, time=now, owner=lease["owner"], token=lease["token"], **extra)
    with open(os.path.join(folder, "lease.log"), "a") as handle:
        handle.write(json.dumps(entry) + "\n")

with open(os.path.join(folder, "lock"), "a") as guard:
    fcntl.flock(guard, fcntl.LOCK_EX)
    now = time.time()
    held = read()
    mine = held is not None and held.get("token") == token
    if op == "acquire":
        if held is not None and not mine and held.get("expires", 0) > now:
            answer = {"granted": False, "holder": held}
        else:
            lease = {"owner": arg["owner"], "token": token, "started": now, "expires": now + arg["ttl"]}
            write(lease)
            stale = held if held is not None and not mine else None
            if stale:
                log("took_over", lease, previous_owner=stale.get("owner"), previous_token=stale.get("token"),
                    previous_expires=stale.get("expires"))
            else:
                log("acquired", lease)
            answer = {"granted": True, "lease": lease, "took_over": stale}
    elif op == "renew":
        if mine:
            held["expires"] = now + arg["ttl"]
            write(held)
        answer = {"renewed": mine, "holder": held}
    elif op == "release":
        if mine:
            os.remove(path)
            log("released", held)
        answer = {"released": mine, "holder": held}
    elif op == "log":
        try:
            with open(os.path.join(folder, "lease.log")) as handle:
                answer = {"log": [json.loads(line) for line in handle if line.strip()], "holder": held}
        except OSError:
            answer = {"log": [], "holder": held}
    else:
        answer = {"holder": held}
    answer["now"] = now
print(json.dumps(answer))
"""


class DeviceBusy(EdgeGateError):
    """Another run holds the device's lease and did not let go within the wait."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, since when and until when (device clock, seconds since the epoch)."""

    owner: str
    token: str
    started: float
    expires: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Holder:
        return cls(str(data.get("owner", "?")), str(data.get("token", "")),
                   float(data.get("started", 0.0)), float(data.get("expires", 0.0)))

    def describe(self, now: float) -> str:
        left = self.expires - now
        expiry = f"expires in {left:.0f} s unless renewed" if left >= 0 else f"expired {-left:.0f} s ago"
        return f"{self.owner} (since {_utc(self.started)}, {expiry})"


def lease_owner(run_id: str) -> str:
    """Who is asking, in words a person finding the lease can act on."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()} run {run_id}"


class DeviceLease:
    """A device's lease through ``transport``: taken for each measurement, renewed in the background."""

    def __init__(self, device: str, transport: Transport, owner: str, ttl_s: float,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.device = device
        self.transport = transport
        self.owner = owner
        self.ttl_s = ttl_s
        self.log = log
        self.token = ""  # a fresh one per hold, so the log tells holds apart
        self.took_over: Holder | None = None  # the expired lease the last hold replaced, if any
        self.lost: str | None = None  # why the last hold was lost while held (another run took it over)
        self.held = False
        self._python: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, wait_s: float, poll_s: float = POLL_S) -> None:
        """Take the lease, waiting up to ``wait_s`` for its holder; DeviceBusy names who holds it."""
        self.token, self.took_over, self.lost = secrets.token_hex(8), None, None
        deadline = time.monotonic() + wait_s
        announced: str | None = None
        while True:
            answer = self.call("acquire", owner=self.owner, ttl=self.ttl_s)
            if answer["granted"]:
                break
            holder = Holder.from_json(answer["holder"])
            if time.monotonic() >= deadline:
                raise DeviceBusy(self._busy_message(holder, answer["now"], wait_s))
            if announced != holder.token:
                self.log(f"device {self.device} is leased by {holder.describe(answer['now'])}: "
                         f"waiting up to {wait_s:.0f} s")
                announced = holder.token
            time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))
        self._granted(answer)

    def _granted(self, answer: dict[str, Any]) -> None:
        self.held = True
        if answer.get("took_over"):
            self.took_over = Holder.from_json(answer["took_over"])
            self.log(f"device {self.device}: took over the expired lease of "
                     f"{self.took_over.describe(answer['now'])}")
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._keep_renewed, args=(self._stop,),
                                         name=f"lease-{self.device}", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stop renewing and give the lease back (unless another run took it over meanwhile)."""
        if not self.held:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=COMMAND_TIMEOUT_S)
        self.held = False
        answer = self.call("release")
        if not answer["released"] and self.lost is None:
            holder = answer.get("holder")
            self.lost = f"held by {Holder.from_json(holder).owner}" if holder else "gone"
            self.log(f"device {self.device}: the lease was no longer ours at release ({self.lost})")

    def release_quietly(self) -> None:
        """Release; a failure is logged, not raised: a lease that cannot be released expires."""
        try:
            self.release()
        except Exception as exc:  # noqa: BLE001 - runs after a measurement or at session end; neither may break
            self.log(f"device {self.device}: could not release the lease ({exc}); it expires within {self.ttl_s:.0f} s")

    def _keep_renewed(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl_s / 3):
            try:
                answer = self.call("renew", ttl=self.ttl_s)
            except Exception as exc:  # noqa: BLE001 - the renewer must outlive a flaky link; the next tick retries
                self.log(f"device {self.device}: could not renew the lease ({exc}); retrying")
                continue
            if not answer["renewed"]:
                holder = answer.get("holder")
                self.lost = f"taken over by {Holder.from_json(holder).owner}" if holder else "removed"
                self.log(f"device {self.device}: LEASE LOST ({self.lost}): its measurements may overlap another run's")
                return

    def call(self, op: str, **arg: Any) -> dict[str, Any]:
        """Run one lease operation on the device and return its answer."""
        if self._python is None:
            self._python = self.transport.python()
        folder = self.transport.device_path(LEASE_DIR)
        result = self.transport.run([self._python, "-c", LEASE_SCRIPT, op, folder, self.token or "-", json.dumps(arg)],
                                    timeout_s=COMMAND_TIMEOUT_S)
        lines = result.stdout.strip().splitlines()
        if result.exit_status != 0 or not lines:
            why = (result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"])[-1]
            raise TransportError(f"device {self.device}: lease {op} failed in {folder} with {self._python}: {why}")
        return dict(json.loads(lines[-1]))

    def _busy_message(self, holder: Holder, now: float, wait_s: float) -> str:
        return (f"device {self.device} is busy: leased by {holder.describe(now)}; waited {wait_s:.0f} s. "
                f"Wait longer with --edgegate-lease-wait SECONDS (or `lease: {{wait_s: ...}}` in its profile); "
                f"a lease whose run died expires by itself")


class Leases:
    """A run's leases, one per device. ``connect`` gives the device's connection, which the run
    also measures over (each command on a channel of its own, so renewing never waits on a
    measurement); without it each lease opens its own. A device found busy once fails the run's
    later measurements there at once."""

    def __init__(self, owner: str, wait_s: float | None = None, accept_new_host_keys: bool = False,
                 log: Callable[[str], None] = lambda _: None,
                 connect: Callable[[DeviceProfile], Transport] | None = None) -> None:
        self.owner = owner
        self.wait_s = wait_s  # None: each profile's lease.wait_s
        self.accept_new_host_keys = accept_new_host_keys
        self.log = log
        self._connect = connect
        self._leases: dict[str, DeviceLease] = {}
        self._busy: dict[str, DeviceBusy] = {}

    @contextmanager
    def hold(self, device: DeviceProfile) -> Iterator[DeviceLease]:
        """The device's lease for the duration of the ``with`` block."""
        if device.name in self._busy:
            raise self._busy[device.name]
        lease = self._lease(device)
        try:
            lease.acquire(device.lease.wait_s if self.wait_s is None else self.wait_s)
        except DeviceBusy as exc:
            self._busy[device.name] = exc
            raise
        try:
            yield lease
        finally:
            lease.release_quietly()

    def _lease(self, device: DeviceProfile) -> DeviceLease:
        if device.name not in self._leases:
            connect = self._connect or (lambda profile: open_transport(profile, self.accept_new_host_keys))
            self._leases[device.name] = DeviceLease(device.name, connect(device), self.owner, device.lease.ttl_s,
                                                    self.log)
        return self._leases[device.name]

    def close(self) -> None:
        """Releases every lease; closes the connections only where the leases opened them."""
        for lease in self._leases.values():
            lease.release_quietly()
            if self._connect is None:
                lease.transport.close()
        self._leases.clear()


def lease_log(device: str, transport: Transport) -> tuple[list[dict[str, Any]], Holder | None]:
    """The device's lease log (oldest first) and its current holder, if any."""
    answer = DeviceLease(device, transport, "reader", 1.0).call("log")  # reads under the lock, changes nothing
    holder = answer.get("holder")
    return list(answer["log"]), Holder.from_json(holder) if holder else None


def held_intervals(log: list[dict[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(owner, from, to) per lease in a lease log; ``to`` is None for one never released."""
    opened: dict[str, tuple[str, float]] = {}
    intervals: list[tuple[str, float, float | None]] = []
    for entry in log:
        if entry["event"] == "took_over" and entry.get("previous_token") in opened:  # valid until it expired
            owner, start = opened.pop(entry["previous_token"])
            intervals.append((owner, start, float(entry["previous_expires"])))
        if entry["event"] in ("acquired", "took_over"):
            opened[entry["token"]] = (entry["owner"], float(entry["time"]))
        elif entry["event"] == "released" and entry["token"] in opened:
            owner, start = opened.pop(entry["token"])
            intervals.append((owner, start, float(entry["time"])))
    intervals += [(owner, start, None) for owner, start in opened.values()]
    return sorted(intervals, key=lambda interval: interval[1])


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
