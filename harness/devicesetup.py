"""Make a device ready for the runner without internet access on the device.

Wheels for the device's platform and python are downloaded here (where PyPI is reachable),
pushed over SSH content-addressed, and installed into a venv in the device's work dir: the
runner's own packages and onnxruntime always, and each runtime the selected suites' variants
use (LiteRT, LiteRT-LM, ExecuTorch, llama.cpp) where the device's Python can have it.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import devicecheck, runtimes
from .runtimes import requirement_name
from .deploy import deploy_tree
from .devicecheck import RUNNER_NEEDS, DeviceReport
from .errors import TransportError
from .transport.base import Transport

INSTALL_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Plan:
    """What one device gets: pip requirements, and the runtimes it cannot have with why."""

    requirements: tuple[str, ...]
    installed: tuple[runtimes.RuntimeNeeds, ...]
    refused: dict[str, str] = field(default_factory=dict)  # runtime label -> the sentence why

    @property
    def without_deps(self) -> tuple[str, ...]:
        """The requirements installed without their declared dependencies (a runtime's export tooling)."""
        names = {name for needed in self.installed for name in needed.no_deps}
        return tuple(r for r in self.requirements if requirement_name(r) in names)

    @property
    def with_deps(self) -> tuple[str, ...]:
        return tuple(r for r in self.requirements if r not in self.without_deps)


WHEEL_ARCHITECTURES = ("x86_64", "aarch64")  # where onnxruntime publishes Linux wheels


def wheel_platforms(machine: str, libc: list[str]) -> list[str]:
    """pip ``--platform`` tags a device with this CPU and C library can run, newest first (a
    device whose C library is not glibc, e.g. musl, can run only musllinux wheels)."""
    arch = _arch(machine)
    if not libc or libc[0] != "glibc":
        return [f"musllinux_1_2_{arch}", f"musllinux_1_1_{arch}"]
    minor = int(libc[1].split(".")[1]) if len(libc) == 2 and libc[0] == "glibc" and "." in libc[1] else 17
    tags = [f"manylinux_2_{n}_{arch}" for n in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"]


def plan(backends: Iterable[str], python_version: str) -> Plan:
    """The packages for ``backends`` on a device with this Python; a runtime it is too old for is refused."""
    requirements = list(RUNNER_NEEDS)
    installed, refused = [], {}
    for backend in backends:
        needed = runtimes.needs(backend)
        why = needed.refusal(python_version)
        if why:
            refused[needed.label] = why
            continue
        installed.append(needed)
        requirements += [r for r in needed.requires if r not in requirements and requirement_name(r) not in requirements]
    return Plan(tuple(requirements), tuple(installed), refused)


def fetch_wheels(python_version: str, machine: str, libc: list[str], dest: Path,
                 requirements: Iterable[str] = RUNNER_NEEDS, cpu_flags: set[str] | None = None,
                 without_deps: Iterable[str] = ()) -> list[Path]:
    """Download ``requirements`` and their dependencies as wheels for the device (not for this
    machine); a package that publishes no wheels is built here, for the device's CPU flags, when
    the device is this machine's architecture."""
    major_minor = ".".join(python_version.split(".")[:2])
    dest.mkdir(parents=True, exist_ok=True)
    binary, from_source = _split_source_builds(list(requirements))
    for requirement in from_source:
        built = _build_here(requirement, major_minor, machine, dest, cpu_flags)
        binary += [r for r in _wheel_requires(built) if r not in binary]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
               "--python-version", major_minor, "--implementation", "cp"]
    for tag in wheel_platforms(machine, libc):
        command += ["--platform", tag]
    for extra, wanted in (([], binary), (["--no-deps"], list(without_deps))):
        if not wanted:
            continue
        done = subprocess.run(command + extra + wanted, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TransportError(_no_wheel(done.stderr, major_minor, machine, libc) or
                                 f"could not download wheels for python {major_minor} on {machine}: "
                                 f"{_pip_error(done.stderr)}")
        pin = numpy_pin(dest.glob("*.whl")) if not extra else ()
        if pin and subprocess.run(command + list(pin), capture_output=True, check=False).returncode != 0:
            raise TransportError(f"could not download {pin[0]} for python {major_minor} on {machine}")
    return sorted(dest.glob("*.whl"))


NUMPY_2_FROM = (1, 19)  # onnxruntime builds older than this were compiled against numpy 1.x


def numpy_pin(wheels: Iterable[Path]) -> tuple[str, ...]:
    """("numpy<2",) when the newest onnxruntime among ``wheels`` cannot import with numpy 2 (its
    wheel declares no upper bound, so pip would pair it with one), else ()."""
    versions = [tuple(int(p) for p in w.name.split("-")[1].split(".")[:2] if p.isdigit())
                for w in wheels if w.name.startswith(("onnxruntime-", "onnxruntime_gpu-"))]
    return ("numpy<2",) if versions and max(versions) < NUMPY_2_FROM else ()


def _arch(machine: str) -> str:
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine.lower())


def _no_wheel(stderr: str, major_minor: str, machine: str, libc: list[str]) -> str | None:
    """One sentence when PyPI has no wheel for the device: what is missing and what to do."""
    import re

    found = re.search(r"No matching distribution found for (\S+)", stderr)
    if not found:
        return None
    glibc = bool(libc) and libc[0] == "glibc"
    where = f"CPython {major_minor} on {machine} ({' '.join(libc) if glibc else 'not glibc'})"
    if _arch(machine) not in WHEEL_ARCHITECTURES:
        advice = (f"onnxruntime publishes Linux wheels for {' and '.join(WHEEL_ARCHITECTURES)} only: install the "
                  f"board's 64-bit (aarch64) OS")
    elif not glibc:
        advice = ("its C library is not glibc, and onnxruntime publishes manylinux (glibc) wheels only: use a "
                  "glibc distribution (Debian, Ubuntu, Raspberry Pi OS)")
    else:
        advice = ("another Python version on the device, or a newer OS (a newer glibc), may have one: "
                  "`pip download --only-binary=:all: --platform ... --python-version ...` lists what exists")
    return f"PyPI has no wheel of {found.group(1)} for {where}, and the device has no internet to build one: {advice}"


def _pip_error(stderr: str) -> str:
    """pip's own error lines, without its warnings about unreachable index locations."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("WARNING: Location")]
    return "\n".join(lines)[-800:]


SOURCE_ONLY = ("llama-cpp-python",)  # PyPI has only its source: compiled for the device's CPU


def _split_source_builds(requirements: list[str]) -> tuple[list[str], list[str]]:
    source = [r for r in requirements if requirement_name(r) in SOURCE_ONLY]
    return [r for r in requirements if r not in source], source


def _wheel_requires(wheel: Path) -> list[str]:
    """The unconditional dependencies a wheel declares (its METADATA's Requires-Dist)."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    declared = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [d.replace(" ", "") for d in declared if ";" not in d]


def _build_here(requirement: str, major_minor: str, machine: str, dest: Path, cpu_flags: set[str] | None) -> Path:
    """Compile a source-only package into ``dest`` when the device has this machine's
    architecture (the wheel is ctypes bindings: any Python 3), or say how to build it there."""
    from . import llama_cpp_build

    if machine != platform.machine():
        raise TransportError(f"{requirement} publishes no wheels, and this machine ({platform.machine()}) cannot "
                             f"build one for the device ({machine}, Python {major_minor}); install it on the "
                             f"device: {_device_build_hint(requirement)}")
    flags = llama_cpp_build.host_cpu_flags() if cpu_flags is None else cpu_flags
    folder = dest / f"built-{hashlib.sha256(llama_cpp_build.cmake_args(flags).encode()).hexdigest()[:12]}"
    built = sorted(folder.glob(f"{requirement_name(requirement).replace('-', '_')}-*.whl"))
    wheel = built[-1] if built else llama_cpp_build.build_wheel(folder, flags)
    shutil.copy2(wheel, dest / wheel.name)  # one build per CPU's flags; the device gets its own
    return dest / wheel.name


def _device_build_hint(requirement: str) -> str:
    from . import llama_cpp_build

    return f"CMAKE_ARGS=\"{llama_cpp_build.cmake_args(set())}\" pip install {requirement} (needs cmake and a C++ compiler)"


def setup_device(name: str, transport: Transport, cache_dir: Path, base_python: str = "python3",
                 log: Callable[[str], None] = print, backends: Iterable[str] = ("onnxruntime",)) -> DeviceReport:
    """Create ``<work_dir>/venv`` on the device with the runner's packages and each runtime of
    ``backends`` the device's Python can have; the report names every runtime refused and why."""
    facts = _base_facts(transport, base_python)
    log(f"{name}: python {facts['python']} on {facts['machine']} ({' '.join(facts['libc'])})")
    too_old = devicecheck.runner_too_old({**facts, "executable": base_python})
    if too_old:
        return DeviceReport(name, facts, (f"nothing installed: the device {too_old}",))
    wanted = plan(backends, facts["python"])
    for label, why in wanted.refused.items():
        log(f"{name}: {label} not installed: {why}")
    wheels = fetch_wheels(facts["python"], facts["machine"], facts["libc"], cache_dir / "wheels" / _wheel_folder(facts),
                          wanted.with_deps, _device_cpu_flags(transport), wanted.without_deps)
    pushed = deploy_tree(transport, {wheel.name: wheel for wheel in wheels}, "wheels")
    log(f"{name}: {len(wheels)} wheels in {pushed.remote_dir} ({pushed.bytes_sent / 1e6:.1f} MB sent)")
    venv = transport.device_path("venv")
    transport.run([base_python, "-m", "venv", venv], timeout_s=INSTALL_TIMEOUT_S, check=True)
    install = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", pushed.remote_dir]
    transport.run([*install, *wanted.with_deps, *numpy_pin(wheels)], timeout_s=INSTALL_TIMEOUT_S, check=True)
    if wanted.without_deps:
        transport.run([*install, "--no-deps", *wanted.without_deps], timeout_s=INSTALL_TIMEOUT_S, check=True)
    log(f"{name}: installed {', '.join(wanted.requirements)} into {venv}")
    report = devicecheck.probe(name, transport, runtimes={n.label: n.module for n in wanted.installed
                                                          if n.module not in RUNNER_NEEDS})
    refused = tuple(f"{label} cannot be installed: {why}" for label, why in wanted.refused.items())
    return DeviceReport(report.device, report.facts, report.problems, report.warnings + refused)


def _wheel_folder(facts: dict) -> str:
    """One wheel folder per architecture, Python and C library (which decides the newest wheels)."""
    python = "".join(facts["python"].split(".")[:2])
    return f"{facts['machine']}-cp{python}-{''.join(facts['libc']) or 'nolibc'}"


def _device_cpu_flags(transport: Transport) -> set[str]:
    """The device's CPU flags: what a source-only runtime is compiled for (not this machine's)."""
    from .llama_cpp_build import cpu_flags

    result = transport.run(["cat", "/proc/cpuinfo"], timeout_s=60)
    return cpu_flags(result.stdout) if result.exit_status == 0 else set()


def _base_facts(transport: Transport, base_python: str) -> dict:
    import json

    script = "import json, platform; print(json.dumps({'python': platform.python_version(), " \
             "'machine': platform.machine(), 'libc': list(platform.libc_ver())}))"
    result = transport.run([base_python, "-c", script], timeout_s=60)
    if result.exit_status != 0:
        raise TransportError(f"cannot run {base_python} on the device: {result.stderr.strip()[-300:]}; "
                             f"install Python 3 (with venv) there first")
    return json.loads(result.stdout.strip().splitlines()[-1])
