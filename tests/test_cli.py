from __future__ import annotations

from pathlib import Path

import pytest

from edgegate.cli.__main__ import main, parser
from edgegate.cli.devices import run

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"


def test_devices_list_names_every_profile() -> None:
    lines: list[str] = []
    assert run(parser().parse_args(["devices", "list", "--profiles", str(PROFILES)]), lines.append) == 0
    assert {line.split("\t")[0] for line in lines} >= {"local", "jetson-nano", "jetson-orin-nano", "raspberry-pi-5"}


def test_devices_check_local_reports_ready() -> None:
    lines: list[str] = []
    assert run(parser().parse_args(["devices", "check", "local", "--profiles", str(PROFILES)]), lines.append) == 0
    assert lines[-1].startswith("device local is ready: python ")
    assert "onnxruntime" in lines[-1] and "CPUExecutionProvider" in lines[-1]


def test_unknown_device_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "check", "nope", "--profiles", str(PROFILES)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgegate: ") and "unknown device 'nope'; registered devices:" in err
    assert "Traceback" not in err
