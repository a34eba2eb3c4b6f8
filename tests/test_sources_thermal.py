"""The thermal check's hottest reading during the run comes from a sampler that ran during it.

Hardware that cannot exist here is tested against sysfs trees laid out exactly as the real kernel does:
each test writes ``/sys/class/thermal/thermal_zoneN/{type, temp (m°C), trip_point_N_temp,
trip_point_N_type}`` under tmp_path and points the sampler at it with ``sysfs_root``, then raises and
lowers the ``temp`` file as a zone heating and cooling during a run would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgegate.runner import thermal

ZONE0 = "sys/class/thermal/thermal_zone0"
ZONE1 = "sys/class/thermal/thermal_zone1"


def write_tree(root: Path, files: dict[str, object]) -> Path:
    """Write ``{"sys/...": content}`` under ``root``, each file's content followed by a newline as sysfs does."""
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{content}\n")
    return root


def zones(root: Path, cpu_mc: int) -> Path:
    return write_tree(root, {
        f"{ZONE0}/type": "cpu-thermal", f"{ZONE0}/temp": cpu_mc,
        f"{ZONE0}/trip_point_0_temp": 95000, f"{ZONE0}/trip_point_0_type": "passive",
        f"{ZONE0}/trip_point_1_temp": 105000, f"{ZONE0}/trip_point_1_type": "critical",
        f"{ZONE1}/type": "cpu-thermal", f"{ZONE1}/temp": 41000,  # a second zone of the same type
    })


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Until the sampler's thread has read what the test wrote; generous for a loaded machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the sampler thread did not read the zone in time"
        time.sleep(0.01)


def test_a_trip_point_reached_and_left_during_the_run_is_named(tmp_path: Path) -> None:
    root = zones(tmp_path, 45_000)
    temp = root / ZONE0 / "temp"
    before = thermal.snapshot(str(root))
    with thermal.PeakSampler(str(root), interval_s=0.02) as sampler:
        temp.write_text("97000\n")  # the run heats the CPU past its passive trip point ...
        wait_for(lambda: sampler.peaks().get("cpu-thermal", 0.0) >= 97.0)
        temp.write_text("50000\n")  # ... and it cools before the run ends
        wait_for(lambda: sampler.readings >= 4)
    after = thermal.snapshot(str(root))
    assert [w for w in thermal.warnings(before, after) if "trip point" in w] == []  # the snapshots miss it
    found = thermal.warnings(before, after, sampler.peaks())
    assert len(found) == 1, found
    assert found[0].startswith("thermal zone cpu-thermal reached its passive trip point (95.0 °C) at 97.0 °C")
    assert "45.0 °C before the run and 50.0 °C after it (the peak was read during the run)" in found[0]
    assert sampler.peaks() == {"cpu-thermal": 97.0, "cpu-thermal.1": 41.0}


def test_the_sampler_names_zones_as_the_snapshot_does_and_reads_at_start_and_stop(tmp_path: Path) -> None:
    root = zones(tmp_path, 45_000)
    sampler = thermal.PeakSampler(str(root), interval_s=60.0).start()  # no tick of its own in this test
    assert sampler.readings == 1 and sampler.peaks() == {"cpu-thermal": 45.0, "cpu-thermal.1": 41.0}
    (root / ZONE1 / "temp").write_text("99000\n")
    assert sampler.stop() == {"cpu-thermal": 45.0, "cpu-thermal.1": 99.0}  # read once more at the end
    assert set(sampler.peaks()) == set(thermal.snapshot(str(root))["zones"])


def test_no_thermal_zones_gives_no_peaks_and_no_trip_warning(tmp_path: Path) -> None:
    with thermal.PeakSampler(str(tmp_path / "nothing"), interval_s=0.01) as sampler:
        wait_for(lambda: sampler.readings >= 2)
    empty = thermal.snapshot(str(tmp_path / "nothing"))
    assert sampler.peaks() == {} and thermal.warnings(empty, empty, sampler.peaks()) == []


def test_an_unreadable_temp_is_skipped_not_read_as_zero(tmp_path: Path) -> None:
    root = zones(tmp_path, 45_000)
    (root / ZONE1 / "temp").write_text("\n")  # a temp that reads as no number (a driver in trouble)
    sampler = thermal.PeakSampler(str(root), interval_s=60.0).start()
    assert sampler.stop() == {"cpu-thermal": 45.0}
