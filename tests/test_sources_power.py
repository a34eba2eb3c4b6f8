"""No power figure without its source: a meter that fails says why, and the INA3221 total names its rails.

Hardware that cannot exist here is tested against sysfs trees laid out exactly as the real kernel does.
CI has no Jetson and no readable RAPL counter, so each test writes a fake tree under tmp_path with the
real kernel's paths, file names and units and points the sensor at it with ``sysfs_root``:

* JetPack 5/6 (Orin), the mainline ``ina3221`` hwmon driver:
  ``/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmonN/{inK_label, inK_input (mV), currK_input (mA)}``
* JetPack 4 (Nano), NVIDIA's ``ina3221x`` iio driver:
  ``/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/{rail_name_N, in_powerN_input (mW)}``
* Intel RAPL powercap: ``/sys/class/powercap/intel-rapl:0/{name, energy_uj, max_energy_range_uj}``

The external meter is a real command (``cat`` of a file holding watts): it fails the way a real meter's
command does, with an exit status and a message on stderr, when the file is gone.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgegate.runner import measure
from edgegate.runner.sensors import PowerSampler, Unavailable, idle_summary, open_sensor

HWMON = "/sys/bus/i2c/drivers/ina3221/{address}/hwmon/{hwmon}"
NANO_IIO = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"


def write_tree(root: Path, files: dict[str, object]) -> Path:
    """Write ``{"/sys/...": content}`` under ``root``, each file's content followed by a newline as sysfs does."""
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{content}\n")
    return root


def hwmon_chip(address: str, hwmon: str, rails: list[tuple[str, int, int]]) -> dict[str, object]:
    """One mainline-ina3221 chip: channels 1..3 with (label, mV, mA) and the sum channel 7 (no current)."""
    base = HWMON.format(address=address, hwmon=hwmon)
    files: dict[str, object] = {f"{base}/name": "ina3221", f"{base}/in7_label": "sum of shunt voltages",
                                f"{base}/in7_input": 1520}
    for channel, (label, millivolts, milliamps) in enumerate(rails, start=1):
        files |= {f"{base}/in{channel}_label": label, f"{base}/in{channel}_input": millivolts,
                  f"{base}/curr{channel}_input": milliamps, f"{base}/in{channel}_enable": 1}
    return files


ORIN_NANO = hwmon_chip("1-0040", "hwmon3", [("VDD_IN", 5072, 1224), ("VDD_CPU_GPU_CV", 5064, 312),
                                            ("VDD_SOC", 5064, 560)])
AGX_ORIN = hwmon_chip("1-0040", "hwmon1", [("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 400),
                                           ("VIN_SYS_5V0", 5000, 600)]) | hwmon_chip(
    "1-0041", "hwmon2", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 200), ("NC", 0, 0)])


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Until the sampler's thread has done what the test needs; generous for a loaded machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the sampler thread did not get there in time"
        time.sleep(0.01)


def meter(watts_file: Path) -> object:
    sensor = open_sensor({"kind": "command", "command": shlex.join(["cat", str(watts_file)])})
    assert not isinstance(sensor, Unavailable)
    return sensor


# --- a meter that fails ---------------------------------------------------------------------------------


def test_a_failing_meter_reaches_the_summary_and_the_power_note(tmp_path: Path) -> None:
    sensor = meter(tmp_path / "offline")  # cat exits 1: "No such file or directory"
    with PowerSampler(sensor, interval_s=0.02) as sampler:
        time.sleep(0.1)
    summary = sampler.summary(sampler.elapsed_s, 10)
    assert summary["avg_w"] is None and summary["energy_j"] is None and summary["peak_w"] is None
    assert "exited with 1" in summary["error"] and "No such file or directory" in summary["error"]
    assert summary["method"] == f"unavailable: {summary['error']}"
    assert summary["peak_error"] == summary["error"] and summary["failed_reads"] == sampler.attempts >= 2
    power_w = next(measure.power_metrics(summary, 0.01))  # the runner's own note, unchanged
    assert power_w["value"] is None and power_w["note"].startswith("unavailable: the sensor failed:")
    assert "No such file or directory" in power_w["note"]


def test_a_meter_that_fails_midway_keeps_its_figure_and_says_how_many_reads_failed(tmp_path: Path) -> None:
    watts = tmp_path / "watts"
    watts.write_text("4.5\n")
    with PowerSampler(meter(watts), interval_s=0.01) as sampler:
        wait_for(lambda: len(sampler.samples) >= 3)
        watts.unlink()
        wait_for(lambda: sampler.failed_reads >= 2)
        watts.write_text("4.5\n")
        kept = len(sampler.samples)
        wait_for(lambda: len(sampler.samples) > kept)
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["error"] is None and summary["avg_w"] == pytest.approx(4.5, rel=0.5)
    assert summary["method"].startswith(f"power samples from external meter cat {watts}; ")
    assert f"{summary['failed_reads']} failed read(s) in {sampler.attempts} sample(s)" in summary["method"]
    assert "No such file or directory" in summary["method"]


