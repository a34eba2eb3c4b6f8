"""Device profiles: one YAML file per registered device, read into frozen, validated objects.

A ``transport:`` or ``power_sensor.kind`` may be one an installed plugin provides (entry point
groups ``edgegate.transports``, ``edgegate.sensors``; see plugins_registry): a plugin transport's
settings are the profile's mapping named after it, a plugin sensor's the other keys of
``power_sensor``; both go to the plugin as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plugins_registry
from .config import Fields, load_yaml_mapping
from .errors import ConfigError
from .gate import Threshold, parse_thresholds
from .suites import disturbance_overrides

PROFILE_SCHEMA = 1
POWER_SENSORS = ("none", "ina3221", "rapl", "nvml", "command")  # built in; plugins add more
TRANSPORTS = plugins_registry.BUILTIN_TRANSPORTS  # built in; plugins add more
DEFAULT_MEASUREMENT_TIMEOUT_S = 600.0  # each measurement reports when it ends; load of a big model on a slow board included
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:%-]*$")  # a host name, IPv4 or IPv6 address (scope allowed)
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$")  # POSIX portable user names


@dataclass(frozen=True)
class SshSettings:
    host: str
    user: str
    port: int = 22
    key_file: str | None = None
    known_hosts: str | None = None
    connect_timeout_s: float = 10.0  # TCP connect, SSH handshake and login
    command_timeout_s: float = 120.0  # a short command (probe, hash, mkdir) that has not finished
    upload_timeout_s: float = 120.0  # an upload that made no progress for this long


@dataclass(frozen=True)
class PowerSensor:
    kind: str = "none"
    command: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # a plugin sensor's own keys


@dataclass(frozen=True)
class LeaseSettings:
    """How long a run's lease on the device lasts unless renewed, and how long a run waits for one."""

    ttl_s: float = 60.0
    wait_s: float = 1800.0


@dataclass(frozen=True)
class DeviceProfile:
    """Everything EdgeGate knows about one device before it measures anything."""

    name: str
    path: Path
    transport: str
    description: str = ""
    work_dir: str = "~/.cache/edgegate"
    python: str = "python3"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0
    memory_bandwidth_gbs: float | None = None
    power_sensor: PowerSensor = field(default_factory=PowerSensor)
    ssh: SshSettings | None = None
    tags: tuple[str, ...] = ()
    thresholds: dict[str, tuple[Threshold, ...]] = field(default_factory=dict)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    measurement_timeout_s: float = DEFAULT_MEASUREMENT_TIMEOUT_S  # longest the runner may stay silent
    disturbance: dict[str, Any] = field(default_factory=dict)  # overrides of the suite's disturbance limits
    transport_settings: dict[str, Any] = field(default_factory=dict)  # a plugin transport's own mapping


def load_profile(path: Path) -> DeviceProfile:
    """Read one profile; every problem raises ConfigError naming the file and the field."""
    fields = Fields(path, "", load_yaml_mapping(path))
    schema = fields.get("schema", int, PROFILE_SCHEMA)
    if schema != PROFILE_SCHEMA:
        raise ConfigError(path, "schema", f"version {schema} is not supported (this EdgeGate reads {PROFILE_SCHEMA}); upgrade EdgeGate")
    name = fields.get("name", str, path.stem)
    if not _NAME.match(name):
        raise ConfigError(path, "name", "use letters, digits, '.', '_' and '-' only")
    transport = fields.get("transport", str)
    if transport not in plugins_registry.transport_kinds():
        raise ConfigError(path, "transport", f"must be one of {', '.join(plugins_registry.transport_kinds())}, "
                                             f"got {transport!r} (a plugin's transport: is its distribution installed?)")
    profile = DeviceProfile(
        name=name,
        path=path,
        transport=transport,
        description=fields.get("description", str, ""),
        work_dir=fields.get("work_dir", str, "~/.cache/edgegate"),
        python=fields.get("python", str, "python3"),
        execution_providers=fields.string_list("execution_providers", ["CPUExecutionProvider"]),
        threads=int(fields.number("threads", 0, minimum=0)),
        memory_bandwidth_gbs=fields.number("memory_bandwidth_gbs", None, minimum=0),
        power_sensor=_power_sensor(fields.sub("power_sensor")),
        ssh=_ssh(fields, transport),
        tags=fields.string_list("tags", []),
        thresholds=parse_thresholds(path, "thresholds", fields.get("thresholds", dict, {})),
        lease=_lease(fields.sub("lease")),
        measurement_timeout_s=float(fields.number("measurement_timeout_s", DEFAULT_MEASUREMENT_TIMEOUT_S, minimum=1)),
        disturbance=disturbance_overrides(fields.sub("disturbance")),
        transport_settings=fields.get(transport, dict, {}) if transport not in TRANSPORTS else {},
    )
    fields.finish()
    return profile


