"""The content-addressed cache: unchanged recipes are reused, a changed parameter rebuilds one."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from edgegate.errors import BuildError
from edgegate.suites import load_suite
from edgegate.variants.factory import VariantFactory

pytestmark = pytest.mark.slow


def test_unchanged_recipe_is_reused_quickly(tiny_artifacts: dict, tiny_suite_file: Path, shared_cache: Path) -> None:
    suite = load_suite(tiny_suite_file)
    started = time.perf_counter()
    again = VariantFactory(suite, shared_cache).artifact(suite.variant("int4"))
    assert time.perf_counter() - started < 5
    assert again.key == tiny_artifacts["int4"].key and again.folder == tiny_artifacts["int4"].folder
    manifest = again.manifest
    assert manifest["recipe"] == "int4_weight_only" and manifest["params"]["block_size"] == 32
    assert manifest["files"]["model.onnx"]["bytes"] == again.model.stat().st_size
    assert manifest["facts"]["quantized_ops"]["MatMulNBits"] > 0


def test_changed_parameter_rebuilds_only_that_variant(tiny_artifacts: dict, tiny_suite_file: Path, shared_cache: Path) -> None:
    suite = load_suite(tiny_suite_file)
    logged: list[str] = []
    factory = VariantFactory(suite, shared_cache, logged.append)
    changed = dataclasses.replace(suite.variant("int4"), params={"block_size": 16})
    artifact = factory.artifact(changed)
    assert artifact.key != tiny_artifacts["int4"].key
    builds = [line for line in logged if line.startswith("building")]
    assert len(builds) == 1 and builds[0].startswith("building int4_weight_only {'block_size': 16")


def test_unknown_recipe_parameter_is_refused(tiny_suite_file: Path, shared_cache: Path) -> None:
    suite = load_suite(tiny_suite_file)
    wrong = dataclasses.replace(suite.variant("int4"), params={"blocksize": 16})
    with pytest.raises(BuildError, match="has no parameter 'blocksize'; it takes block_size"):
        VariantFactory(suite, shared_cache).artifact(wrong)


def _slow_build(out: Path, log: Path) -> dict:
    with open(log, "a") as calls:
        calls.write("built\n")
    time.sleep(0.5)
    (out / "model.onnx").write_bytes(b"not really a model")
    return {"recipe": "test"}


def _build_in_child(folder: str, log: str) -> None:
    from edgegate.variants.cache import build_once

    build_once(Path(folder), lambda out: _slow_build(out, Path(log)))


def test_concurrent_builds_of_one_variant_build_it_once(tmp_path: Path) -> None:
    """xdist workers on a cold cache ask for the same variant at once: one builds, the others wait."""
    import multiprocessing

    folder, log = tmp_path / "variants" / "test-0123", tmp_path / "calls.log"
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_build_in_child, args=(str(folder), str(log))) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert log.read_text().count("built") == 1
    assert (folder / "manifest.json").is_file()


def test_fp16_graph_is_topologically_sorted_for_the_onnx_checker(
        tmp_path: Path, tiny_model_dir: Path, shared_cache: Path) -> None:
    """onnxruntime's fp16 converter appends its input casts last; onnxruntime runs that, but
    onnx.checker and bring_your_own refuse it, so the recipe sorts the graph."""
    import shutil

    import onnx

    shutil.copytree(tiny_model_dir, tmp_path / "tiny_model")
    (tmp_path / "suite_fp16.yaml").write_text(
        "schema: 1\nname: half\nbase_model: {kind: hf_dir, path: tiny_model}\nreference: fp32\n"
        "variants:\n  fp32: {recipe: export_fp32}\n  fp16: {recipe: fp16}\n")
    suite = load_suite(tmp_path / "suite_fp16.yaml")
    artifact = VariantFactory(suite, shared_cache).artifact(suite.variant("fp16"))
    onnx.checker.check_model(onnx.load(str(artifact.model)))
