from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.logger import Logger
from pytest_benchmark.storage.file import FileStorage

from edgegate.benchjson import write_run
from edgegate.store import HistoryStore, RunInfo

DECODE = {"fp32": [10.0, 11.0, 12.0, 30.0], "int4": [5.0, 6.0, 7.0]}
PREFILL = {"fp32": [40.0, 41.0, 42.0], "int4": [20.0, 21.0, 22.0]}
HOST = {"python": "3.11.9", "platform": "Linux-6.1-x86_64-with-glibc2.36", "machine": "x86_64",
        "cpu_model": "Test CPU", "logical_cpus": 8}


def _record_run(store: HistoryStore, run_id: str, commit: str = "abc123-dirty", branch: str | None = None,
                environment: dict[str, Any] | None = None) -> None:
    devices = ("local", "nsdev")
    store.start_run(RunInfo(run_id, "2026-01-01T00:00:00+00:00", commit, ("tiny",), devices,
                            {"host": HOST, **(environment or {})}, branch=branch))
    rows: list[dict[str, Any]] = []
    for device in devices:
        for variant in ("fp32", "int4"):
            common = {"run_id": run_id, "suite": "tiny", "device": device, "variant": variant}
            rows += [
                {**common, "metric": "prefill_ms", "value": statistics.median(PREFILL[variant]), "unit": "ms",
                 "samples": PREFILL[variant]},
                {**common, "metric": "decode_ms", "value": statistics.median(DECODE[variant]), "unit": "ms",
                 "samples": DECODE[variant]},
                {**common, "metric": "size_mb", "value": 4.0 if variant == "fp32" else 1.0, "unit": "MB"},
                {**common, "metric": "perplexity", "value": 12.5, "unit": ""},
                {**common, "metric": "power_w", "value": None, "unit": "W", "note": "unavailable: no sensor"},
            ]
    store.append_results(rows)
    store.finish_run(run_id, "2026-01-01T00:01:00+00:00", 0)


@pytest.fixture()
def written(tmp_path: Path) -> tuple[HistoryStore, Path, list[Path]]:
    store = HistoryStore(tmp_path / "h.sqlite")
    _record_run(store, "r1")
    storage = tmp_path / ".benchmarks"
    return store, storage, write_run(store, "r1", storage)


def _bench(path: Path, name: str) -> dict[str, Any]:
    (bench,) = [b for b in json.loads(path.read_text())["benchmarks"] if b["name"] == name]
    return bench


def test_one_file_per_device_numbered_like_pytest_benchmark(written: tuple[HistoryStore, Path, list[Path]]) -> None:
    store, storage, paths = written
    assert [p.relative_to(storage).as_posix() for p in paths] == [
        "edgegate-local/0001_r1.json", "edgegate-nsdev/0001_r1.json"]
    _record_run(store, "r2")
    second = write_run(store, "r2", storage)
    assert [p.relative_to(storage).as_posix() for p in second] == [
        "edgegate-local/0002_r2.json", "edgegate-nsdev/0002_r2.json"]


