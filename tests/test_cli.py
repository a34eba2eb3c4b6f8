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


def test_baseline_pin_wins_then_unpin_returns_to_last_passing(tmp_path: Path) -> None:
    from edgegate.store import HistoryStore, RunInfo

    store = HistoryStore(tmp_path / "h.sqlite")
    for run_id, started in (("old", "2026-01-01T00:00:00Z"), ("new", "2026-01-02T00:00:00Z")):
        store.start_run(RunInfo(run_id, started, "abc", ("s",), ("local",), {}, branch="main"))
        store.append_verdict({"run_id": run_id, "time": started, "suite": "s", "device": "local",
                              "variant": "int4", "passed": True})
        store.finish_run(run_id, started, 0)
    history = ["--history", str(tmp_path / "h.sqlite")]
    lines: list[str] = []
    main_args = ["baseline", "show", "s", "local", "int4", *history]
    assert main(main_args) == 0
    from edgegate.cli.baseline import run as baseline_run

    baseline_run(parser().parse_args(["baseline", "pin", "s", "local", "int4", "old", *history]), lines.append)
    baseline_run(parser().parse_args(["baseline", "unpin", "s", "local", "int4", *history]), lines.append)
    assert lines == ["s/local/int4: old (pinned)", "s/local/int4: new (last clean passing run on main/master)"]
