"""Power sensors, the power sampler and thermal snapshots of the device runner.

Hardware that cannot exist here is tested against sysfs trees laid out exactly as the real kernel does.
CI has no Jetson, no readable RAPL counter and no GPU, so each test writes a fake tree under tmp_path that
copies the real kernel's paths, file names and units, and points the sensor at it with ``sysfs_root``:

* JetPack 4 (Jetson Nano, L4T R32), NVIDIA's ``ina3221x`` iio driver:
  ``/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/{rail_name_N, in_powerN_input (mW), in_currentN_input (mA),
  in_voltageN_input (mV)}``
* JetPack 5/6 (Orin), the mainline ``ina3221`` hwmon driver:
  ``/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmonN/{inK_label, inK_input (mV), currK_input (mA)}`` for K = 1..3,
  ``in4..6_input`` shunt voltages without labels, and ``in7_label`` = "sum of shunt voltages"
* Intel RAPL powercap: ``/sys/class/powercap/intel-rapl:N/{name, energy_uj, max_energy_range_uj}`` with
  subdomains ``intel-rapl:N:M``, the ``intel-rapl`` control type and the ``intel-rapl-mmio:0`` twin beside them
* thermal: ``/sys/class/thermal/thermal_zoneN/{type, temp (m°C), trip_point_N_temp, trip_point_N_type}``
* cpufreq: ``/sys/devices/system/cpu/cpuN/cpufreq/{scaling_cur_freq (kHz), scaling_max_freq, scaling_governor}``
"""

from __future__ import annotations

import ast
import os
import shlex
import sys
import time
import types
from pathlib import Path

import pytest

from edgegate.runner import sensors, thermal
from edgegate.runner.sensors import PowerSampler, Unavailable, idle_baseline, open_sensor

RUNNER = Path(sensors.__file__).parent


def write_tree(root: Path, files: dict[str, object]) -> Path:
    """Write ``{"/sys/...": content}`` under ``root``, each file's content followed by a newline as sysfs does."""
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{content}\n")
    return root


# --- Jetson INA3221 -------------------------------------------------------------------------------------

NANO_IIO = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
NANO_FILES = {
    f"{NANO_IIO}/name": "ina3221x",
    f"{NANO_IIO}/rail_name_0": "POM_5V_IN", f"{NANO_IIO}/in_power0_input": 3824,
    f"{NANO_IIO}/in_current0_input": 776, f"{NANO_IIO}/in_voltage0_input": 4928,
    f"{NANO_IIO}/rail_name_1": "POM_5V_GPU", f"{NANO_IIO}/in_power1_input": 80,
    f"{NANO_IIO}/in_current1_input": 16, f"{NANO_IIO}/in_voltage1_input": 4984,
    f"{NANO_IIO}/rail_name_2": "POM_5V_CPU", f"{NANO_IIO}/in_power2_input": 1196,
    f"{NANO_IIO}/in_current2_input": 240, f"{NANO_IIO}/in_voltage2_input": 4976,
    f"{NANO_IIO}/crit_current_limit_0": 3200, f"{NANO_IIO}/warn_current_limit_0": 2600,
}


def hwmon_chip(address: str, hwmon: str, rails: list[tuple[str, int, int]]) -> dict[str, object]:
    """One mainline-ina3221 chip: channels 1..3 with (label, mV, mA), shunt channels 4..6, the sum channel 7."""
    base = f"/sys/bus/i2c/drivers/ina3221/{address}/hwmon/{hwmon}"
    files: dict[str, object] = {f"{base}/name": "ina3221", f"{base}/in7_label": "sum of shunt voltages",
                                f"{base}/in7_input": 1520, f"{base}/curr4_input": 2096}
    for channel, (label, millivolts, milliamps) in enumerate(rails, start=1):
        files |= {f"{base}/in{channel}_label": label, f"{base}/in{channel}_input": millivolts,
                  f"{base}/curr{channel}_input": milliamps, f"{base}/in{channel}_enable": 1,
                  f"{base}/in{channel + 3}_input": milliamps * 5, f"{base}/shunt{channel}_resistor": 5000}
    return files


