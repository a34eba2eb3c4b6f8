"""A device's share of the CPU (affinity and CFS quota), and contention counted against that share.

The cgroup trees in the first tests are laid out as the kernel lays out /proc/self/cgroup,
/proc/self/mountinfo and the cgroup v1 and v2 file systems (a container's quota cannot be
changed from inside this test process). The last test puts a real process in a real cgroup v1
group with a quota, next to a real CPU hog.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cgroups import cpu_cgroup

from edgegate.runner.cpu_share import CpuShare, contention, quota_cores

V1_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
38 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
39 31 0:34 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
"""
V1_CGROUP = "12:memory:/farm/d3\n4:cpu,cpuacct:/farm/d3\n0::/farm/d3\n"
V2_MOUNTINFO = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/system.slice/runner.service\n"


def kernel_tree(root: Path, mountinfo: str, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_tightest_v1_quota_on_the_way_to_the_root_is_the_share(tmp_path: Path) -> None:
    base = "sys/fs/cgroup/cpu,cpuacct"
    root = kernel_tree(tmp_path, V1_MOUNTINFO, V1_CGROUP, {
        f"{base}/cpu.cfs_quota_us": "-1\n", f"{base}/cpu.cfs_period_us": "100000\n",
        f"{base}/farm/cpu.cfs_quota_us": "150000\n", f"{base}/farm/cpu.cfs_period_us": "100000\n",
        f"{base}/farm/d3/cpu.cfs_quota_us": "25000\n", f"{base}/farm/d3/cpu.cfs_period_us": "100000\n"})
    assert quota_cores(str(root)) == 0.25
    (root / base / "farm/cpu.cfs_quota_us").write_text("10000\n")  # the farm's own cap is tighter
    assert quota_cores(str(root)) == 0.1


def test_a_v2_cpu_max_is_read_and_max_means_no_quota(tmp_path: Path) -> None:
    base = "sys/fs/cgroup/system.slice"
    root = kernel_tree(tmp_path, V2_MOUNTINFO, V2_CGROUP, {f"{base}/runner.service/cpu.max": "50000 100000\n",
                                                           f"{base}/cpu.max": "max 100000\n"})
    assert quota_cores(str(root)) == 0.5
    (root / base / "runner.service/cpu.max").write_text("max 100000\n")
    assert quota_cores(str(root)) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert quota_cores(str(tmp_path)) is None


def test_others_count_only_when_they_take_the_share() -> None:
    quarter = CpuShare(cpus=(0, 1), quota_cores=0.25)
    wall_s = 10.0
    assert contention(others_s=1.75 * wall_s, wall_s=wall_s, share=quarter) == 0.0  # 7 such devices beside it
    starved = contention(others_s=(2 - 0.15) * wall_s, wall_s=wall_s, share=quarter)  # it got 0.15 of its 0.25
    assert starved == pytest.approx(0.4)
    whole = CpuShare(cpus=(0, 1), quota_cores=None)
    assert contention(others_s=0.5 * wall_s, wall_s=wall_s, share=whole) == pytest.approx(0.25)


REGION = """
import json, time
from edgegate.runner.disturbance import RegionMonitor
from edgegate.runner.cpu_share import current
with RegionMonitor() as monitor:
    end = time.time() + 2
    while time.time() < end: pass
print(json.dumps({"contention": monitor.contention, "quota": current().quota_cores}))
"""


def test_a_process_under_a_quarter_core_quota_is_not_contended_by_a_hog_beside_it(tmp_path: Path) -> None:
    """The hog is in the root group, this region's process in a group of 0.25 cores: the hog uses a
    core the quota never let the region have. Counted over all CPUs, as before, that read 0.5."""
    group = cpu_cgroup(f"edgegate-share-{os.getpid()}", quota_us=25000, period_us=100000)
    if group is None:
        pytest.skip("needs root and a cgroup v1 cpu controller (/sys/fs/cgroup/cpu) to give a process a quota")
    script = tmp_path / "region.py"
    script.write_text(REGION)
    enter = f"echo $$ > {group}/tasks && exec {sys.executable} {script}"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # in the test's group, not the quota's
    try:
        done = subprocess.run(["sh", "-c", enter], capture_output=True, text=True, timeout=60, check=True)
    finally:
        hog.kill()
        hog.wait()
        group.rmdir()
    figures = json.loads(done.stdout)
    assert figures["quota"] == 0.25
    assert figures["contention"] < 0.10, figures