def _lease(fields: Fields) -> LeaseSettings:
    settings = LeaseSettings(ttl_s=float(fields.number("ttl_s", 60.0, minimum=1)),
                             wait_s=float(fields.number("wait_s", 1800.0, minimum=0)))
    fields.finish()
    return settings


def _power_sensor(fields: Fields) -> PowerSensor:
    kind = fields.get("kind", str, "none")
    known = plugins_registry.sensor_kinds()
    if kind not in known:
        raise ConfigError(fields.path, fields.name("kind"), f"must be one of {', '.join(known)}, got {kind!r} "
                                                            f"(a plugin's sensor: is its distribution installed here?)")
    command = fields.get("command", str, None)
    if kind == "command" and not command:
        raise ConfigError(fields.path, fields.name("command"), "is required when kind is 'command'")
    own = {key: fields.get(key, (str, int, float, bool, list, dict), None) for key in list(fields.data)
           if key not in ("kind", "command")} if kind not in POWER_SENSORS else {}
    fields.finish()
    return PowerSensor(kind=kind, command=command, settings=own)


def _ssh(parent: Fields, transport: str) -> SshSettings | None:
    if transport != "ssh":
        if parent.get("ssh", dict, None) is not None:
            raise ConfigError(parent.path, "ssh", "only allowed with transport: ssh")
        return None
    fields = parent.sub("ssh", required=True)
    if "password" in fields.data:
        raise ConfigError(parent.path, "ssh.password", "passwords are never stored in profiles; use key_file or an SSH agent")
    settings = SshSettings(
        host=_matching(fields, "host", _HOST, "a host name or address"),
        user=_matching(fields, "user", _USER, "a user name (letters, digits, '.', '_', '-')"),
        port=int(fields.number("port", 22, minimum=1, maximum=65535)),
        key_file=fields.get("key_file", str, None),
        known_hosts=fields.get("known_hosts", str, None),
        connect_timeout_s=float(fields.number("connect_timeout_s", 10.0, minimum=0.1)),
        command_timeout_s=float(fields.number("command_timeout_s", 120.0, minimum=1)),
        upload_timeout_s=float(fields.number("upload_timeout_s", 120.0, minimum=1)),
    )
    fields.finish()
    return settings


def _matching(fields: Fields, key: str, pattern: re.Pattern[str], what: str) -> str:
    value = str(fields.get(key, str))
    if not pattern.match(value):
        raise ConfigError(fields.path, fields.name(key), f"expected {what}, got {value!r}")
    return value


def registered_profiles(directory: Path) -> dict[str, Path]:
    """Profile name (file stem) -> file, for every ``*.yaml`` in ``directory``."""
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def find_profile(name: str, directory: Path) -> DeviceProfile:
    """Load the profile registered as ``name``; an unknown name lists the registered ones."""
    return ProfileCatalog(directory).get(name)


class ProfileCatalog:
    """The profiles of one folder, each file read and checked once however often it is asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._registered: dict[str, Path] | None = None
        self._loaded: dict[str, DeviceProfile] = {}

    def registered(self) -> dict[str, Path]:
        """Profile name (file stem) -> file."""
        if self._registered is None:
            self._registered = registered_profiles(self.directory)
        return self._registered

    def get(self, name: str) -> DeviceProfile:
        """The profile registered as ``name``; an unknown name lists the registered ones."""
        if name not in self._loaded:
            known = self.registered()
            if name not in known:
                listing = ", ".join(known) or "none"
                raise ConfigError(self.directory, "--device", f"unknown device {name!r}; registered devices: {listing}")
            self._loaded[name] = load_profile(known[name])
        return self._loaded[name]

    def tags(self) -> dict[str, tuple[str, ...]]:
        """Every registered profile's tags (each profile read once)."""
        return {name: self.get(name).tags for name in self.registered()}
