"""The few exceptions EdgeGate raises; each one carries what a person needs to act on it."""

from __future__ import annotations

from pathlib import Path


class EdgeGateError(Exception):
    """Base of every error EdgeGate raises on purpose; shown to users without a traceback."""


class ConfigError(EdgeGateError):
    """A profile or suite file is wrong: names the file and the field."""

    def __init__(self, path: Path | str, field: str, problem: str) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}" if field else str(self.path)
        super().__init__(f"{where}: {problem}")


class BuildError(EdgeGateError):
    """A variant could not be built from its recipe."""


class RunnerError(EdgeGateError):
    """The measuring process on a device failed; carries what it printed."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        self.stdout = stdout
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(message + detail)


class TransportError(EdgeGateError):
    """A command or transfer on a device failed."""


class DeviceUnreachable(TransportError):
    """The device did not answer (after retries)."""


class HostKeyError(TransportError):
    """The device's host key is unknown or has changed; the message says how to proceed."""


class DeployError(TransportError):
    """An upload could not be completed and verified."""


class DeviceNotReady(EdgeGateError):
    """The device lacks what the runner needs; the message says how to install it."""


class VariantUnsupported(EdgeGateError):
    """The device, as it is, cannot run this variant (found before anything was uploaded);
    the message names what the variant needs, what the device has and what to do."""


class StoreError(EdgeGateError):
    """The history store cannot be read or written."""
