"""Was a timed region disturbed, and measuring it again until it is not (or a bound is reached).

Read on the device, over the timed region only:
- contention: CPU time other processes took from this one's share of the CPUs (psutil, and the
  affinity mask and cgroup quota in ``cpu_share``): on a device given a quarter of a core, what
  others run in the other three quarters is not contention;
- steal: CPU time the hypervisor gave to other guests (Linux ``steal`` in /proc/stat);
- a CPU clock that fell during the region while the governor stayed the same (sysfs cpufreq);
- a thermal trip point reached during the region (sysfs thermal zones).

A device that is itself slower is none of these: a CPU quota throttles this process without
another one running (its time shows as idle), and a clock that was low from the start (a
power mode) does not fall during the region. Those stay visible as real regressions.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import cpu_share, thermal
from .events import emit

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """When a region counts as disturbed, and how often to measure it again (with back-off)."""

    max_contention: float = 0.10
    max_steal: float = 0.10
    max_clock_drop: float = 0.10
    retries: int = 2
    backoff_s: float = 2.0

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> Limits:
        given = job.get("disturbance") or {}
        return cls(**{name: type(getattr(cls(), name))(given[name]) for name in cls.__dataclass_fields__ if name in given})


class RegionMonitor:
    """Reads the signs of disturbance at the start and end of a ``with`` block."""

    def __init__(self, sysfs_root: str = "/") -> None:
        self.sysfs_root = sysfs_root
        self.contention = 0.0
        self.steal = 0.0
        self.clock_drop = 0.0
        self.trips: list[str] = []

    def __enter__(self) -> RegionMonitor:
        self._thermal = thermal.snapshot(self.sysfs_root)
        self._share = _share(self.sysfs_root)
        self._start = (time.monotonic(), _cpu_times(self._share), _own())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, times, own = time.monotonic(), _cpu_times(self._share), _own()
        wall_s = max(wall - self._start[0], 1e-9)
        others = (times.busy - self._start[1].busy) - (own - self._start[2])
        self.contention = cpu_share.contention(others, wall_s, self._share)
        self.steal = min(max(times.steal - self._start[1].steal, 0.0) / (wall_s * len(self._share.cpus)), 1.0)
        after = thermal.snapshot(self.sysfs_root)
        self.clock_drop = thermal.largest_clock_drop(self._thermal, after)
        self.trips = thermal.trip_warnings(self._thermal, after)

    def reasons(self, limits: Limits) -> list[str]:
        """Each sign beyond its limit, in words with its figure; empty when the region was clean."""
        found = []
        if self.contention > limits.max_contention:
            found.append(f"other processes used {self.contention:.0%} of the CPU (limit {limits.max_contention:.0%})")
        if self.steal > limits.max_steal:
            found.append(f"the hypervisor stole {self.steal:.0%} of the CPU (limit {limits.max_steal:.0%})")
        if self.clock_drop > limits.max_clock_drop:
            found.append(f"a CPU clock fell {self.clock_drop:.0%} during the region (limit {limits.max_clock_drop:.0%})")
        # a zone already past its trip point before the region is the device's state, not a disturbance
        return found + [trip.split(":")[0] for trip in self.trips if "already at" not in trip]


@dataclass
class Measured(Generic[T]):
    """The kept attempt's result and monitor, every attempt's reasons, and the verdict in words."""

    value: T
    monitor: RegionMonitor
    attempts: list[list[str]] = field(default_factory=list)

    @property
    def disturbed(self) -> str | None:
        """None when the kept attempt was clean; else why, with the figures and the attempts made."""
        last = self.attempts[-1]
        if not last:
            return None
        tries = len(self.attempts)
        return f"{'; '.join(last)}, in {'each of ' if tries > 1 else ''}{tries} attempt{'s' if tries > 1 else ''}"


def until_clean(region: Callable[[], T], limits: Limits, sysfs_root: str = "/",
                sleep: Callable[[float], None] = time.sleep,
                notify: Callable[[dict[str, Any]], None] = emit) -> Measured[T]:
    """Run ``region`` under a monitor; while it was disturbed, wait (doubling the wait) and run it
    again, at most ``limits.retries`` more times. The last attempt is kept. Each retry is announced
    (``notify``) before the wait, so the host hears from the runner while it backs off."""
    attempts: list[list[str]] = []
    for attempt in range(limits.retries + 1):
        if attempt:
            wait_s = limits.backoff_s * 2 ** (attempt - 1)
            notify({"event": "retry", "attempt": attempt + 1, "wait_s": wait_s, "why": attempts[-1]})
            sleep(wait_s)
        with RegionMonitor(sysfs_root) as monitor:
            value = region()
        attempts.append(monitor.reasons(limits))
        if not attempts[-1]:
            break
    return Measured(value, monitor, attempts)


def fields(measured: Measured[Any]) -> dict[str, Any]:
    """What a latency metric's event carries about its region (see ``events.metric``)."""
    return {"disturbed": measured.disturbed, "attempts": len(measured.attempts)}


def for_job(job: dict[str, Any]) -> tuple[Limits, str]:
    """The limits and sysfs root a measurement's job entry carries (the runner adds both)."""
    return Limits.from_job(job), str(job.get("sysfs_root", "/"))


@functools.cache
def _share(root: str) -> cpu_share.CpuShare:
    return cpu_share.current(root)


@dataclass(frozen=True)
class _Times:
    """CPU times summed over this process's CPUs."""

    busy: float
    steal: float


def _cpu_times(share: cpu_share.CpuShare) -> _Times:
    import psutil

    per_cpu = psutil.cpu_times(percpu=True)
    mine = [per_cpu[cpu] for cpu in share.cpus if cpu < len(per_cpu)] or per_cpu
    return _Times(sum(_busy_of(times) for times in mine), sum(_steal(times) for times in mine))


def _busy_of(times: Any) -> float:
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0) + _steal(times)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _steal(times: Any) -> float:
    return float(getattr(times, "steal", 0.0))


def _own() -> float:
    """This process's CPU time, with that of the children it waited for (a power meter command).
    From times(2), not /proc/self/stat: qemu-user fakes that file with zero CPU times, which made
    an emulated aarch64 runner's own work look like other processes'."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
