"""Run a suite on `local` and on a namespace SSH device side by side, without any board.

    python bench/suite_on_namespace_device.py [--suite FILE] [pytest args...]   (root, openssh-server)

Starts one sshd in a network namespace (tests/sshdevices.py), makes it ready with
`devices setup` (a venv from wheels pushed over SSH, with the runtimes the suite's variants use),
writes its profile next to a copy of the registered ones, then runs
`pytest <suite or suites/> --device local --device nsdev` against them. The report then shows
every variant on both devices.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sshdevices import SshDeviceFarm  # noqa: E402

from edgegate.devicesetup import setup_device  # noqa: E402
from edgegate.profiles import load_profile  # noqa: E402
from edgegate.runtimes import suite_backends  # noqa: E402
from edgegate.suites import load_suite  # noqa: E402
from edgegate.transport.ssh import SshTransport  # noqa: E402


def main() -> int:
    args = sys.argv[1:]
    target = "suites/"
    if args[:1] == ["--suite"]:
        target, args = args[1], args[2:]
    backends = suite_backends([load_suite(Path(target))]) if target.endswith((".yaml", ".yml")) else ["onnxruntime"]
    with tempfile.TemporaryDirectory() as scratch, SshDeviceFarm(Path(scratch), prefix="suite") as farm:
        profiles = Path(scratch) / "profiles"
        shutil.copytree(ROOT / "device_profiles", profiles)
        device = farm.start("nsdev")
        (profiles / "nsdev.yaml").write_text(device.profile_yaml(threads=0))
        transport = SshTransport(load_profile(profiles / "nsdev.yaml"))
        print(setup_device("nsdev", transport, Path(scratch) / "wheels", backends=backends).explain())
        transport.close()
        command = [sys.executable, "-m", "pytest", target, "--device", "local", "--device", "nsdev",
                   "--edgegate-profiles", str(profiles), "-p", "no:cacheprovider", *args]
        return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