def test_jetpack4_nano_iio_total_is_pom_5v_in_and_rails_are_parsed(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, NANO_FILES))})
    assert not isinstance(sensor, Unavailable)
    assert sensor.rails() == {"POM_5V_IN": 3.824, "POM_5V_GPU": 0.080, "POM_5V_CPU": 1.196}
    assert sensor.read_watts() == 3.824
    assert sensor.read_energy_j() is None


def test_jetpack5_orin_nano_hwmon_total_is_vdd_in_from_millivolts_times_milliamps(tmp_path: Path) -> None:
    chip = hwmon_chip("1-0040", "hwmon3", [("VDD_IN", 5072, 1224), ("VDD_CPU_GPU_CV", 5064, 312), ("VDD_SOC", 5064, 560)])
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, chip))})
    assert not isinstance(sensor, Unavailable)
    rails = sensor.rails()
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # "sum of shunt voltages" is skipped
    assert rails["VDD_IN"] == pytest.approx(5072 * 1224 / 1e6)
    assert sensor.read_watts() == pytest.approx(6.208128)


def test_agx_orin_two_chips_without_vdd_in_sum_their_rails_and_skip_nc(tmp_path: Path) -> None:
    first = hwmon_chip("1-0040", "hwmon1", [("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 400), ("VIN_SYS_5V0", 5000, 600)])
    second = hwmon_chip("1-0041", "hwmon2", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 200), ("NC", 0, 0)])
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(write_tree(tmp_path, first | second))})
    assert not isinstance(sensor, Unavailable)
    assert set(sensor.rails()) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert sensor.read_watts() == pytest.approx(5.0 + 2.0 + 3.0 + 1.0)


def test_ina3221_absent_is_unavailable(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "ina3221", "sysfs_root": str(tmp_path)})
    assert isinstance(sensor, Unavailable) and "INA3221" in sensor.reason


# --- Intel RAPL -----------------------------------------------------------------------------------------

RAPL = "/sys/class/powercap"


def rapl_tree(root: Path, energy_uj: int, max_range_uj: int = 10_000_000) -> Path:
    return write_tree(root, {
        f"{RAPL}/intel-rapl/enabled": 1,
        f"{RAPL}/intel-rapl:0/name": "package-0",
        f"{RAPL}/intel-rapl:0/energy_uj": energy_uj,
        f"{RAPL}/intel-rapl:0/max_energy_range_uj": max_range_uj,
        f"{RAPL}/intel-rapl:0:0/name": "core", f"{RAPL}/intel-rapl:0:0/energy_uj": 7,
        f"{RAPL}/intel-rapl:0:0/max_energy_range_uj": max_range_uj,
        f"{RAPL}/intel-rapl:1/name": "psys", f"{RAPL}/intel-rapl:1/energy_uj": 9,
        f"{RAPL}/intel-rapl:1/max_energy_range_uj": max_range_uj,
        f"{RAPL}/intel-rapl-mmio:0/name": "package-0", f"{RAPL}/intel-rapl-mmio:0/energy_uj": 11,
        f"{RAPL}/intel-rapl-mmio:0/max_energy_range_uj": max_range_uj,
    })


def test_rapl_energy_difference_handles_wraparound(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "rapl", "sysfs_root": str(rapl_tree(tmp_path, 1_000_000))})
    assert not isinstance(sensor, Unavailable)
    assert sensor.domains == [str(tmp_path / "sys/class/powercap/intel-rapl:0")]  # not :0:0, psys nor mmio
    energy_file = tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj"
    start = sensor.read_energy_j()
    energy_file.write_text("9000000\n")
    assert sensor.read_energy_j() - start == pytest.approx(8.0)
    energy_file.write_text("500000\n")  # the counter wrapped at max_energy_range_uj = 10 J
    assert sensor.read_energy_j() - start == pytest.approx(8.0 + 1.5)
    assert sensor.read_watts() is None and sensor.rails() == {}


