"""Power sensors on the device, chosen by the profile's ``power_sensor.kind``, and a background sampler.

Every sysfs path is joined under ``settings["sysfs_root"]`` (default "/") so tests can point at a fake tree.
Standard library only (plus ``pynvml``, imported lazily, for kind "nvml").
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SKIPPED_LABELS = {"sum of shunt voltages", "nc"}
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


class PowerSensor(Protocol):
    name: str

    def read_watts(self) -> float | None: ...
    def read_energy_j(self) -> float | None: ...
    def rails(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Unavailable:
    reason: str


class _Sensor:
    """Defaults: a sensor that has no energy counter, no per-rail readings (subclasses override)."""

    name = "sensor"

    def read_watts(self) -> float | None:
        return None

    def read_energy_j(self) -> float | None:
        return None

    def rails(self) -> dict[str, float]:
        return {}


def _path(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read().strip()


def _total(rails: dict[str, float]) -> float | None:
    for name in _TOTAL_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None


class Ina3221(_Sensor):
    """Jetson INA3221 rails: JetPack 4 iio (``ina3221x``) or JetPack 5/6 hwmon (``ina3221``), all chips."""

    name = "ina3221"

    def __init__(self, root: str) -> None:
        base = _path(root, "sys/bus/i2c/drivers")
        self.iio_dirs = sorted(glob.glob(os.path.join(base, "ina3221x", "*", "iio:device*")))
        self.hwmon_dirs = sorted(glob.glob(os.path.join(base, "ina3221", "*", "hwmon", "hwmon*")))

    def rails(self) -> dict[str, float]:
        """Watts per rail; a label seen on an earlier chip gets the chip's bus address appended."""
        readings = [(os.path.basename(os.path.dirname(d)), _iio_rails(d)) for d in self.iio_dirs]
        readings += [(os.path.basename(os.path.dirname(os.path.dirname(d))), _hwmon_rails(d)) for d in self.hwmon_dirs]
        rails: dict[str, float] = {}
        for chip, channels in readings:
            for label, watts in channels:
                rails[label if label not in rails else f"{label}@{chip}"] = watts
        return rails

    def read_watts(self) -> float | None:
        return _total(self.rails())


def _iio_rails(directory: str) -> Iterator[tuple[str, float]]:
    """JetPack 4: rail_name_<n> and in_power<n>_input (mW)."""
    for name_file in sorted(glob.glob(os.path.join(directory, "rail_name_*"))):
        channel = name_file.rsplit("_", 1)[1]
        try:
            label = _read(name_file)
            milliwatts = float(_read(os.path.join(directory, f"in_power{channel}_input")))
        except (OSError, ValueError):
            continue
        yield label, milliwatts / 1e3


def _hwmon_rails(directory: str) -> Iterator[tuple[str, float]]:
    """JetPack 5/6: in<K>_label, in<K>_input (mV) and curr<K>_input (mA); the sum channel has no curr."""
    for label_file in sorted(glob.glob(os.path.join(directory, "in*_label"))):
        channel = os.path.basename(label_file)[2:-len("_label")]
        try:
            label = _read(label_file)
            if label.lower() in _SKIPPED_LABELS:
                continue
            millivolts = float(_read(os.path.join(directory, f"in{channel}_input")))
            milliamps = float(_read(os.path.join(directory, f"curr{channel}_input")))
        except (OSError, ValueError):
            continue
        yield label, millivolts * milliamps / 1e6


class Rapl(_Sensor):
    """Intel RAPL package domains (top-level ``intel-rapl:N``), cumulative energy with wraparound."""

    name = "rapl"

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self._last: dict[str, int] = {}
        self._range = {d: int(_read(os.path.join(d, "max_energy_range_uj"))) for d in domains}
        self._total_uj = 0

    def read_energy_j(self) -> float | None:
        for domain in self.domains:
            raw = int(_read(os.path.join(domain, "energy_uj")))
            last = self._last.get(domain, raw)
            self._total_uj += raw - last if raw >= last else self._range[domain] - last + raw
            self._last[domain] = raw
        return self._total_uj / 1e6


def _open_rapl(root: str) -> Rapl | Unavailable:
    pattern = re.compile(r"intel-rapl:\d+$")
    tops = sorted(d for d in glob.glob(_path(root, "sys/class/powercap/intel-rapl:*")) if pattern.search(d))
    domains = [d for d in tops if _domain_name(d).startswith("package")]
    if not domains:
        return Unavailable("no RAPL package domain under /sys/class/powercap (not an Intel/AMD x86 CPU, or powercap not loaded)")
    try:
        sensor = Rapl(domains)
        sensor.read_energy_j()
    except (OSError, ValueError) as exc:
        return Unavailable(f"RAPL energy counter unreadable ({exc}); recent kernels allow only root to read energy_uj")
    return sensor


def _domain_name(directory: str) -> str:
    try:
        return _read(os.path.join(directory, "name"))
    except OSError:
        return ""


