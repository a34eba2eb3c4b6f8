"""Wall time of a suite on one namespace device vs on a fleet of N, each device on its own xdist worker.

    sudo python bench/bench_fleet.py [--devices 8] [--quota CORES] [--suite PATH | --suite small | --suite tiny]

Starts N sshd devices in network namespaces (tests/sshdevices.py), each capped by a cgroup CPU
quota (default: 80% of this machine's cores / N, so the whole fleet fits on its cores and leaves
the rest to pytest and its workers, which on a lab's CI machine do not share the boards' cores),
makes the first
ready with `devices setup` and lets the others use its venv (one filesystem). A first untimed
run on the whole fleet builds the variants into the cache and deploys them to every device (a
night re-deploys only what changed); then, timed: the suite on d0 alone (plain pytest, as one
runs a single device; `--with-n1` adds `-n 1` to show what xdist itself costs), then on all N
devices (`-n N`, one xdist worker per device). Prints the wall times, the ratios, and from the
devices' lease logs the seconds each spent measuring and how many devices measured at once.
The single device has the same quota as each fleet device, so the ratio measures what running
side by side costs, not a change of device.
The goal is a ratio <= 1.2 where the machine has a core per device and some left for the host.
Needs root and openssh-server; run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from sshdevices import SshDeviceFarm  # noqa: E402

from edgegate.devicesetup import setup_device  # noqa: E402
from edgegate.lease import held_intervals, lease_log  # noqa: E402
from edgegate.profiles import DeviceProfile, load_profile  # noqa: E402
from edgegate.transport.ssh import SshTransport  # noqa: E402

TAG = "benchfleet"
HOST_SHARE = 0.8  # of the cores, given to the devices by default
# --suite small: the tests' gating model (hidden 512, 6 layers): milliseconds per decode step, and
# enough samples that a device measures for about a minute at a fifth of a core
SMALL_MEASUREMENTS = """measurements:
  prefill: {prompt_tokens: 16, warmup: 2, min_samples: 40, max_samples: 40, target_ci: 0}
  decode: {prompt_tokens: 8, tokens: 16, warmup: 2, min_samples: 160, max_samples: 160, target_ci: 0}
  accuracy: {windows: 4, window_tokens: 64}
