"""Probe a device before measuring on it, and say plainly what is missing and how to fix it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

RUNNER_NEEDS = ("numpy", "onnxruntime", "psutil")
RUNNER_PYTHON_MIN = (3, 9)  # the runner's own code (builtin generics at run time, walrus operators)
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
wanted = [p for p in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if p] + ["CPUExecutionProvider"]
try:  # the kernels (operator, domain, opset range) of the providers asked for: checked against each graph
    from onnxruntime.capi import _pybind_state as capi
    kernels = {}
    for kernel in capi.get_all_opkernel_def():
        if kernel.provider in wanted:
            ops = kernels.setdefault(kernel.provider, {}).setdefault(kernel.domain or "ai.onnx", {})
            ops.setdefault(kernel.op_name, []).append(list(kernel.version_range))
    info["onnx_kernels"] = kernels
    opsets = {}
    for schema in capi.get_all_operator_schema():
        domain = schema.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), schema.since_version)
    info["onnx_opsets"] = opsets
except Exception as exc:
    info["onnx_kernels_error"] = type(exc).__name__ + ": " + str(exc)
info["distributions"] = {}
try:
    from importlib import metadata
except ImportError:  # Python < 3.8
    metadata = None
for name in [n for n in (sys.argv[4] if len(sys.argv) > 4 else "").split(",") if n and metadata]:
    try:
        info["distributions"][name] = metadata.version(name)
    except Exception:
        pass
def first(path, keys):
    try:
        for line in open(path):
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    except OSError:
        return None
ARM_PARTS = {"0x41": {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
                      "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE"},
             "0x00": {"0x051": "QEMU max (emulated)"}}
part = ARM_PARTS.get(first("/proc/cpuinfo", ("CPU implementer",)) or "", {}).get(first("/proc/cpuinfo", ("CPU part",)) or "")
info["cpu_model"] = first("/proc/cpuinfo", ("model name", "Model", "Hardware")) or part or platform.processor()
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
    users know -> the module to import) are checked too: a missing one is a problem. The facts
    also hold what :mod:`edgegate.compat` checks each variant against: onnxruntime's kernels for
    ``providers`` and its opsets, and the installed versions of every runtime's packages.

    A Python too old for the runner is not a problem here: every variant is then "unsupported"
    on the device (:func:`edgegate.compat.runner_refusal`), which says what to do."""
    from .runtimes import distributions

    python = runner.python()
    modules = ",".join((runtimes or {}).values())
    argv = [python, "-c", PROBE, runner.device_path(), modules, ",".join(providers), ",".join(distributions())]
    result = runner.run(argv, timeout_s=PROBE_TIMEOUT_S)
    if result.exit_status != 0:
        why = (result.stderr or "").strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
        return DeviceReport(device, {}, (f"cannot run {python}: {why[0]}; install Python 3 on the device "
                                          f"or set `python:` in its profile",))
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    too_old = runner_too_old(facts)
    if too_old:
        return DeviceReport(device, facts, (), (too_old,))
    problems = _problems(device, facts, providers) + _missing_runtimes(device, facts, runtimes or {})
    return DeviceReport(device, facts, tuple(problems), tuple(_warnings(facts, providers, threads)))


def runner_too_old(facts: dict[str, Any]) -> str | None:
    """Why the runner cannot run with the device's Python at all (None when it can)."""
    version = str(facts.get("python") or "0")
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= RUNNER_PYTHON_MIN:
        return None
    return (f"needs Python {'.'.join(map(str, RUNNER_PYTHON_MIN))} or newer for EdgeGate's runner; "
            f"{facts.get('executable')} on the device is Python {version}: install a newer Python there "
            f"(the board's profile says how) and set `python:` in the profile to it")


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
