"""Thermal zones and CPU clocks from sysfs, before and after a timed region and the hottest reading
in between (``PeakSampler``), and what they mean in words.

Standard library only. Every path is joined under ``sysfs_root``; a file that is missing or unreadable
leaves its field out, it never raises.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from typing import Any

KEPT_TRIPS = ("passive", "hot", "critical")
FREQUENCY_DROP = 0.10


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _number(path: str) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _index(path: str) -> int:
    match = re.search(r"(\d+)$", path.rstrip("/"))
    return int(match.group(1)) if match else -1


def _glob(root: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, pattern.lstrip("/"))), key=_index)


def _zones(sysfs_root: str) -> list[tuple[str, str]]:
    """(name, directory) per thermal zone: its type, with ``.N`` added where an earlier zone has that type.
    Shared by the snapshots and the sampler so that both name a zone alike."""
    named: list[tuple[str, str]] = []
    seen: set[str] = set()
    for directory in _glob(sysfs_root, "sys/class/thermal/thermal_zone[0-9]*"):
        kind = _read(os.path.join(directory, "type"))
        if kind:
            named.append((kind if kind not in seen else f"{kind}.{_index(directory)}", directory))
            seen.add(kind)
    return named


def snapshot(sysfs_root: str = "/") -> dict[str, Any]:
    """``{"zones": {type: °C}, "trips": {type: [{"type", "temp_c"}]}, "cpufreq": {cpuN: {...}}}``."""
    zones: dict[str, float] = {}
    trips: dict[str, list[dict[str, Any]]] = {}
    for name, directory in _zones(sysfs_root):
        millidegrees = _number(os.path.join(directory, "temp"))
        if millidegrees is not None:
            zones[name] = millidegrees / 1e3
        zone_trips = _trips(directory)
        if zone_trips:
            trips[name] = zone_trips
    return {"zones": zones, "trips": trips, "cpufreq": _cpufreq(sysfs_root)}


class PeakSampler:
    """The hottest reading of each zone while a run goes on, read every ``interval_s`` in a daemon thread.

    A run that heats a zone past a trip point and cools before it ends leaves no trace in the snapshot
    taken after it; ``warnings(before, after, sampler.peaks())`` names that trip point. Reading a few
    small sysfs files twice a second costs the measured work nothing it would notice.
    """

    def __init__(self, sysfs_root: str = "/", interval_s: float = 0.5) -> None:
        self.zones = [(name, os.path.join(directory, "temp")) for name, directory in _zones(sysfs_root)]
        self.interval_s = interval_s
        self.readings = 0  # rounds over every zone so far
        self._peaks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thermal-sampler", daemon=True)

    def start(self) -> PeakSampler:
        """Read once now (a short run still gets a reading), then every ``interval_s``."""
        self._read()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop, read once more (the end of the run counts) and return ``peaks()``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._read()
        return self.peaks()

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def peaks(self) -> dict[str, float]:
        """``{zone: hottest °C so far}``, the form ``warnings`` takes as ``during_max``."""
        with self._lock:
            return dict(self._peaks)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def _read(self) -> None:
        for name, path in self.zones:
            millidegrees = _number(path)
            if millidegrees is not None:
                with self._lock:
                    self._peaks[name] = max(millidegrees / 1e3, self._peaks.get(name, millidegrees / 1e3))
        self.readings += 1


def _trips(directory: str) -> list[dict[str, Any]]:
    found = []
    for type_file in sorted(glob.glob(os.path.join(directory, "trip_point_*_type"))):
        kind = _read(type_file)
        millidegrees = _number(type_file[: -len("_type")] + "_temp")
        if kind in KEPT_TRIPS and millidegrees is not None:
            found.append({"type": kind, "temp_c": millidegrees / 1e3})
    return sorted(found, key=lambda trip: trip["temp_c"])


def _cpufreq(root: str) -> dict[str, dict[str, Any]]:
    cpus: dict[str, dict[str, Any]] = {}
    for directory in _glob(root, "sys/devices/system/cpu/cpu[0-9]*"):
        cpufreq = os.path.join(directory, "cpufreq")
        fields = {
            "cur_khz": _number(os.path.join(cpufreq, "scaling_cur_freq")),
            "max_khz": _number(os.path.join(cpufreq, "scaling_max_freq")),
            "governor": _read(os.path.join(cpufreq, "scaling_governor")),
        }
        fields = {key: value for key, value in fields.items() if value is not None}
        if fields:
            cpus[os.path.basename(directory)] = fields
    return cpus


def warnings(before: dict[str, Any], after: dict[str, Any], during_max: dict[str, Any] | None = None) -> list[str]:
    """Plain-word warnings: trip points reached, CPU clocks that fell, and a note on a non-performance governor.

    ``during_max`` is the hottest reading per zone during the run: ``{type: °C}`` or a snapshot.
    """
    return trip_warnings(before, after, during_max) + _frequency_warnings(before, after) + _governor_notes(before, after)


def trip_warnings(before: dict[str, Any], after: dict[str, Any], during_max: dict[str, Any] | None = None) -> list[str]:
    hottest = dict(after.get("zones", {}))
    during = (during_max or {}).get("zones", during_max or {})
    for zone, temp in during.items():
        if isinstance(temp, (int, float)):
            hottest[zone] = max(temp, hottest.get(zone, temp))
    trips = {**before.get("trips", {}), **after.get("trips", {})}
    found = []
    for zone, peak in hottest.items():
        reached = [trip for trip in trips.get(zone, []) if peak >= trip["temp_c"]]
        if reached:
            temps = (before.get("zones", {}).get(zone), after.get("zones", {}).get(zone))
            found.append(_trip_message(zone, peak, reached[-1], *temps))
    return found


def _trip_message(zone: str, peak: float, trip: dict[str, Any], start: float | None, end: float | None) -> str:
    reached = f"thermal zone {zone} reached its {trip['type']} trip point ({trip['temp_c']:.1f} °C) at {peak:.1f} °C"
    if start is not None and start >= trip["temp_c"]:
        history = f"; it was already at {start:.1f} °C before the run"
    else:
        history = f"; it was {start:.1f} °C before the run" if start is not None else ""
    if end is not None and end < peak:
        history += f" and {end:.1f} °C after it (the peak was read during the run)"
    return f"{reached}{history}: the device may have throttled, so these timings may be pessimistic"


def _frequency_warnings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    groups: dict[tuple[float, float, str], list[str]] = {}
    for cpu, start in before.get("cpufreq", {}).items():
        end = after.get("cpufreq", {}).get(cpu, {})
        if "cur_khz" not in start or "cur_khz" not in end or start.get("governor") != end.get("governor"):
            continue
        if end["cur_khz"] < start["cur_khz"] * (1 - FREQUENCY_DROP):
            groups.setdefault((start["cur_khz"], end["cur_khz"], str(start.get("governor"))), []).append(cpu)
    return [
        f"CPU clock of {', '.join(cpus)} fell {100 * (1 - low / high):.0f}% during the run "
        f"({high / 1e3:.0f} -> {low / 1e3:.0f} MHz) while the governor stayed {governor!r}: "
        "thermal throttling or a power cap is likely"
        for (high, low, governor), cpus in groups.items()
    ]


def largest_clock_drop(before: dict[str, Any], after: dict[str, Any]) -> float:
    """The largest share by which a CPU's clock fell between two snapshots under the same governor."""
    drops = [0.0]
    for cpu, start in before.get("cpufreq", {}).items():
        end = after.get("cpufreq", {}).get(cpu, {})
        if start.get("cur_khz") and "cur_khz" in end and start.get("governor") == end.get("governor"):
            drops.append(1 - end["cur_khz"] / start["cur_khz"])
    return max(drops)


def _governor_notes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    cpus = after.get("cpufreq") or before.get("cpufreq", {})
    groups: dict[str, list[str]] = {}
    for cpu, fields in cpus.items():
        if fields.get("governor", "performance") != "performance":
            groups.setdefault(fields["governor"], []).append(cpu)
    return [
        f"note: the cpufreq governor of {', '.join(names)} is {governor!r}, not 'performance'; "
        "clock speeds may vary between runs (not an error)"
        for governor, names in groups.items()
    ]