class Nvml(_Sensor):
    """NVIDIA GPU board power through NVML: the energy counter where supported, else power samples."""

    name = "nvml"

    def __init__(self, pynvml: Any, index: int) -> None:
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.has_energy = self._energy_mj() is not None

    def _energy_mj(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def read_energy_j(self) -> float | None:
        energy = self._energy_mj() if self.has_energy else None
        return None if energy is None else energy / 1e3

    def read_watts(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3
        except self.nvml.NVMLError:
            return None


def _open_nvml(index: int) -> Nvml | Unavailable:
    try:
        import pynvml
    except ImportError as exc:
        return Unavailable(f"pynvml not installed (pip install nvidia-ml-py): {exc}")
    try:
        pynvml.nvmlInit()
        return Nvml(pynvml, index)
    except pynvml.NVMLError as exc:
        return Unavailable(f"NVML could not open GPU {index}: {exc}")


class CommandMeter(_Sensor):
    """An external meter: a command (no shell) that prints watts; the last number on stdout counts."""

    name = "command"

    def __init__(self, command: str, timeout_s: float = 5.0) -> None:
        self.argv = shlex.split(command)
        self.timeout_s = timeout_s
        self.error: str | None = None

    def read_watts(self) -> float | None:
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._fail(f"{type(exc).__name__}: {exc}")
        numbers = _NUMBER.findall(done.stdout)
        if done.returncode != 0 or not numbers:
            why = f"exited with {done.returncode}" if done.returncode else "printed no number"
            return self._fail(f"{shlex.join(self.argv)} {why}: {(done.stderr or done.stdout).strip()[-200:]}")
        self.error = None
        return float(numbers[-1])

    def _fail(self, reason: str) -> None:
        self.error = reason
        return None


def open_sensor(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    kind = settings.get("kind") or "none"
    root = settings.get("sysfs_root") or "/"
    if kind == "none":
        return Unavailable("no sensor (the device profile names none)")
    if kind == "ina3221":
        sensor = Ina3221(root)
        if sensor.read_watts() is None:
            return Unavailable("no readable INA3221 rail under /sys/bus/i2c/drivers/ina3221x or ina3221 (not a Jetson?)")
        return sensor
    if kind == "rapl":
        return _open_rapl(root)
    if kind == "nvml":
        return _open_nvml(int(settings.get("gpu_index", 0)))
    if kind == "command":
        if not settings.get("command"):
            return Unavailable("kind 'command' needs a command that prints watts")
        return CommandMeter(settings["command"])
    return Unavailable(f"unknown power sensor kind {kind!r}")


class PowerSampler:
    """Samples a sensor in a daemon thread every ``interval_s`` during a timed region (``with`` block)."""

    def __init__(self, sensor: PowerSensor, interval_s: float = 0.05) -> None:
        self.sensor = sensor
        self.interval_s = interval_s
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)
        self._energy: list[float | None] = [None, None]
        self._previous: tuple[float, float] | None = None
        self._start = 0.0
        self.elapsed_s = 0.0

    def __enter__(self) -> PowerSampler:
        self._start = time.perf_counter()
        self._energy[0] = self._safe(self.sensor.read_energy_j)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed_s = time.perf_counter() - self._start  # the region ends now, not after the last slow read
        self._stop.set()
        self._thread.join()
        # Stamped when read, not at elapsed_s: a counter read late over a stamp taken early inflates watts.
        self._sample()
        self._energy[1] = self._safe(self.sensor.read_energy_j)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = time.perf_counter() - self._start
        watts = self._safe(self.sensor.read_watts)
        if watts is None:
            watts = self._watts_from_energy(now)
        if watts is not None:
            self.samples.append([round(now, 4), round(watts, 4)])

    def _watts_from_energy(self, now: float) -> float | None:
        """Energy-only sensors (RAPL): the power over the last interval, from the counter."""
        energy = self._safe(self.sensor.read_energy_j)
        previous, self._previous = self._previous, (now, energy) if energy is not None else None
        if energy is None or previous is None or now <= previous[0]:
            return None
        return (energy - previous[1]) / (now - previous[0])

    @staticmethod
    def _safe(read: Any) -> float | None:
        try:
            return read()
        except Exception:  # noqa: BLE001 - a sensor glitch must not stop the timed run
            return None

    def summary(self, elapsed_s: float, units: int) -> dict[str, Any]:
        start, end = self._energy
        counter = start is not None and end is not None
        energy = (end - start) if counter else _trapezoid(self.samples)
        watts = [w for _, w in self.samples]
        return {
            "avg_w": energy / elapsed_s if energy is not None and elapsed_s > 0 else None,
            "peak_w": max(watts) if watts else None,
            "energy_j": energy,
            "j_per_unit": energy / units if energy is not None and units else None,
            "samples": self.samples,
            "method": "energy counter" if counter else "power samples",
        }


def _trapezoid(samples: list[list[float]]) -> float | None:
    if len(samples) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))


def idle_baseline(sensor: PowerSensor, seconds: float = 1.0) -> float | None:
    """Average watts while nothing is running, over ``seconds``."""
    with PowerSampler(sensor) as sampler:
        time.sleep(seconds)
    return sampler.summary(sampler.elapsed_s, 1)["avg_w"]