def test_rapl_sums_every_package(tmp_path: Path) -> None:
    rapl_tree(tmp_path, 0)
    write_tree(tmp_path, {f"{RAPL}/intel-rapl:2/name": "package-1", f"{RAPL}/intel-rapl:2/energy_uj": 0,
                          f"{RAPL}/intel-rapl:2/max_energy_range_uj": 10_000_000})
    sensor = open_sensor({"kind": "rapl", "sysfs_root": str(tmp_path)})
    assert not isinstance(sensor, Unavailable)
    write_tree(tmp_path, {f"{RAPL}/intel-rapl:0/energy_uj": 2_000_000, f"{RAPL}/intel-rapl:2/energy_uj": 3_000_000})
    assert sensor.read_energy_j() == pytest.approx(5.0)


def test_rapl_unreadable_counter_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    # Tests run as root, for whom chmod 000 blocks nothing; a missing energy_uj fails the same read.
    rapl_tree(tmp_path, 0)
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").unlink()
    sensor = open_sensor({"kind": "rapl", "sysfs_root": str(tmp_path)})
    assert isinstance(sensor, Unavailable)
    assert "RAPL energy counter unreadable" in sensor.reason and "energy_uj" in sensor.reason


def test_rapl_absent_is_unavailable(tmp_path: Path) -> None:
    sensor = open_sensor({"kind": "rapl", "sysfs_root": str(tmp_path)})
    assert isinstance(sensor, Unavailable) and "RAPL" in sensor.reason


# --- external meter, none, NVML -------------------------------------------------------------------------


def test_command_sensor_reads_the_last_number_printed() -> None:
    command = shlex.join([sys.executable, "-c", "print('meter 1: 12.0 V, 4.5')"])
    sensor = open_sensor({"kind": "command", "command": command})
    assert not isinstance(sensor, Unavailable)
    assert sensor.read_watts() == 4.5 and sensor.error is None


def test_failing_command_reads_none_and_keeps_the_reason() -> None:
    command = shlex.join([sys.executable, "-c", "import sys; sys.exit('meter offline')"])
    sensor = open_sensor({"kind": "command", "command": command})
    assert not isinstance(sensor, Unavailable)
    assert sensor.read_watts() is None
    assert "exited with 1" in sensor.error and "meter offline" in sensor.error
    missing = open_sensor({"kind": "command", "command": "/nonexistent/meter --watts"})
    assert missing.read_watts() is None and "FileNotFoundError" in missing.error


def test_none_is_unavailable_with_the_reason() -> None:
    sensor = open_sensor({"kind": "none"})
    assert isinstance(sensor, Unavailable) and sensor.reason == "no sensor (the device profile names none)"
    assert isinstance(open_sensor({}), Unavailable)


