"""The CPU this process may use: the CPUs it may run on, and the CFS quota of its cgroups.

A device that shares a machine's cores with others (namespace devices, containers, a board's
cores split between tenants) is given a share: an affinity mask (cpuset) and/or a CFS
bandwidth quota (cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, v2 ``cpu.max``). Other
processes only contend with this one when they take time it was entitled to; what they run
on other CPUs, or within the room the quota leaves them, does not slow it.

Read once per process on the device; paths come from /proc/self/cgroup and /proc/self/mountinfo,
under ``root`` so tests can lay the files out as the kernel does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuShare:
    cpus: tuple[int, ...]  # the CPUs this process may run on
    quota_cores: float | None  # the tightest CFS quota among its cgroups, in cores; None: no quota

    @property
    def cores(self) -> float:
        """How many cores' worth of time this process may use at most."""
        return min(self.quota_cores or len(self.cpus), float(len(self.cpus)))


def current(root: str = "/") -> CpuShare:
    cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else tuple(range(os.cpu_count() or 1))
    return CpuShare(cpus, quota_cores(root))


def contention(others_s: float, wall_s: float, share: CpuShare) -> float:
    """The share of this process's entitlement that others took: their CPU time on its CPUs beyond
    the room its quota leaves them, over the time it was entitled to (0 to 1). Without a quota
    this is their time over all its CPUs' time."""
    wall_s = max(wall_s, 1e-9)
    room_s = (len(share.cpus) - share.cores) * wall_s
    return min(max(others_s - room_s, 0.0) / (share.cores * wall_s), 1.0)


def quota_cores(root: str = "/") -> float | None:
    """The tightest CFS quota on the way from this process's cpu cgroup up to its hierarchy's root."""
    quotas = [quota for folder in _cpu_cgroup_folders(Path(root)) if (quota := _quota_of(folder)) is not None]
    return min(quotas) if quotas else None


def _cpu_cgroup_folders(root: Path) -> list[Path]:
    """This process's cpu cgroup folder and its parents up to the mount point (empty if unknown)."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for mount_root, mount_point, version in _cgroup_mounts(mounts):
        group = _membership(memberships, version)
        if group is None or not (group + "/").startswith(mount_root.rstrip("/") + "/"):
            continue
        relative = Path(group[len(mount_root.rstrip("/")):].lstrip("/"))
        base = root / mount_point.lstrip("/")
        return [base / relative, *(base / parent for parent in relative.parents if str(parent) != ".")] + [base]
    return []


def _cgroup_mounts(mounts: list[str]) -> list[tuple[str, str, int]]:
    """(root inside the hierarchy, mount point, 1 or 2) of each cgroup mount with the cpu controller;
    v1 first, since a v1 cpu controller is the one that holds the quota where both are mounted."""
    found = []
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            found.append((fields[3], fields[4], 1))
        elif tail[0] == "cgroup2":
            found.append((fields[3], fields[4], 2))
    return sorted(found, key=lambda mount: mount[2])


def _membership(memberships: list[str], version: int) -> str | None:
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if version == 1 and "cpu" in controllers.split(","):
            return path
        if version == 2 and hierarchy == "0" and controllers == "":
            return path
    return None


def _quota_of(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").exists():
            quota, _, period = (folder / "cpu.max").read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us < 0 else quota_us / period_us
