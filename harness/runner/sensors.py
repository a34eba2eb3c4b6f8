"""Power sensors on the device, chosen by the profile's ``power_sensor.kind``, and a background sampler.

Every sysfs path is joined under ``settings["sysfs_root"]`` (default "/") so tests can point at a fake tree.
Standard library only (plus ``pynvml``, imported lazily, for kind "nvml").

Other kinds come from installed distributions, entry point group ``edgegate.sensors``: a callable
taking the sensor settings (the profile's ``power_sensor`` mapping, with ``sysfs_root``) and
returning a sensor (``read_watts`` and ``read_energy_j``; ``PowerSensor`` says what else it may
have) or ``Unavailable`` (or any object with a ``reason``: on a device a plugin cannot import
this module by its name). EdgeGate registers its own kinds there too, but opens them from
``OPENERS``: the runner ships to a device without an installed edgegate. A sensor plugin that is
missing or broken gives no figure, only the reason, one line naming its distribution.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .entrypoints import SENSORS as GROUP
from .entrypoints import BrokenPlugin, is_callable, one_line, plugins

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SKIPPED_LABELS = {"sum of shunt voltages", "nc"}
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
COVERAGE = 0.9  # the share of a timed region that power samples must span for an energy from them


class PowerSensor(Protocol):
    """What the sampler reads. Sensors may also have ``error`` (why the last read gave nothing) and
    ``describe()`` (what the figure measures); the sampler reads both with getattr, so they are optional."""

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
    error: str | None = None  # why the last read gave nothing; None when it gave a figure

    def describe(self) -> str:
        """What the figure measures, for the metric's note."""
        return self.name

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


def _chosen_rails(rails: dict[str, float]) -> tuple[tuple[str, ...], str]:
    """The board's input rail where it has one; else every rail, saying it is not the board's total."""
    for name in _TOTAL_RAILS:
        if name in rails:
            return (name,), f"INA3221 rail {name} (the board's input, its total power)"
    if not rails:
        return (), "no readable INA3221 rail"
    return tuple(rails), (f"INA3221 sum of rails {' + '.join(rails)}: this board has no input rail "
                          f"({' or '.join(_TOTAL_RAILS)}), so this is not its total power")


def _total(rails: dict[str, float], summed: tuple[str, ...]) -> tuple[float | None, str | None]:
    """The watts of the rails chosen at open, or None and why: a rail missing from one read must not
    silently turn the board's input into a sum of sub-rails, nor drop a term from the sum."""
    missing = [name for name in summed if name not in rails]
    if missing:
        return None, f"INA3221 rail {', '.join(missing)} unreadable"
    if not summed:
        return None, "no readable INA3221 rail"
    return sum(rails[name] for name in summed), None


class Ina3221(_Sensor):
    """Jetson INA3221 rails: JetPack 4 iio (``ina3221x``) or JetPack 5/6 hwmon (``ina3221``), all chips."""

    name = "ina3221"

    def __init__(self, root: str) -> None:
        base = _path(root, "sys/bus/i2c/drivers")
        self.iio_dirs = sorted(glob.glob(os.path.join(base, "ina3221x", "*", "iio:device*")))
        self.hwmon_dirs = sorted(glob.glob(os.path.join(base, "ina3221", "*", "hwmon", "hwmon*")))
        self.summed, self.source = _chosen_rails(self.rails())

    def describe(self) -> str:
        """Which rails the figure is, chosen when the sensor was opened."""
        return self.source

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
        watts, self.error = _total(self.rails(), self.summed)
        return watts


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


def _open_ina3221(root: str) -> Ina3221 | Unavailable:
    sensor = Ina3221(root)
    if not sensor.summed:
        return Unavailable("no readable INA3221 rail under /sys/bus/i2c/drivers/ina3221x or ina3221 (not a Jetson?)")
    if sensor.read_watts() is None:
        return Unavailable(f"{sensor.error} right after it was found")
    return sensor