def test_nvml_without_pynvml_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` raise ImportError
    sensor = open_sensor({"kind": "nvml"})
    assert isinstance(sensor, Unavailable) and "pynvml" in sensor.reason


def fake_pynvml(energy_supported: bool) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def energy(handle: object) -> int:
        if not energy_supported:
            raise NVMLError("Not Supported")
        return 123_456  # mJ

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"
    module.nvmlDeviceGetTotalEnergyConsumption = energy
    module.nvmlDeviceGetPowerUsage = lambda handle: 71_500  # mW
    return module


@pytest.mark.parametrize("energy_supported", [True, False])
def test_nvml_energy_counter_where_supported_else_power(monkeypatch: pytest.MonkeyPatch, energy_supported: bool) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_supported))
    sensor = open_sensor({"kind": "nvml", "gpu_index": 1})
    assert not isinstance(sensor, Unavailable) and sensor.handle == "gpu1"
    assert sensor.read_watts() == 71.5
    assert sensor.read_energy_j() == (123.456 if energy_supported else None)


def test_nvml_on_a_real_gpu() -> None:
    if not os.path.exists("/dev/nvidiactl"):
        pytest.skip("no NVIDIA GPU on this machine")
    pytest.importorskip("pynvml", reason="pynvml (nvidia-ml-py) not installed")
    sensor = open_sensor({"kind": "nvml"})
    assert not isinstance(sensor, Unavailable), sensor
    assert sensor.read_watts() > 0
    with PowerSampler(sensor, interval_s=0.02) as sampler:
        time.sleep(0.3)
    summary = sampler.summary(sampler.elapsed_s, 1)
    assert summary["energy_j"] > 0 and summary["peak_w"] > 0


# --- the sampler ----------------------------------------------------------------------------------------


class Ramp:
    """Watts rising linearly from ``base`` at ``slope`` W/s since creation; optionally only an energy counter."""

    name = "ramp"

    def __init__(self, base: float, slope: float, watts: bool = True, energy: bool = False) -> None:
        self.base, self.slope, self.watts, self.energy = base, slope, watts, energy
        self.start = time.perf_counter()

    def _t(self) -> float:
        return time.perf_counter() - self.start

    def read_watts(self) -> float | None:
        return self.base + self.slope * self._t() if self.watts else None

    def read_energy_j(self) -> float | None:
        t = self._t()
        return self.base * t + self.slope * t * t / 2 if self.energy else None

    def rails(self) -> dict[str, float]:
        return {}

    def integral(self, t0: float, t1: float) -> float:
        return self.base * (t1 - t0) + self.slope * (t1 * t1 - t0 * t0) / 2


@pytest.mark.parametrize(("watts", "energy", "method"), [
    (True, False, "power samples"), (True, True, "energy counter"), (False, True, "energy counter"),
])
def test_sampler_energy_average_and_peak_of_a_linear_ramp(watts: bool, energy: bool, method: str) -> None:
    sensor = Ramp(10.0, 20.0, watts=watts, energy=energy)
    with PowerSampler(sensor, interval_s=0.01) as sampler:
        t0 = sensor._t()
        time.sleep(0.3)
        t1 = sensor._t()
    summary = sampler.summary(sampler.elapsed_s, units=30)
    expected = sensor.integral(t0, t1)
    assert summary["method"] == method
    assert summary["energy_j"] == pytest.approx(expected, rel=0.1)
    assert summary["avg_w"] == pytest.approx(expected / (t1 - t0), rel=0.1)
    assert summary["j_per_unit"] == pytest.approx(summary["energy_j"] / 30)
    # The last sample is taken after the region ends (later still on a loaded machine): the peak is the
    # ramp's value at that sample's time, whichever way the sampler got it.
    last_sample_t = sampler._start - sensor.start + summary["samples"][-1][0]
    assert summary["peak_w"] == pytest.approx(10.0 + 20.0 * last_sample_t, rel=0.1)
    assert len(summary["samples"]) >= 5 and all(len(pair) == 2 for pair in summary["samples"])


def test_idle_baseline_of_a_steady_sensor() -> None:
    assert idle_baseline(Ramp(3.0, 0.0), seconds=0.2) == pytest.approx(3.0, rel=0.01)
    assert idle_baseline(Ramp(3.0, 0.0, watts=False), seconds=0.1) is None


# --- thermal --------------------------------------------------------------------------------------------


def thermal_tree(root: Path, cpu_temp_mc: int, cur_khz: list[int], governors: list[str]) -> Path:
    zone0, zone1 = "/sys/class/thermal/thermal_zone0", "/sys/class/thermal/thermal_zone1"
    files: dict[str, object] = {
        f"{zone0}/type": "cpu-thermal", f"{zone0}/temp": cpu_temp_mc,
        f"{zone0}/trip_point_0_temp": 95000, f"{zone0}/trip_point_0_type": "passive",
        f"{zone0}/trip_point_1_temp": 60000, f"{zone0}/trip_point_1_type": "active",
        f"{zone0}/trip_point_2_temp": 105000, f"{zone0}/trip_point_2_type": "critical",
        f"{zone1}/type": "gpu-thermal", f"{zone1}/temp": 48500,
        f"{zone1}/trip_point_0_temp": 99000, f"{zone1}/trip_point_0_type": "hot",
        "/sys/devices/system/cpu/cpuidle/current_driver": "psci_idle",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor": governors[0],
    }
    for cpu, (khz, governor) in enumerate(zip(cur_khz, governors)):
        base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
        files |= {f"{base}/scaling_cur_freq": khz, f"{base}/scaling_max_freq": 1_479_000, f"{base}/scaling_governor": governor}
    return write_tree(root, files)


def test_thermal_snapshot_reads_zones_trips_and_cpufreq(tmp_path: Path) -> None:
    snap = thermal.snapshot(str(thermal_tree(tmp_path, 45_000, [1_479_000, 1_479_000], ["schedutil", "performance"])))
    assert snap["zones"] == {"cpu-thermal": 45.0, "gpu-thermal": 48.5}
    assert snap["trips"]["cpu-thermal"] == [{"type": "passive", "temp_c": 95.0}, {"type": "critical", "temp_c": 105.0}]
    assert snap["cpufreq"] == {
        "cpu0": {"cur_khz": 1_479_000, "max_khz": 1_479_000, "governor": "schedutil"},
        "cpu1": {"cur_khz": 1_479_000, "max_khz": 1_479_000, "governor": "performance"},
    }


def test_thermal_warnings_trip_crossed_clock_drop_and_governor_note(tmp_path: Path) -> None:
    governors = ["schedutil", "schedutil", "performance", "performance"]
    before = thermal.snapshot(str(thermal_tree(tmp_path / "a", 45_000, [1_479_000] * 4, governors)))
    after = thermal.snapshot(str(thermal_tree(tmp_path / "b", 96_000, [1_036_800, 1_036_800, 1_479_000, 1_400_000], governors)))
    found = thermal.warnings(before, after)
    assert len(found) == 3, found
    trip, drop, note = found
    assert "cpu-thermal" in trip and "passive trip point (95.0 °C)" in trip and "96.0 °C" in trip and "45.0 °C before" in trip
    assert "cpu0, cpu1" in drop and "30%" in drop and "1479 -> 1037 MHz" in drop and "'schedutil'" in drop
    assert note.startswith("note:") and "'schedutil'" in note and "cpu0, cpu1" in note and "cpu2" not in note


def test_thermal_during_max_counts_and_a_changed_governor_is_no_drop(tmp_path: Path) -> None:
    before = thermal.snapshot(str(thermal_tree(tmp_path / "a", 45_000, [1_479_000], ["performance"])))
    after = thermal.snapshot(str(thermal_tree(tmp_path / "b", 50_000, [600_000], ["powersave"])))
    found = thermal.warnings(before, after, during_max={"gpu-thermal": 99.5})
    assert len(found) == 2, found
    assert "gpu-thermal reached its hot trip point (99.0 °C) at 99.5 °C" in found[0]
    assert found[1].startswith("note:") and "'powersave'" in found[1]


def test_missing_or_unreadable_sysfs_gives_empty_fields_and_no_warnings(tmp_path: Path) -> None:
    empty = thermal.snapshot(str(tmp_path / "nothing"))
    assert empty == {"zones": {}, "trips": {}, "cpufreq": {}}
    assert thermal.warnings(empty, empty, None) == []
    write_tree(tmp_path, {"/sys/class/thermal/thermal_zone0/type": "soc-thermal"})
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").mkdir()  # a read that fails with an OSError
    (tmp_path / "sys/devices/system/cpu/cpu0/cpufreq").mkdir(parents=True)
    assert thermal.snapshot(str(tmp_path)) == {"zones": {}, "trips": {}, "cpufreq": {}}


# --- what the runner may import -------------------------------------------------------------------------


def test_sensor_and_thermal_modules_import_only_what_a_device_has() -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "psutil", "pynvml"}
    for source in (RUNNER / "sensors.py", RUNNER / "thermal.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or (node.level == 0 and node.module.split(".")[0] in allowed), (source, node.module)
            elif isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] in allowed for alias in node.names), source
