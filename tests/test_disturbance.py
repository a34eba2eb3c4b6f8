"""Disturbed timed regions: seen on the device, measured again with back-off, then judged inconclusive.

The CPU hogs here are real processes; the clock and trip-point cases use sysfs trees laid out
exactly as the kernel lays out /sys/devices/system/cpu/cpuN/cpufreq and /sys/class/thermal
(no real clock can be lowered on this VM), changed during the region as the kernel would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgegate.gate import Breach, Threshold
from edgegate.runner.disturbance import Limits, RegionMonitor, until_clean
from edgegate.verdict import BLOCKED, INCONCLUSIVE, SHIP, decide

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"


def hogs(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)]) for _ in range(count)]


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_region_disturbed_once_is_measured_again_after_a_back_off() -> None:
    running = hogs(os.cpu_count() or 1, 1.0)
    waits: list[float] = []

    def back_off(seconds: float) -> None:
        waits.append(seconds)
        for hog in running:  # the disturbance ends during the back-off
            hog.wait()

    measured = until_clean(lambda: busy_wait(0.3), Limits(backoff_s=0.5), sleep=back_off)
    assert len(measured.attempts) == 2 and waits == [0.5], measured.attempts
    assert "other processes used" in measured.attempts[0][0]
    assert measured.disturbed is None and measured.monitor.contention < 0.10


def test_a_region_that_stays_disturbed_says_why_with_its_figure_after_every_attempt() -> None:
    running = hogs(os.cpu_count() or 1, 6.0)
    waits: list[float] = []
    try:
        measured = until_clean(lambda: busy_wait(0.3), Limits(retries=2, backoff_s=0.1), sleep=waits.append)
    finally:
        for hog in running:
            hog.kill()
    assert waits == [0.1, 0.2]  # doubling back-off, bounded by retries
    assert measured.disturbed is not None and measured.disturbed.endswith("in each of 3 attempts")
    share = measured.monitor.contention
    assert share > 0.3 and f"other processes used {share:.0%} of the CPU (limit 10%)" in measured.disturbed


def test_a_process_slowed_by_its_own_cpu_quota_is_not_disturbed() -> None:
    """A slower device is not contention: this region sleeps half the time, like a throttled
    process, and nobody else runs."""
    def throttled() -> None:
        for _ in range(6):
            busy_wait(0.05)
            time.sleep(0.05)

    measured = until_clean(throttled, Limits(), sleep=lambda s: pytest.fail("measured again"))
    assert measured.disturbed is None and len(measured.attempts) == 1


def cpufreq_tree(root: Path, khz: int, governor: str = "schedutil") -> Path:
    folder = root / "sys/devices/system/cpu/cpu0/cpufreq"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaling_cur_freq").write_text(f"{khz}\n")
    (folder / "scaling_max_freq").write_text("1479000\n")
    (folder / "scaling_governor").write_text(f"{governor}\n")
    return folder


def test_a_clock_that_falls_during_the_region_disturbs_it_but_a_low_clock_does_not(tmp_path: Path) -> None:
    folder = cpufreq_tree(tmp_path, 1479000)
    with RegionMonitor(str(tmp_path)) as monitor:
        (folder / "scaling_cur_freq").write_text("921600\n")  # the kernel lowered it: thermal or power cap
    assert monitor.reasons(Limits()) == ["a CPU clock fell 38% during the region (limit 10%)"]
    with RegionMonitor(str(tmp_path)) as steady:  # a power mode that runs lower all along
        pass
    assert steady.reasons(Limits()) == []


def test_a_trip_point_reached_during_the_region_disturbs_it(tmp_path: Path) -> None:
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("CPU-therm\n")
    (zone / "temp").write_text("61000\n")
    (zone / "trip_point_0_type").write_text("passive\n")
    (zone / "trip_point_0_temp").write_text("80000\n")
    with RegionMonitor(str(tmp_path)) as monitor:
        (zone / "temp").write_text("83500\n")
    assert monitor.reasons(Limits()) == [
        "thermal zone CPU-therm reached its passive trip point (80.0 °C) at 83.5 °C; it was 61.0 °C before the run"]
    with RegionMonitor(str(tmp_path)) as already_hot:  # hot before the region began: the device's state
        pass
    assert already_hot.reasons(Limits()) == []


def breach(metric: str) -> Breach:
    return Breach(Threshold(metric, "max", 1.0), 2.0, 1.0, f"{metric} = 2 > limit 1")


def test_a_breach_of_a_disturbed_latency_is_inconclusive_and_any_other_blocks() -> None:
    disturbed = {"decode_ms": "other processes used 48% of the CPU (limit 10%), in each of 3 attempts"}
    values = {"decode_ms": 39.9, "perplexity": 30.0}
    unjudged = decide([breach("decode_ms")], {"decode_ms"}, disturbed, values)
    assert unjudged.outcome == INCONCLUSIVE and not unjudged.breaches
    assert unjudged.inconclusive == ("decode_ms = 39.9 not judged: its timed region was disturbed "
                                     f"({disturbed['decode_ms']})",)
    assert unjudged.baseline_excluded == "disturbed: decode_ms"
    both = decide([breach("decode_ms"), breach("perplexity")], {"decode_ms", "perplexity"}, disturbed, values)
    assert both.outcome == BLOCKED and [b.threshold.metric for b in both.breaches] == ["perplexity"]


def test_a_disturbed_latency_that_held_is_not_silently_passed() -> None:
    verdict = decide([], {"decode_ms"}, {"decode_ms": "stolen"}, {"decode_ms": 3.0})
    assert verdict.outcome == INCONCLUSIVE and not verdict.passed
    unjudged_metric = decide([], {"perplexity"}, {"decode_ms": "stolen"}, {"decode_ms": 3.0})
    assert unjudged_metric.outcome == SHIP and unjudged_metric.baseline_excluded == "disturbed: decode_ms"
    slowed = decide([], {"decode_ms"}, {}, {"decode_ms": 3.0}, ["injected slowdown EDGEGATE_INJECT_SLOWDOWN=0.05"])
    assert slowed.outcome == SHIP and slowed.baseline_excluded == "injected slowdown EDGEGATE_INJECT_SLOWDOWN=0.05"
