"""Probe a device before measuring on it, and say plainly what is missing and how to fix it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

RUNNER_NEEDS = ("numpy", "onnxruntime", "psutil")
PROBE_TIMEOUT_S = 60.0

# Runs on the device with its python; standard library only, whatever is missing is reported.
PROBE = r"""
import json, os, platform, shutil, sys
info = {"python": platform.python_version(), "python_implementation": platform.python_implementation(), "executable": sys.executable, "machine": platform.machine(),
        "system": platform.system(), "kernel": platform.release(), "libc": list(platform.libc_ver()),
        "cpu_count": os.cpu_count()}
extra = tuple(m for m in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if m)
info["runtimes_probed"] = list(extra)
for name in ("numpy", "onnxruntime", "psutil") + extra:
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "unknown")
    except Exception as exc:
        info[name] = None
        info[name + "_error"] = type(exc).__name__ + ": " + str(exc)
try:
    import onnxruntime
    info["providers"] = onnxruntime.get_available_providers()
except Exception:
    info["providers"] = []
def first(path, keys):
    try:
        for line in open(path):
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    except OSError:
        return None
info["cpu_model"] = first("/proc/cpuinfo", ("model name", "Model", "Hardware")) or platform.processor()
mem = first("/proc/meminfo", ("MemTotal",))
info["memory_mb"] = int(mem.split()[0]) // 1024 if mem else None
place = sys.argv[1]
while place and not os.path.isdir(place):
    place = os.path.dirname(place)
try:
    info["disk_free_mb"] = shutil.disk_usage(place or "/").free // (1024 * 1024)
except OSError:
    info["disk_free_mb"] = None
print(json.dumps(info))
"""


class CommandRunner(Protocol):
    def run(self, argv: list[str], timeout_s: float | None = None, stdin: bytes | None = None,
            check: bool = False) -> Any: ...

    def python(self) -> str: ...

    def device_path(self, *parts: str) -> str: ...


@dataclass(frozen=True)
class DeviceReport:
    device: str
    facts: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # worth fixing, but the device can measure

    @property
    def ready(self) -> bool:
        return not self.problems

    def explain(self) -> str:
        notes = [f"  - warning: {w}" for w in self.warnings]
        if self.ready:
            return "\n".join([f"device {self.device} is ready: " + _summary(self.facts), *notes])
        lines = [f"device {self.device} is not ready:"] + [f"  - {p}" for p in self.problems] + notes
        return "\n".join(lines)


def probe(device: str, runner: CommandRunner, providers: tuple[str, ...] = (), threads: int = 0,
          runtimes: dict[str, str] | None = None) -> DeviceReport:
    """Run the probe with the device's python; missing modules and providers become problems,
    a profile asking for more threads than the device has CPUs a warning. ``runtimes`` (the name
    users know -> the module to import) are checked too: a missing one is a problem."""
    python = runner.python()
    modules = ",".join((runtimes or {}).values())
    result = runner.run([python, "-c", PROBE, runner.device_path(), modules], timeout_s=PROBE_TIMEOUT_S)
    if result.exit_status != 0:
        why = (result.stderr or "").strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
        return DeviceReport(device, {}, (f"cannot run {python}: {why[0]}; install Python 3 on the device "
                                          f"or set `python:` in its profile",))
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    problems = _problems(device, facts, providers) + _missing_runtimes(device, facts, runtimes or {})
    return DeviceReport(device, facts, tuple(problems), tuple(_warnings(facts, providers, threads)))


def _missing_runtimes(device: str, facts: dict[str, Any], runtimes: dict[str, str]) -> list[str]:
    return [f"{label} is not importable by {facts.get('executable')} ({facts.get(f'{module}_error', 'missing')}). "
            f"Fix: `edgegate devices setup {device} --suite <the suite>` installs the runtimes its variants use"
            for label, module in runtimes.items() if module not in RUNNER_NEEDS and not facts.get(module)]


def _warnings(facts: dict[str, Any], providers: tuple[str, ...], threads: int) -> list[str]:
    found = []
    cpus = facts.get("cpu_count")
    if threads and isinstance(cpus, int) and threads > cpus:
        found.append(f"the profile asks for threads: {threads}, but the device has {cpus} CPUs: the extra threads "
                     f"share cores and slow every measurement; set threads: {cpus} (or 0 for onnxruntime's default)")
    have = facts.get("providers") or []
    skipped = [p for p in providers if facts.get("onnxruntime") and p not in have]
    if skipped and len(skipped) < len(providers):
        found.append(f"execution providers {skipped} are not in this onnxruntime ({have}): measuring with "
                     f"{[p for p in providers if p in have]}; install the matching onnxruntime build to use them")
    return found


def _problems(device: str, facts: dict[str, Any], providers: tuple[str, ...]) -> list[str]:
    problems = []
    missing = [name for name in RUNNER_NEEDS if not facts.get(name)]
    if missing:
        details = "; ".join(facts.get(f"{name}_error", "missing") for name in missing)
        problems.append(
            f"{', '.join(missing)} not importable by {facts.get('executable')} ({details}). Fix: "
            f"`edgegate devices setup {device}` (makes a venv on the device from wheels sent from here, "
            f"no internet needed there), or on the device: pip install {' '.join(missing)}"
        )
    unavailable = [p for p in providers if facts.get("onnxruntime") and p not in facts.get("providers", [])]
    if unavailable and len(unavailable) == len(providers):
        problems.append(f"none of the execution providers {list(providers)} is in this onnxruntime "
                        f"({facts.get('providers')}); install the matching onnxruntime build or fix the profile")
    if facts.get("disk_free_mb") is not None and facts["disk_free_mb"] < 1024:
        problems.append(f"only {facts['disk_free_mb']} MB free in the work dir; variants need up to ~1 GB")
    return problems


def _summary(facts: dict[str, Any]) -> str:
    return (f"python {facts.get('python')} ({facts.get('machine')}), onnxruntime {facts.get('onnxruntime')} "
            f"{facts.get('providers')}, numpy {facts.get('numpy')}, psutil {facts.get('psutil')}, "
            + "".join(f"{module} {facts.get(module)}, " for module in facts.get("runtimes_probed") or ()) +
            f"{facts.get('cpu_count')} x {facts.get('cpu_model')}, {facts.get('memory_mb')} MB RAM, "
            f"{facts.get('disk_free_mb')} MB free")