def test_a_meter_lost_before_the_end_gives_no_energy_rather_than_a_part_of_it(tmp_path: Path) -> None:
    """Samples up to the failure span only a part of the region: their energy over the region is too low."""
    watts = tmp_path / "watts"
    watts.write_text("4.5\n")
    with PowerSampler(meter(watts), interval_s=0.01) as sampler:
        wait_for(lambda: len(sampler.samples) >= 3)
        watts.unlink()
        wait_for(lambda: sampler.failed_reads >= 1)
        time.sleep(max(0.1, 2 * sampler.samples[-1][0]))  # the samples span well under 90% of the region
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["avg_w"] is None and summary["energy_j"] is None and summary["peak_w"] == 4.5
    assert summary["error"].startswith("the power samples cover only ")
    assert "; the sensor failed: " in summary["error"] and "No such file or directory" in summary["error"]


def test_idle_power_of_a_failing_meter_says_why(tmp_path: Path) -> None:
    summary = idle_summary(meter(tmp_path / "offline"), seconds=0.05)
    assert summary["avg_w"] is None and summary["method"].startswith("unavailable: the sensor failed:")


def test_a_rapl_counter_lost_during_the_run_is_unavailable_with_the_os_error(tmp_path: Path) -> None:
    rapl = "/sys/class/powercap/intel-rapl:0"
    write_tree(tmp_path, {f"{rapl}/name": "package-0", f"{rapl}/energy_uj": 1_000_000,
                          f"{rapl}/max_energy_range_uj": 262_143_328_850})
    sensor = open_sensor({"kind": "rapl", "sysfs_root": str(tmp_path)})
    assert not isinstance(sensor, Unavailable)
    with PowerSampler(sensor, interval_s=0.01) as sampler:
        (tmp_path / rapl.lstrip("/") / "energy_uj").unlink()
        time.sleep(0.05)
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["avg_w"] is None and summary["energy_j"] is None
    assert "FileNotFoundError" in summary["error"] and "energy_uj" in summary["error"]
    assert summary["source"] == "RAPL energy counter of package-0 (the CPU package, not the whole machine)"


# --- what the INA3221 total is --------------------------------------------------------------------------


def test_orin_nano_total_is_its_input_rail_and_says_so(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, ORIN_NANO))})
    assert not isinstance(sensor, Unavailable)
    assert sensor.describe() == "INA3221 rail VDD_IN (the board's input, its total power)"
    with PowerSampler(sensor, interval_s=0.01) as sampler:
        time.sleep(0.05)
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["avg_w"] == pytest.approx(5072 * 1224 / 1e6, rel=0.05)  # the last sample ends just after the region
    power_w = next(measure.power_metrics(summary, 0.01))
    assert power_w["note"].startswith("power samples from INA3221 rail VDD_IN (the board's input")


def test_nano_iio_total_is_pom_5v_in(tmp_path: Path) -> None:
    files = {f"{NANO_IIO}/rail_name_0": "POM_5V_IN", f"{NANO_IIO}/in_power0_input": 3824,
             f"{NANO_IIO}/rail_name_1": "POM_5V_GPU", f"{NANO_IIO}/in_power1_input": 80}
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, files))})
    assert not isinstance(sensor, Unavailable)
    assert sensor.read_watts() == 3.824 and "rail POM_5V_IN (the board's input" in sensor.describe()


def test_agx_orin_without_an_input_rail_names_the_rails_it_sums_and_says_it_is_no_total(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, AGX_ORIN))})
    assert not isinstance(sensor, Unavailable)
    assert sensor.read_watts() == pytest.approx(11.0)
    assert sensor.describe() == ("INA3221 sum of rails VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 + VDDQ_VDD2_1V8AO: "
                                 "this board has no input rail (VDD_IN or POM_5V_IN), so this is not its total power")


def test_an_input_rail_lost_after_open_is_no_figure_rather_than_a_sum_of_sub_rails(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, ORIN_NANO))})
    assert not isinstance(sensor, Unavailable)
    (tmp_path / HWMON.format(address="1-0040", hwmon="hwmon3").lstrip("/") / "curr1_input").unlink()
    assert sensor.read_watts() is None  # not VDD_CPU_GPU_CV + VDD_SOC
    assert sensor.error == "INA3221 rail VDD_IN unreadable"
    assert sensor.describe().startswith("INA3221 rail VDD_IN")


def test_a_summed_rail_lost_after_open_is_no_figure_rather_than_a_smaller_sum(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, AGX_ORIN))})
    assert not isinstance(sensor, Unavailable)
    (tmp_path / HWMON.format(address="1-0041", hwmon="hwmon2").lstrip("/") / "in2_input").unlink()
    with PowerSampler(sensor, interval_s=0.01) as sampler:
        time.sleep(0.05)
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["avg_w"] is None and "INA3221 rail VDDQ_VDD2_1V8AO unreadable" in summary["error"]
