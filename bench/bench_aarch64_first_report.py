"""A bare aarch64 device (Python and SSH only, no internet) to its first report: steps, bytes, seconds.

    python bench/bench_aarch64_first_report.py [--cpu cortex-a57] [--out FILE]   (root; debootstrap,
                                                                                  qemu-user-static)

The device is an arm64 Debian root (tests/armroot.py: debootstrap, cached between runs) whose
sessions a namespaced sshd chroots into, its programs run by qemu-aarch64 as ``--cpu`` (the
Jetson Nano's Cortex-A57 by default). It has Debian's python3 and nothing else: no pip packages,
no route beyond this machine. The steps are what a user runs, in order, each timed, with the
bytes its link carried (the root-side veth's kernel counters: SSH, TCP and all):

1. ``edgegate devices check``: the bare device is not ready, and says what to run;
2. ``edgegate devices setup``: wheels for aarch64/CPython/glibc downloaded here, sent, installed;
3. ``edgegate variants build``: the tiny suite's variants, here (nothing goes to the device);
4. ``pytest suites/ --device arm``: runner and variants deployed, measured, judged, report written;
5. the same again: what a second night costs (nothing is re-sent).

Emulated SIMD is about 900x slower than native: the model is the tests' tiny Llama (2 layers,
hidden 64), so the seconds are the harness's own costs on a slow board, not a model's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import armroot  # noqa: E402
from conftest import write_tiny_suite  # noqa: E402
from sshdevices import SshDeviceFarm  # noqa: E402
from tinymodel import build_tiny_llama  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default=armroot.DEFAULT_CPU, help="qemu's CPU model (cortex-a76: Raspberry Pi 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "aarch64_first_report.json")
    args = parser.parse_args()
    if armroot.unavailable():
        print(f"cannot run an aarch64 device here: {armroot.unavailable()}")
        return 2
    started = time.monotonic()
    cached = (armroot.CACHE / f"rootfs-arm64-{armroot.SUITE}" / ".complete").exists()
    root = armroot.arm64_root()
    steps = [{"step": f"arm64 root file system ({'cached' if cached else 'debootstrap'})",
              "seconds": time.monotonic() - started, "sent_mb": 0.0, "received_mb": 0.0, "outcome": str(root)}]
    with tempfile.TemporaryDirectory() as scratch, SshDeviceFarm(Path(scratch) / "farm", prefix="egbench") as farm:
        project = _project(Path(scratch))
        steps += _steps(farm, root, project, args.cpu)
    _print(steps, args.cpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": args.cpu, "steps": steps}, indent=2) + "\n")
    return 0 if all(s["ok"] for s in steps[1:]) else 1


def _project(scratch: Path) -> Path:
    project = scratch / "project"
    build_tiny_llama(project / "suites" / "tiny_model")
    write_tiny_suite(project)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "device_profiles").mkdir()
    return project


def _steps(farm: SshDeviceFarm, root: Path, project: Path, cpu: str) -> list[dict]:
    started = time.monotonic()
    device = farm.start("arm", root_fs=root, cpu=cpu)
    profile = project / "device_profiles" / "arm.yaml"
    profile.write_text(device.profile_yaml(measurement_timeout_s=1800, tags=["arm64"]))
    steps = [{"step": f"device started (sshd in a netns, {cpu})", "seconds": time.monotonic() - started,
              "sent_mb": 0.0, "received_mb": 0.0, "outcome": "", "ok": True}]
    cache = ["--cache", str(project / "cache")]
    edgegate = [sys.executable, "-m", "edgegate.cli"]
    commands = [
        ("devices check (bare device)", [*edgegate, "devices", "check", "arm"], {1}),
        ("devices setup", [*edgegate, "devices", "setup", "arm", *cache], {0}),
        ("variants build (here)", [*edgegate, "variants", "build", "suites/suite_tiny.yaml", *cache], {0}),
        ("pytest suites/ --device arm (first report)", _pytest(project), {0, 1}),
        ("pytest suites/ --device arm (second night)", _pytest(project), {0, 1}),
    ]
    for name, command, expected in commands:
        steps.append(_timed(farm, name, command, project, expected))
    return steps


def _pytest(project: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "suites/", "--device", "arm", "--edgegate-cache",
            str(project / "cache"), "-p", "no:cacheprovider", "-q"]


def _timed(farm: SshDeviceFarm, name: str, command: list[str], project: Path, expected: set[int]) -> dict:
    sent, received = farm.link_bytes("arm")
    started = time.monotonic()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    now_sent, now_received = farm.link_bytes("arm")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    outcome = next((line for line in reversed(lines) if "passed" in line or "ready" in line), lines[-1] if lines else "")
    if done.returncode not in expected:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return {"step": name, "seconds": seconds, "sent_mb": (now_sent - sent) / 1e6,
            "received_mb": (now_received - received) / 1e6, "outcome": outcome.strip()[:160],
            "ok": done.returncode in expected}


def _print(steps: list[dict], cpu: str) -> None:
    print(f"\nA bare aarch64 device ({cpu}, emulated) to its first report\n")
    print("| step | seconds | MB to device | MB from device | outcome |")
    print("|---|---:|---:|---:|---|")
    for s in steps:
        print(f"| {s['step']} | {s['seconds']:.1f} | {s['sent_mb']:.2f} | {s['received_mb']:.2f} | {s['outcome']} |")
    first = sum(s["seconds"] for s in steps if "second night" not in s["step"])
    print(f"\nbare device to first report: {first:.0f} s, "
          f"{sum(s['sent_mb'] for s in steps if 'second night' not in s['step']):.1f} MB sent")


if __name__ == "__main__":
    sys.exit(main())
