"""Issue-6 numbers: stopping rule, contention, power through the runner, thermal, roofline."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegate.profiles import DeviceProfile
from edgegate.runner.disturbance import RegionMonitor
from edgegate.runner.timing import StopRule, median_ci
from edgegate.transport import LocalTransport
from edgegate.variants.graph_passes import weight_bytes_per_token


def test_stop_rule_respects_minimum_caps_and_target() -> None:
    rule = StopRule(min_samples=5, max_samples=50, max_seconds=10, target_ci=0.01)
    steady = [100.0 + 0.01 * (i % 3) for i in range(5)]
    assert rule.verdict(steady[:4], 0.1) is None  # below the minimum, even if stable
    assert rule.verdict(steady, 0.1) == "median CI within +/-1.0%"
    noisy = list(np.random.default_rng(0).lognormal(4, 0.5, size=20))
    assert rule.verdict(noisy, 0.1) is None
    assert rule.verdict(noisy, 11.0) == "time cap 10 s"
    assert rule.verdict(noisy * 3, 0.1) == "count cap 50"
    fixed = StopRule.from_job({"repetitions": 3}, per_round=4)
    assert (fixed.min_samples, fixed.max_samples, fixed.verdict([1.0] * 12, 0)) == (12, 12, "count cap 12")


def test_median_interval_covers_the_median_and_narrows() -> None:
    rng = np.random.default_rng(3)
    few, many = rng.normal(50, 5, 15), rng.normal(50, 5, 1500)
    low, high = median_ci(few)
    assert low <= np.median(few) <= high
    assert np.subtract(*median_ci(many)[::-1]) < (high - low) / 3


def test_contention_sees_another_busy_process() -> None:
    def share_during(busy: bool) -> float:
        other = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"]) if busy else None
        with RegionMonitor() as meter:
            time.sleep(0.6)
        if other:
            other.wait()
        return meter.contention

    quiet, busy = share_during(False), share_during(True)
    assert busy > quiet + 0.2, (quiet, busy)


def test_weight_bytes_skip_gathered_tables() -> None:
    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")
    weight = numpy_helper.from_array(np.zeros((8, 4), np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"]), helper.make_node("MatMul", ["emb", "weight"], ["y"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [table, weight])
    assert weight_bytes_per_token(helper.make_model(graph)) == 8 * 4 * 4


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.slow
def test_runner_samples_power_and_reads_thermal_state(tiny_artifacts: dict, tmp_path: Path) -> None:
    """The sysfs tree copies the kernel's thermal layout (no such hardware on CI)."""
    sysfs = tmp_path / "sysfs"
    write(sysfs, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(sysfs, "sys/class/thermal/thermal_zone0/temp", "91000\n")
    write(sysfs, "sys/class/thermal/thermal_zone0/trip_point_0_temp", "85000\n")
    write(sysfs, "sys/class/thermal/thermal_zone0/trip_point_0_type", "passive\n")
    job = {"model": str(tiny_artifacts["fp32"].model), "providers": ["CPUExecutionProvider"], "threads": 1,
           "sysfs_root": str(sysfs), "power": {"kind": "command", "command": f"{sys.executable} -c 'print(3.5)'"},
           "measurements": {"decode": {"prompt_ids": list(range(5, 15)), "tokens": 4, "warmup": 0,
                                       "min_samples": 8, "max_samples": 40, "max_seconds": 2, "target_ci": 0.0}}}
    transport = LocalTransport(DeviceProfile(name="local", path=tmp_path / "p.yaml", transport="local", python="auto",
                                             work_dir=str(tmp_path)))
    events = list(transport.run_job(job, timeout_s=120))
    metrics = {e["name"]: e for e in events if e["event"] == "metric"}
    assert metrics["power_w"]["value"] == pytest.approx(3.5, rel=0.05)
    assert metrics["power_idle_w"]["value"] == pytest.approx(3.5, rel=0.05)
    step_s = np.mean(metrics["decode_ms"]["samples"]) / 1e3
    assert metrics["energy_per_token_j"]["value"] == pytest.approx(3.5 * step_s, rel=0.06)
    assert metrics["temp_max_c"]["value"] == 91.0
    assert metrics["thermal_warnings"]["value"] >= 1 and "cpu-thermal" in metrics["thermal_warnings"]["note"]
    assert 0.0 <= metrics["decode_contention"]["value"] <= 1.0
    assert "stopped at n=8: fixed count 8" in metrics["decode_ms"]["note"]