def test_stats_are_pytest_benchmarks_own_in_seconds(written: tuple[HistoryStore, Path, list[Path]]) -> None:
    _, _, (local, _) = written
    stats = _bench(local, "decode_ms[fp32]")["stats"]
    assert stats["median"] == pytest.approx(0.0115)
    assert stats["rounds"] == 4 and stats["iterations"] == 1
    assert stats["data"] == pytest.approx([0.010, 0.011, 0.012, 0.030])
    assert stats["min"] == pytest.approx(0.010) and stats["max"] == pytest.approx(0.030)
    assert stats["ops"] == pytest.approx(4 / 0.063)
    assert set(stats) == {"min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "iqr_outliers",
                          "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "ops", "total", "data", "iterations"}


def test_entries_carry_names_params_and_single_values(written: tuple[HistoryStore, Path, list[Path]]) -> None:
    _, _, (local, nsdev) = written
    document = json.loads(nsdev.read_text())
    assert sorted(b["name"] for b in document["benchmarks"]) == [
        "decode_ms[fp32]", "decode_ms[int4]", "prefill_ms[fp32]", "prefill_ms[int4]"]
    bench = _bench(nsdev, "prefill_ms[int4]")
    assert bench["group"] == "tiny:prefill_ms" and bench["fullname"] == "tiny::int4[nsdev]::prefill_ms"
    assert bench["params"] == {"variant": "int4", "device": "nsdev", "suite": "tiny"} and bench["param"] == "int4"
    assert bench["extra_info"]["size_mb"] == 1.0 and bench["extra_info"]["size_mb_unit"] == "MB"
    assert bench["extra_info"]["power_w"] is None and bench["extra_info"]["power_w_note"] == "unavailable: no sensor"
    assert "decode_ms" not in bench["extra_info"]
    assert document["commit_info"]["id"] == "abc123" and document["commit_info"]["dirty"] is True
    assert document["machine_info"]["node"] == "nsdev" and document["machine_info"]["cpu"]["brand_raw"] is None
    assert json.loads(local.read_text())["machine_info"]["cpu"] == {"brand_raw": "Test CPU", "count": 8}


def test_pytest_benchmarks_file_storage_loads_them(written: tuple[HistoryStore, Path, list[Path]]) -> None:
    _, storage, _ = written
    loaded = list(FileStorage(storage, logger=Logger(Logger.QUIET)).load_benchmarks("edgegate-*/0001"))
    assert sorted(b["name"] for b in loaded if b["params"]["device"] == "nsdev") == [
        "decode_ms[fp32]", "decode_ms[int4]", "prefill_ms[fp32]", "prefill_ms[int4]"]
    assert {b["source"] for b in loaded} == {"edgegate-local/0001_r1", "edgegate-nsdev/0001_r1"}
    assert loaded[0]["median"] > 0  # stats were flattened in, as the loader does for its own files


def _cli(cwd: Path, *args: str) -> str:
    cli = Path(sys.executable).with_name("pytest-benchmark")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "pytest_benchmark"]
    done = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_pytest_benchmark_compare_reads_both_devices(written: tuple[HistoryStore, Path, list[Path]],
                                                      tmp_path: Path) -> None:
    _, _, (local, nsdev) = written
    table = _cli(tmp_path, "compare", str(local), str(nsdev))
    assert table.count("decode_ms[int4]") == 2 and table.count("prefill_ms[fp32]") == 2
    assert "local/0001_r1" in table and "nsdev/0001_r1" in table
    assert "Median" in table and "Rounds" in table


def test_compare_groups_and_columns_work(written: tuple[HistoryStore, Path, list[Path]], tmp_path: Path) -> None:
    _, storage, _ = written
    table = _cli(tmp_path, "--storage", str(storage), "compare", "--group-by=group", "--columns=min,median,max",
                     "edgegate-*/0001")
    assert "benchmark 'tiny:decode_ms'" in table and "benchmark 'tiny:prefill_ms'" in table
    headers = [line.split()[4:] for line in table.splitlines() if line.startswith("Name (time in ms)")]
    assert headers == [["Min", "Median", "Max"]] * 2
    assert table.count("decode_ms[fp32]") == 2


def test_compare_between_two_runs_of_one_device(written: tuple[HistoryStore, Path, list[Path]], tmp_path: Path) -> None:
    store, storage, _ = written
    _record_run(store, "r2")
    write_run(store, "r2", storage)
    table = _cli(tmp_path, "--storage", str(storage), "compare", "--between=median", "edgegate-nsdev/*")
    assert "0001_r1 Median" in table and "0002_r2 Median" in table and "ΔMedian" in table
    assert "decode_ms[fp32]" in table and "11.5000" in table


# --- every field from what the run recorded, or null and why ------------------------------------------

# What devicecheck's probe records for a device (its keys, not the host manifest's).
PROBED = {"python": "3.10.12", "executable": "/home/edge/venv/bin/python", "machine": "aarch64", "system": "Linux",
          "kernel": "5.15.136-tegra", "cpu_count": 6, "cpu_model": "ARMv8 Processor rev 1 (v8l)",
          "python_implementation": "CPython"}


