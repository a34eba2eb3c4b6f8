"""A cgroup v1 cpu group with a CFS quota, for tests that give a process a share of a core."""

from __future__ import annotations

import os
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")


def cpu_cgroup(name: str, quota_us: int, period_us: int) -> Path | None:
    """A cgroup v1 cpu controller group with a CFS quota, or None where this machine has none."""
    if os.geteuid() != 0 or not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return None
    group = CPU_ROOT / name
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(period_us))
        (group / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError:
        return None
    return group
