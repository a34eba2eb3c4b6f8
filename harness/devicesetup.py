"""Make a device ready for the runner without internet access on the device.

Wheels for the device's platform and python are downloaded here (where PyPI is reachable),
pushed over SSH content-addressed, and installed into a venv in the device's work dir.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from . import devicecheck
from .deploy import deploy_tree
from .devicecheck import RUNNER_NEEDS, DeviceReport
from .errors import TransportError
from .transport.base import Transport

INSTALL_TIMEOUT_S = 900.0


def wheel_platforms(machine: str, libc: list[str]) -> list[str]:
    """pip ``--platform`` tags a device with this CPU and glibc can run, newest first."""
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine.lower())
    minor = int(libc[1].split(".")[1]) if len(libc) == 2 and libc[0] == "glibc" and "." in libc[1] else 17
    tags = [f"manylinux_2_{n}_{arch}" for n in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"]


def fetch_wheels(python_version: str, machine: str, libc: list[str], dest: Path) -> list[Path]:
    """Download the runner's dependencies as wheels for the device (not for this machine)."""
    major_minor = ".".join(python_version.split(".")[:2])
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
               "--python-version", major_minor, "--implementation", "cp"]
    for tag in wheel_platforms(machine, libc):
        command += ["--platform", tag]
    done = subprocess.run(command + list(RUNNER_NEEDS), capture_output=True, text=True)
    if done.returncode != 0:
        raise TransportError(f"could not download wheels for python {major_minor} on {machine}: "
                             f"{done.stderr.strip()[-800:]}")
    return sorted(dest.glob("*.whl"))


def setup_device(name: str, transport: Transport, cache_dir: Path, base_python: str = "python3",
                 log: Callable[[str], None] = print) -> DeviceReport:
    """Create ``<work_dir>/venv`` on the device with numpy, onnxruntime and psutil installed."""
    facts = _base_facts(transport, base_python)
    log(f"{name}: python {facts['python']} on {facts['machine']} ({' '.join(facts['libc'])})")
    wheels = fetch_wheels(facts["python"], facts["machine"], facts["libc"],
                          cache_dir / "wheels" / f"{facts['machine']}-cp{facts['python'].replace('.', '')[:3]}")
    pushed = deploy_tree(transport, {wheel.name: wheel for wheel in wheels}, "wheels")
    log(f"{name}: {len(wheels)} wheels in {pushed.remote_dir} ({pushed.bytes_sent / 1e6:.1f} MB sent)")
    venv = transport.device_path("venv")
    transport.run([base_python, "-m", "venv", venv], timeout_s=INSTALL_TIMEOUT_S, check=True)
    transport.run([f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                   pushed.remote_dir, *RUNNER_NEEDS], timeout_s=INSTALL_TIMEOUT_S, check=True)
    log(f"{name}: installed {', '.join(RUNNER_NEEDS)} into {venv}")
    return devicecheck.probe(name, transport)


def _base_facts(transport: Transport, base_python: str) -> dict:
    import json

    script = "import json, platform; print(json.dumps({'python': platform.python_version(), " \
             "'machine': platform.machine(), 'libc': list(platform.libc_ver())}))"
    result = transport.run([base_python, "-c", script], timeout_s=60)
    if result.exit_status != 0:
        raise TransportError(f"cannot run {base_python} on the device: {result.stderr.strip()[-300:]}; "
                             f"install Python 3 (with venv) there first")
    return json.loads(result.stdout.strip().splitlines()[-1])