class Rapl(_Sensor):
    """Intel RAPL package domains (top-level ``intel-rapl:N``), cumulative energy with wraparound."""

    name = "rapl"

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self._last: dict[str, int] = {}
        self._range = {d: int(_read(os.path.join(d, "max_energy_range_uj"))) for d in domains}
        self._total_uj = 0

    def describe(self) -> str:
        names = ", ".join(_domain_name(d) or os.path.basename(d) for d in self.domains)
        return f"RAPL energy counter of {names} (the CPU package, not the whole machine)"

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
        self.index = index
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.has_energy = self._energy_mj() is not None

    def describe(self) -> str:
        return f"NVML board power of GPU {self.index} (the GPU board only)"

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
            watts = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3
        except self.nvml.NVMLError as exc:
            self.error = f"NVML power reading of GPU {self.index} failed: {exc}"
            return None
        self.error = None
        return watts


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

    def describe(self) -> str:
        return f"external meter {shlex.join(self.argv)}"

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


def open_none(settings: dict[str, Any]) -> Unavailable:
    return Unavailable("no sensor (the device profile names none)")


def open_ina3221(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    return _open_ina3221(settings.get("sysfs_root") or "/")


def open_rapl(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    return _open_rapl(settings.get("sysfs_root") or "/")


def open_nvml(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    return _open_nvml(int(settings.get("gpu_index", 0)))


def open_command(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    if not settings.get("command"):
        return Unavailable("kind 'command' needs a command that prints watts")
    return CommandMeter(settings["command"])


Opener = Callable[[dict[str, Any]], "PowerSensor | Unavailable"]
OPENERS: dict[str, Opener] = {"none": open_none, "ina3221": open_ina3221, "rapl": open_rapl, "nvml": open_nvml,
                              "command": open_command}


def open_sensor(settings: dict[str, Any]) -> PowerSensor | Unavailable:
    kind = settings.get("kind") or "none"
    if kind in OPENERS:
        return OPENERS[kind](settings)
    plugin = plugins(GROUP).get(kind)
    if plugin is None:
        return Unavailable(f"unknown power sensor kind {kind!r}: not built in ({', '.join(OPENERS)}) and no "
                           f"installed distribution of this Python registers it under {GROUP}")
    try:
        sensor = plugin.load(is_callable("a callable taking the sensor settings"))(settings)
    except BrokenPlugin as exc:
        return Unavailable(str(exc))
    except Exception as exc:  # noqa: BLE001 - someone else's sensor: no figure, the reason
        return Unavailable(f"{plugin.describe()} could not open the sensor: {one_line(exc)}")
    if isinstance(sensor, Unavailable) or all(callable(getattr(sensor, n, None)) for n in ("read_watts", "read_energy_j")):
        return sensor
    if isinstance(getattr(sensor, "reason", None), str):  # its own Unavailable: on a device it cannot import ours by name
        return Unavailable(f"{sensor.reason} ({plugin.describe()})")
    return Unavailable(f"{plugin.describe()} returned a {type(sensor).__name__}, not a sensor (read_watts, "
                       f"read_energy_j) or Unavailable")


class PowerSampler:
    """Samples a sensor in a daemon thread every ``interval_s`` during a timed region (``with`` block).

    A read that fails is counted with its reason, never dropped: a figure that could not be had says
    why (``summary()["error"]``), and one made despite failed reads says how many failed.
    """

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
        self.attempts = 0  # samples tried
        self.failed_reads = 0
        self.last_failure: str | None = None

    def __enter__(self) -> PowerSampler:
        self._start = time.perf_counter()
        self._energy[0] = self._read(self.sensor.read_energy_j)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed_s = time.perf_counter() - self._start  # the region ends now, not after the last slow read
        self._stop.set()
        self._thread.join()
        # Stamped when read, not at elapsed_s: a counter read late over a stamp taken early inflates watts.
        self._sample()
        self._energy[1] = self._read(self.sensor.read_energy_j)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = time.perf_counter() - self._start
        self.attempts += 1
        watts = self._read(self.sensor.read_watts, sensor_error=True)
        if watts is None:
            watts = self._watts_from_energy(now)
        if watts is not None:
            self.samples.append([round(now, 4), round(watts, 4)])

    def _watts_from_energy(self, now: float) -> float | None:
        """Energy-only sensors (RAPL): the power over the last interval, from the counter."""
        energy = self._read(self.sensor.read_energy_j)
        previous, self._previous = self._previous, (now, energy) if energy is not None else None
        if energy is None or previous is None or now <= previous[0]:
            return None
        return (energy - previous[1]) / (now - previous[0])

    def _read(self, read: Any, sensor_error: bool = False) -> float | None:
        """One read; a glitch must not stop the timed run, but its reason is kept. A None is a failure
        only where the sensor says why (``error``): a sensor without an energy counter reads None there."""
        try:
            value = read()
        except Exception as exc:  # noqa: BLE001 - counted and reported in the summary instead
            return self._fail(f"{type(exc).__name__}: {exc}")
        reason = getattr(self.sensor, "error", None) if value is None and sensor_error else None
        return self._fail(str(reason)) if reason else value

    def _fail(self, reason: str) -> None:
        self.failed_reads += 1
        self.last_failure = reason[:300]

    def _failure_text(self) -> str:
        return f"{self.failed_reads} failed read(s) in {self.attempts} sample(s), the last: {self.last_failure}"

    def summary(self, elapsed_s: float, units: int) -> dict[str, Any]:
        """The region's figures; ``error``/``peak_error`` say why a figure is None, ``method`` says how
        each was had ("unavailable: <why>" when there is none), ready for the metric's note."""
        start, end = self._energy
        counter = start is not None and end is not None
        energy = (end - start) if counter else self._sampled_energy(elapsed_s)
        average = energy / elapsed_s if energy is not None and elapsed_s > 0 else None
        error = None if average is not None else self._why_none(elapsed_s)
        watts = [w for _, w in self.samples]
        return {
            "avg_w": average,
            "peak_w": max(watts) if watts else None,
            "energy_j": energy,
            "j_per_unit": energy / units if energy is not None and units else None,
            "samples": self.samples,
            "method": f"unavailable: {error}" if error else self._method(counter),
            "error": error,
            "peak_error": None if watts else self._why_no_sample(),
            "source": _description(self.sensor),
            "failed_reads": self.failed_reads,
        }

    def _span(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0

    def _sampled_energy(self, elapsed_s: float) -> float | None:
        """The samples' integral, only where they span the region: samples lost at one end (a meter
        that failed) would integrate a part of it, and that energy over the whole region is too low."""
        if self._span() < COVERAGE * elapsed_s:
            return None
        return _trapezoid(self.samples)

    def _method(self, counter: bool) -> str:
        how = "energy counter" if counter else "power samples"
        source = _description(self.sensor)
        how = f"{how} from {source}" if source else how
        return f"{how}; {self._failure_text()}" if self.failed_reads else how

    def _why_none(self, elapsed_s: float) -> str:
        if len(self.samples) > 1 and self._span() < COVERAGE * elapsed_s:
            failed = f"; the sensor failed: {self._failure_text()}" if self.failed_reads else ""
            return f"the power samples cover only {self._span():.3f} s of the {elapsed_s:.3f} s region{failed}"
        if self.failed_reads:
            return f"the sensor failed: {self._failure_text()}"
        if elapsed_s <= 0:
            return "the timed region took no measurable time"
        if not self.samples:
            return "the sensor gave no power reading and has no energy counter"
        return (f"only {len(self.samples)} power sample in {elapsed_s:.3f} s and no energy counter: "
                "at least 2 are needed to integrate the energy")

    def _why_no_sample(self) -> str:
        if self.failed_reads:
            return f"the sensor failed: {self._failure_text()}"
        return "the sensor gave no power reading"


def _description(sensor: PowerSensor) -> str | None:
    """The sensor's own words for what it measures, where it has them."""
    describe = getattr(sensor, "describe", None)
    try:
        return str(describe()) if callable(describe) else None
    except Exception:  # noqa: BLE001 - a description is not worth failing a measurement
        return None


def _trapezoid(samples: list[list[float]]) -> float | None:
    if len(samples) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))


def idle_summary(sensor: PowerSensor, seconds: float = 1.0) -> dict[str, Any]:
    """The sampler's summary while nothing is running, over ``seconds``: its method says why when there is no figure."""
    with PowerSampler(sensor) as sampler:
        time.sleep(seconds)
    return sampler.summary(sampler.elapsed_s, 1)


def idle_baseline(sensor: PowerSensor, seconds: float = 1.0) -> float | None:
    """Average watts while nothing is running, over ``seconds`` (``idle_summary`` says why it is None)."""
    return idle_summary(sensor, seconds)["avg_w"]
