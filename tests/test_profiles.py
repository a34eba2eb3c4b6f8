from __future__ import annotations

from pathlib import Path

import pytest

from edgegate.errors import ConfigError
from edgegate.profiles import find_profile, load_profile, registered_profiles

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"


def test_shipped_profiles_load() -> None:
    names = set(registered_profiles(PROFILES))
    assert {"local", "jetson-nano", "jetson-orin-nano", "raspberry-pi-5"} <= names
    for name in names:
        profile = find_profile(name, PROFILES)
        assert profile.name == name
    nano = find_profile("jetson-nano", PROFILES)
    assert nano.transport == "ssh" and nano.ssh is not None and nano.ssh.user == "edgegate"
    assert nano.power_sensor.kind == "ina3221" and nano.memory_bandwidth_gbs == 25.6
    assert nano.thresholds["decode_ms"][0].limit == 250


def test_unknown_device_lists_registered() -> None:
    with pytest.raises(ConfigError, match="unknown device 'nope'; registered devices: .*jetson-nano.*local"):
        find_profile("nope", PROFILES)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("transport: carrier-pigeon\n", "transport", "must be one of local, ssh"),
        ("transport: local\nthreads: many\n", "threads", "expected a number, got str"),
        ("transport: local\nthreads: -1\n", "threads", "must be at least 0"),
        ("transport: local\npower_sensor: {kind: lightning}\n", "power_sensor.kind", "must be one of"),
        ("transport: local\npower_sensor: {kind: command}\n", "power_sensor.command", "is required"),
        ("transport: ssh\n", "ssh", "is required"),
        ("transport: ssh\nssh: {host: h, user: u, password: x}\n", "ssh.password", "never stored"),
        ("transport: local\nthreds: 2\n", "threds", "unknown key"),
        ("transport: local\nthresholds: {speed: {max: 1}}\n", "thresholds.speed", "unknown metric"),
        ("transport: local\nthresholds: {decode_ms: {below: 1}}\n", "thresholds.decode_ms", "needs one of"),
        ("transport: local\nschema: 7\n", "schema", "not supported"),
        ("- just\n- a list\n", "", "expected a mapping at the top level"),
        ("transport: [unclosed\n", "", "not valid YAML: line"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path: Path, text: str, field: str, problem: str) -> None:
    path = tmp_path / "board.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert caught.value.field == field
    assert problem in str(caught.value)
    assert str(caught.value).startswith(str(path))