def _document(store: HistoryStore, storage: Path, run_id: str, device: str) -> dict[str, Any]:
    (path,) = [p for p in write_run(store, run_id, storage) if p.parent.name == f"edgegate-{device}"]
    return json.loads(path.read_text())


def test_branch_is_the_runs_row_and_null_with_the_reason_where_none_was_recorded(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    _record_run(store, "r1", branch="feature/int4")
    _record_run(store, "r2")
    assert _document(store, tmp_path / "b", "r1", "nsdev")["commit_info"]["branch"] == "feature/int4"
    assert "commit_info.branch" not in _document(store, tmp_path / "b", "r1", "nsdev")["edgegate_unrecorded"]
    unrecorded = _document(store, tmp_path / "b", "r2", "nsdev")
    assert unrecorded["commit_info"]["branch"] is None
    assert "recorded no branch" in unrecorded["edgegate_unrecorded"]["commit_info.branch"]


def test_interpreter_comes_from_the_devices_recorded_facts_or_is_null_with_the_reason(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    _record_run(store, "r1", environment={"devices": {"nsdev": PROBED}})
    probed = _document(store, tmp_path / "b", "r1", "nsdev")["machine_info"]
    assert probed["python_implementation"] == "CPython" and probed["python_implementation_version"] == "3.10.12"
    assert probed["python_version"] == "3.10.12" and probed["machine"] == "aarch64"
    assert probed["system"] == "Linux" and probed["release"] == "5.15.136-tegra"
    assert probed["cpu"] == {"brand_raw": "ARMv8 Processor rev 1 (v8l)", "count": 6}
    host = _document(store, tmp_path / "b", "r1", "local")  # the host manifest records no implementation
    assert host["machine_info"]["python_version"] == "3.11.9"
    assert host["machine_info"]["python_implementation"] is None  # not guessed "CPython"
    assert host["machine_info"]["python_implementation_version"] is None
    assert "implementation" in host["edgegate_unrecorded"]["machine_info.python_implementation"]


def test_warmup_and_gc_are_null_with_the_reason_where_the_run_recorded_none(
        written: tuple[HistoryStore, Path, list[Path]]) -> None:
    _, _, (local, _) = written
    options = _bench(local, "decode_ms[fp32]")["options"]
    assert options["warmup"] is None and options["warmup_iterations"] is None and options["disable_gc"] is None
    assert options["min_rounds"] == 4 and options["timer"] == "time.perf_counter_ns (on device)"
    why = json.loads(local.read_text())["edgegate_unrecorded"]
    assert "warm-up" in why["benchmarks.options.warmup"] and "garbage collector" in why["benchmarks.options.disable_gc"]


def test_warmup_and_gc_come_from_the_variants_recorded_settings(tmp_path: Path) -> None:
    settings = {"tiny/nsdev/fp32": {"warmup": {"decode": 3, "prefill": 0}, "gc_enabled": True},
                "tiny/nsdev/int4": {"warmup": {"decode": 1}, "gc_enabled": False}}
    store = HistoryStore(tmp_path / "h.sqlite")
    _record_run(store, "r1", environment={"variants": settings})
    storage = tmp_path / "b"
    nsdev = next(p for p in write_run(store, "r1", storage) if p.parent.name == "edgegate-nsdev")
    decode, prefill = _bench(nsdev, "decode_ms[fp32]")["options"], _bench(nsdev, "prefill_ms[fp32]")["options"]
    assert (decode["warmup"], decode["warmup_iterations"], decode["disable_gc"]) == (True, 3, False)
    assert (prefill["warmup"], prefill["warmup_iterations"], prefill["disable_gc"]) == (False, 0, False)
    unwarmed = _bench(nsdev, "prefill_ms[int4]")["options"]  # int4 recorded no prefill warm-up
    assert unwarmed["warmup_iterations"] is None and unwarmed["disable_gc"] is True
    why = json.loads(nsdev.read_text())["edgegate_unrecorded"]
    assert "benchmarks.options.warmup" in why and "benchmarks.options.disable_gc" not in why
    table = _cli(tmp_path, "compare", str(nsdev))  # pytest-benchmark still reads it
    assert table.count("decode_ms[int4]") == 1
