"""Building llama-cpp-python for a CPU (host side): PyPI has only its source, compiled by pip.

``cmake_args`` names every x86 instruction-set option of ggml explicitly from the CPU's
``/proc/cpuinfo`` flags, because:

- GGML_NATIVE=OFF: a native build (``-march=native``) crashed on an AMX Xeon on its first eval,
  and it ties the wheel to the build machine's exact CPU;
- with GGML_NATIVE=OFF ggml turns SSE4.2, AVX, AVX2, BMI2, FMA and F16C on by default, so a CPU
  without one of them would die of an illegal instruction unless each is set OFF explicitly;
- GGML_AVX512 compiles for AVX512 F, CD, VL, DQ and BW together, so it needs all five; its
  VBMI/VNNI/BF16 extensions and AVX-VNNI stay off (the build EdgeGate measures and tests with);
- AMX is always off (the crash above).

The wheel pip builds is ``py3-none-linux_<machine>`` (ctypes bindings, no CPython ABI) and links
the system's libgomp (OpenMP): a device needs the same machine and a glibc no older than the
host's, plus libgomp1. pip caches the built wheel by the source archive only, not by CMAKE_ARGS,
so a build for other flags than the host's bypasses the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REQUIREMENT = "llama-cpp-python==0.3.36"
# ggml option -> the /proc/cpuinfo flags the code it enables needs, in the order they are passed
_X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
}
_ALWAYS_OFF = ("GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI",
               "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_TESTS")


def cmake_args(cpu_flags: set[str]) -> str:
    """CMAKE_ARGS for a CPU with these flags (an empty set: no x86 extension assumed)."""
    options = ["-DGGML_NATIVE=OFF"]
    for option, needed in _X86_OPTIONS.items():
        options.append(f"-D{option}={'ON' if set(needed) <= cpu_flags else 'OFF'}")
    options += [f"-D{option}=OFF" for option in _ALWAYS_OFF]
    return " ".join(options)


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's flags (x86 "flags", Arm "Features"); empty where there is no cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return cpu_flags(text)


def cpu_flags(cpuinfo_text: str) -> set[str]:
    """The first CPU's flags in the text of a ``/proc/cpuinfo`` (this machine's or a device's)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def build_wheel(dest: Path, cpu_flags: set[str] | None = None) -> Path:
    """Compile llama-cpp-python into a wheel in ``dest`` for this host's platform and CPU (or for
    ``cpu_flags``); minutes the first time, pip's wheel cache makes the host's own build quick again."""
    flags = host_cpu_flags() if cpu_flags is None else cpu_flags
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", REQUIREMENT, "-w", str(dest)]
    if flags != host_cpu_flags():
        command.append("--no-cache-dir")  # the cache is keyed by the source, not the flags
    env = {**os.environ, "CMAKE_ARGS": cmake_args(flags)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        from .errors import BuildError

        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BuildError(f"building {REQUIREMENT} failed (pip exited {result.returncode}; it needs cmake and a "
                         f"C++ compiler); its last lines:\n{tail}")
    return _built(dest)


def _built(dest: Path) -> Path:
    name = REQUIREMENT.split("==")[0].replace("-", "_")
    version = REQUIREMENT.split("==")[1]
    wheels = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        from .errors import BuildError

        raise BuildError(f"pip reported success but wrote no {name}-{version} wheel into {dest}")
    return wheels[-1]


def install() -> int:
    """Install llama-cpp-python into this Python for this CPU, unless that version is already there."""
    from importlib import metadata

    try:
        if metadata.version(REQUIREMENT.split("==")[0]) == REQUIREMENT.split("==")[1]:
            return 0
    except metadata.PackageNotFoundError:
        pass
    env = {**os.environ, "CMAKE_ARGS": cmake_args(host_cpu_flags())}
    print(f"compiling {REQUIREMENT} for this CPU (minutes): CMAKE_ARGS={env['CMAKE_ARGS']}", flush=True)
    return subprocess.run([sys.executable, "-m", "pip", "install", REQUIREMENT], env=env, check=False).returncode


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m edgegate.llama_cpp_build install")
    sys.exit(install())