"""


@dataclass(frozen=True)
class Timed:
    devices: int
    wall_s: float
    run_id: str
    measuring_s: dict[str, float]  # device -> seconds it held its lease (measuring)
    most_at_once: int
    phases: tuple[float, float, float]  # seconds before the first lease, from first lease to last release, after


def main() -> int:
    args = parse_args()
    quota = args.quota or HOST_SHARE * (os.cpu_count() or 1) / args.devices
    with tempfile.TemporaryDirectory() as scratch_name, SshDeviceFarm(Path(scratch_name), prefix="benchflt") as farm:
        scratch = Path(scratch_name)
        if not farm.uses_namespaces:
            sys.exit("needs root and `ip netns` (namespace devices with CPU quotas)")
        profiles, devices = start_fleet(farm, args.devices, quota, scratch)
        project, target, cache = prepare_suite(args.suite, scratch)
        base = [sys.executable, "-m", "pytest", target, "--no-gate", "-p", "no:cacheprovider", "-q",
                "--edgegate-profiles", str(profiles), "--edgegate-history", args.history or str(scratch / "history.sqlite"),
                "--edgegate-reports", str(scratch / "reports"), *(["--edgegate-cache", str(cache)] if cache else [])]
        fleet_command = base + ["--device", f"tag:{TAG}", "-n", str(args.devices)]
        print("warm-up on the whole fleet (builds what the cache lacks, deploys to every device; not timed) ...",
              flush=True)
        run(fleet_command, project, devices)
        rounds = []
        for index in range(args.repeat):  # interleaved, so a slow spell of the machine hits every configuration
            print(f"round {index + 1} of {args.repeat}", flush=True)
            single = run(base + ["--device", "d0"], project, devices)
            single_xdist = run(base + ["--device", "d0", "-n", "1"], project, devices) if args.with_n1 else None
            rounds.append((single, single_xdist, run(fleet_command, project, devices)))
        report(rounds, quota)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="fleet size (default 8)")
    parser.add_argument("--quota", type=float, default=None, help="CPU cores per device (default: cores / devices)")
    parser.add_argument("--history", default=None, metavar="FILE_OR_URL",
                        help="keep the runs in this history (default: a temporary one), e.g. to read re-measures")
    parser.add_argument("--with-n1", action="store_true", help="also time d0 alone under `-n 1` (xdist's own cost)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the timed runs, interleaved (default 3): "
                        "the table gives each configuration's median and range")
    parser.add_argument("--suite", default=str(ROOT / "suites" / "suite_smollm2.yaml"),
                        help="suite file, 'small' for the tests' gating model (about a minute per device), "
                        "or 'tiny' for the tests' tiny model (a smoke test of this script)")
    return parser.parse_args()


def start_fleet(farm: SshDeviceFarm, count: int, quota: float, scratch: Path) -> tuple[Path, list[DeviceProfile]]:
    """Devices d0..d{count-1}, each capped at ``quota`` cores: their profiles folder and profiles."""
    devices = [farm.start(f"d{index}", cpu_quota=quota) for index in range(count)]
    profiles = scratch / "profiles"
    profiles.mkdir()
    (profiles / "d0.yaml").write_text(devices[0].profile_yaml())
    transport = SshTransport(load_profile(profiles / "d0.yaml"))
    print(setup_device("d0", transport, scratch / "wheels", log=lambda _: None).explain(), flush=True)
    transport.close()
    shared_python = f"{devices[0].home}/edgegate/venv/bin/python"
    for device in devices:
        (profiles / f"{device.name}.yaml").write_text(device.profile_yaml(python=shared_python, tags=[TAG]))
    return profiles, [load_profile(profiles / f"{device.name}.yaml") for device in devices]


def prepare_suite(suite: str, scratch: Path) -> tuple[Path, str, Path | None]:
    """(pytest's working folder, the suite to run, a cache folder or None for the default cache)."""
    if suite not in ("tiny", "small"):
        return ROOT, str(Path(suite).resolve()), None
    from conftest import write_tiny_suite
    from tinymodel import build_tiny_llama

    project = scratch / "project"
    build_tiny_llama(project / "suites" / "tiny_model", **({"hidden": 512, "layers": 6} if suite == "small" else {}))
    written = write_tiny_suite(project)
    if suite == "small":
        head, _, tail = written.read_text().partition("measurements:\n")
        written.write_text(head + SMALL_MEASUREMENTS + tail[tail.index("thresholds:"):])
    (project / "pytest.ini").write_text("[pytest]\n")
    return project, "suites/", scratch / "cache"


def run(command: list[str], cwd: Path, devices: list[DeviceProfile]) -> Timed:
    started, started_at = time.perf_counter(), time.time()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    found = re.search(r"^run (\S+); history:", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        sys.exit(f"`{' '.join(command[3:])}` failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
    run_id = found.group(1)
    held = {device.name: intervals_of(device, run_id) for device in devices}
    measuring = {name: sum(end - start for start, end in spans) for name, spans in held.items() if spans}
    spans = [span for device_spans in held.values() for span in device_spans]
    first, last = min(start for start, _ in spans), max(end for _, end in spans)
    phases = (first - started_at, last - first, started_at + wall - last)  # the devices' clock is this machine's
    timed = Timed(len(measuring), wall, run_id, measuring, most_at_once(held.values()), phases)
    print(f"{timed.devices} device(s): {wall:.1f} s wall, run {run_id}", flush=True)
    return timed


def intervals_of(device: DeviceProfile, run_id: str) -> list[tuple[float, float]]:
    """When the device measured for run ``run_id``, from its lease log (the device's clock)."""
    transport = SshTransport(device)
    try:
        log = lease_log(device.name, transport)[0]
    finally:
        transport.close()
    return [(start, end) for owner, start, end in held_intervals(log) if owner.endswith(f"run {run_id}") and end]


def most_at_once(held: Iterable[list[tuple[float, float]]]) -> int:
    steps = sorted((moment, step) for spans in held for start, end in spans for moment, step in ((start, 1), (end, -1)))
    busy = most = 0
    for _, step in steps:
        busy += step
        most = max(most, busy)
    return most


def report(rounds: list[tuple[Timed, Timed | None, Timed]], quota: float) -> None:
    cores, count = os.cpu_count() or 1, rounds[0][2].devices
    print()
    print("| devices | pytest | wall s, median (range) | seconds measuring per device (lease held), median of rounds | "
          "most devices measuring at once | s before the first lease / first lease to last release / after |")
    print("|---|---|---|---|---|---|")
    columns = [(0, "plain"), *([(1, "-n 1")] if rounds[0][1] else []), (2, f"-n {count}")]
    for column, how in columns:
        runs = [timed[column] for timed in rounds]
        walls = [timed.wall_s for timed in runs]
        spent = sorted(statistics.median(sorted(t.measuring_s.values())[i] for t in runs)
                       for i in range(len(runs[0].measuring_s)))
        per_device = f"{spent[0]:.1f}" if len(spent) == 1 else f"{spent[0]:.1f} - {spent[-1]:.1f}"
        print(f"| {runs[0].devices} | {how} | {statistics.median(walls):.1f} ({min(walls):.1f} - {max(walls):.1f}) | "
              f"{per_device} | {max(t.most_at_once for t in runs)} | "
              f"{' / '.join(f'{statistics.median(t.phases[i] for t in runs):.1f}' for i in range(3))} |")
    print()
    for column, how in columns[:-1]:
        ratios = [timed[2].wall_s / timed[column].wall_s for timed in rounds]  # type: ignore[union-attr]
        print(f"wall time ratio, {count} devices / 1 device ({how}), per round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} (goal <= 1.2)")
    print(f"cores: each device capped at {quota:.2f} cores (cgroup cpu quota), {count} x {quota:.2f} = "
          f"{count * quota:.2f} of this machine's {cores}; pytest, the {count} xdist workers and sshd run outside "
          f"the quotas on the same {cores} cores")


if __name__ == "__main__":
    sys.exit(main())
