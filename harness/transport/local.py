"""The embedded default device: this machine, the same runner, started as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import RunnerError, TransportError
from ..profiles import DeviceProfile
from .base import CommandResult, Watchdog, describe_end, parse_events

RUNNER_MODULE = "edgegate.runner"


class LocalTransport:
    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.python_path = sys.executable if profile.python in ("", "auto") else profile.python
        self.work_dir = Path(os.path.expanduser(profile.work_dir))

    def device_path(self, *parts: str) -> str:
        return str(self.work_dir.joinpath(*parts))

    def python(self) -> str:
        return self.python_path

    def run(self, argv: Sequence[str], timeout_s: float | None = None, stdin: bytes | None = None,
            check: bool = False) -> CommandResult:
        try:
            done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise TransportError(f"`{' '.join(argv)[:120]}` timed out after {timeout_s:.0f} s") from None
        except OSError as exc:
            return CommandResult(tuple(argv), 127, "", str(exc))
        result = CommandResult(tuple(argv), done.returncode, done.stdout.decode(errors="replace"),
                               done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise TransportError(f"`{' '.join(argv)[:120]}` exited with {done.returncode}: {result.stderr[-500:]}")
        return result

    def ensure_runner(self) -> None:
        """The runner is this installation's own package: nothing to deploy."""

    def stage(self, folder: Path, hashes: Mapping[str, str]) -> str:
        """The artifact is used where it is, once its files are checked against their manifest."""
        from ..deploy import check_local_files

        check_local_files({name: folder / name for name in hashes}, hashes)
        return str(folder)

    def run_job(self, job: dict[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]:
        """Start the runner, feed it ``job``, yield each event; a crash raises RunnerError.

        ``timeout_s`` is the longest the runner may stay silent: each event restarts the clock.
        """
        process = subprocess.Popen(
            [self.python_path, "-m", RUNNER_MODULE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        watchdog = Watchdog(timeout_s, process.kill)
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(job))
            process.stdin.close()
            label = f"{progress.name_of(Path(job.get('model', '')).parent)} on {self.profile.name}"
            for event in progress.measuring(parse_events(process.stdout, self.profile.name), label):
                watchdog.restart()
                yield event
            code = process.wait()
        finally:
            watchdog.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=5)
        if watchdog.fired:
            raise RunnerError(f"runner on {self.profile.name} sent nothing for {timeout_s:.0f} s "
                              f"(measurement_timeout_s) and was stopped", stderr="".join(stderr_lines))
        if code != 0:
            why = describe_end(code, -code if code < 0 else None)
            raise RunnerError(f"runner on {self.profile.name} {why}", stderr="".join(stderr_lines))

    def close(self) -> None:
        pass

