"""Generic ONNX models: a tiny classifier this file writes with onnx.helper, named by a suite with
only its input shapes, built into fp32/fp16/int8 variants, measured through pytest on ``local``
and on a namespace SSH device; the agreement metrics against hand-made outputs; an ``.npz`` of
inputs; every bad input declaration a ConfigError naming the file and the field."""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgegate import jobs
from edgegate.errors import ConfigError
from edgegate.profiles import DeviceProfile
from edgegate.runner.generic import compare, item_cosines, max_relative_difference
from edgegate.suites import load_suite
from edgegate.transport import LocalTransport
from edgegate.variants.factory import VariantFactory
from onnx import TensorProto, helper, numpy_helper

CLASSES = 3
AGREEMENT = ("output_cosine_min", "output_top1_agreement", "output_max_abs_diff", "output_max_rel_diff")
TINY_SUITE = """\
schema: 1
name: tinycls
base_model: {{kind: onnx_file, path: tiny_cls.onnx}}
reference: fp32
variants:
  fp32: {{recipe: export_fp32}}
  fp16: {{recipe: fp16, thresholds: {{output_cosine_min: {{min: 0.999}}, output_top1_agreement: {{min: 0.9}}}}}}
  int8: {{recipe: int8_dynamic, thresholds: {{output_cosine_min: {{min: 0.9}}}}}}
  int8s: {{recipe: int8_static, params: {{calibration_windows: 2}}, thresholds: {{output_cosine_min: {{min: 0.9}}}}}}
measurements:
  infer:
{infer}
    warmup: 1
    min_samples: 5
    max_samples: 5
    target_ci: 0
# sub-millisecond runs of a tiny model move a lot between processes: this file checks other things
regressions: {{infer_ms: false}}
"""
DECLARED = """\
    inputs:
      x: {shape: [batch, 3, 8, 8], dtype: float32, range: [-1, 1]}
    dims: {batch: 16}"""


def build_tiny_classifier(path: Path, seed: int = 0, matmul: bool = True) -> Path:
    """x [batch, 3, 8, 8] -> Conv 3x3 (4 channels) -> Relu -> global average pool -> MatMul + Add ->
    Softmax: ``probs`` [batch, 3]; the pooled ``features`` [batch, 4] are a second output."""
    rng = np.random.default_rng(seed)
    weights = {"conv_w": rng.normal(0, 0.5, (4, 3, 3, 3)), "conv_b": rng.normal(0, 0.1, 4),
               "fc_w": rng.normal(0, 2.0, (4, CLASSES)), "fc_b": rng.normal(0, 0.1, CLASSES)}
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["features"])]
    if matmul:
        nodes += [helper.make_node("MatMul", ["features", "fc_w"], ["logits_nobias"]),
                  helper.make_node("Add", ["logits_nobias", "fc_b"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    else:
        weights = {k: v for k, v in weights.items() if k.startswith("conv")}
        nodes.append(helper.make_node("Softmax", ["features"], ["probs"], axis=1))
    classes = CLASSES if matmul else 4
    graph = helper.make_graph(
        nodes, "tiny_cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def write_suite(root: Path, infer: str = DECLARED, text: str = TINY_SUITE) -> Path:
    build_tiny_classifier(root / "suites" / "tiny_cls.onnx")
    path = root / "suites" / "suite_tinycls.yaml"
    path.write_text(text.format(infer=infer))
    return path


@pytest.fixture
def generic_project(pytester: pytest.Pytester) -> Path:
    from conftest import LOCAL_PROFILE

    root = pytester.path
    pytester.makeini("[pytest]\n")
    (root / "device_profiles").mkdir()
    (root / "device_profiles" / "local.yaml").write_text(LOCAL_PROFILE.format(work_dir=root / "device-work"))
    write_suite(root)
    return root


def history(root: Path, device: str) -> dict[tuple[str, str], tuple[float | None, str | None, str | None]]:
    with sqlite3.connect(root / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT variant, metric, value, note, samples FROM results WHERE device = ?", (device,))
        return {(variant, metric): (value, note, samples) for variant, metric, value, note, samples in rows}


# --- the whole path through pytest ------------------------------------------------------------

def test_a_suite_naming_only_the_file_and_its_inputs_is_built_measured_gated_and_reported(
        pytester: pytest.Pytester, generic_project: Path, shared_cache: Path) -> None:
    result = pytester.runpytest_subprocess("suites/", "--device", "local", "--edgegate-cache", str(shared_cache),
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    rows = history(generic_project, "local")
    for variant in ("fp32", "fp16", "int8", "int8s"):
        for name in ("size_mb", "load_ms", "load_rss_mb", "peak_rss_mb", "infer_ms", "infer_per_s", "infer_contention"):
            assert (variant, name) in rows, (variant, name)
        median, note, samples = rows[(variant, "infer_ms")]
        assert len(json.loads(samples)) == 5 and "x [16, 3, 8, 8] float32" in note
        assert rows[(variant, "infer_per_s")][0] == pytest.approx(16 / (median / 1e3))
    assert not any(("fp32", name) in rows for name in AGREEMENT)  # the reference only saves its outputs
    for variant in ("fp16", "int8", "int8s"):
        cosine, note, _ = rows[(variant, "output_cosine_min")]
        assert 0.9 < cosine <= 1.0 + 1e-9 and "probs:" in note and "features:" in note
        assert 0.0 <= rows[(variant, "output_max_abs_diff")][0] < 0.5
        top1, top1_note, _ = rows[(variant, "output_top1_agreement")]
        assert 0.0 <= top1 <= 1.0 and "/16" in top1_note
    fp16_diff = rows[("fp16", "output_max_abs_diff")][0]
    assert fp16_diff < 1e-2 and fp16_diff < min(rows[(v, "output_max_abs_diff")][0] for v in ("int8", "int8s"))
    html = (generic_project / "reports" / "latest.html").read_text()
    assert "output_cosine_min" in html and "infer_ms" in html and "Inference latency on local" in html


# --- the runner's agreement metrics, against hand-computed values -------------------------------

def test_agreement_metrics_follow_their_definitions() -> None:
    reference = {"probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5 - 1e-6]]),
                 "score": np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])}
    variant = {"probs": np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5 - 1e-6]]),
               "score": np.array([[2.0, 0.001], [0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])}
    metrics = {e["name"]: e for e in compare(variant, reference)}
    assert metrics["output_max_abs_diff"]["value"] == pytest.approx(0.2)
    # probs: |0.2 - 0.1| / 0.1 (row 0); score: 0.001 against the floor 1e-3 x 4 = 0.004, not against 0
    assert metrics["output_max_rel_diff"]["value"] == pytest.approx(1.0)
    assert metrics["output_max_rel_diff"]["note"] == "over 2 output(s): probs: 1; score: 0.25"
    expected_cosine = (0.4 * 0.6 + 0.6 * 0.4) / (np.hypot(0.4, 0.6) * np.hypot(0.6, 0.4))
    assert metrics["output_cosine_min"]["value"] == pytest.approx(expected_cosine)
    # row 3 of "probs" flips its top class; "score" [N, 2] agrees on every row but the all-zero tie
    assert metrics["output_top1_agreement"]["value"] == pytest.approx(0.75)
    assert "probs: 3/4" in metrics["output_top1_agreement"]["note"]
    assert item_cosines(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
    assert max_relative_difference(np.array([1.0, 1e-9]), np.array([1.0, 0.0])) == pytest.approx(1e-9 / 1e-3)


def test_outputs_without_a_class_axis_have_no_top1_and_say_why() -> None:
    metrics = {e["name"]: e for e in compare({"y": np.ones((4, 1))}, {"y": np.ones((4, 1))})}
    assert metrics["output_top1_agreement"]["value"] is None
    assert metrics["output_top1_agreement"]["note"].startswith("unavailable: no output is shaped [N, C]")
    assert metrics["output_cosine_min"]["value"] == pytest.approx(1.0)


# --- inputs from an .npz, and inputs too large to travel inline ---------------------------------

def local_device(work_dir: Path) -> DeviceProfile:
    return DeviceProfile(name="local", path=work_dir / "local.yaml", transport="local", python="auto",
                         work_dir=str(work_dir), threads=1)


def measured(transport: LocalTransport, job: dict) -> dict[str, dict]:
    events = list(transport.run_job(job, timeout_s=120))
    errors = [e for e in events if e["event"] == "error"]
    assert not errors, errors
    return {e["name"]: e for e in events if e["event"] == "metric"}


def built(suite_file: Path, cache: Path, names: tuple[str, ...]) -> tuple:
    suite = load_suite(suite_file)
    factory = VariantFactory(suite, cache)
    return suite, {name: factory.artifact(suite.variant(name)) for name in names}


def job_for(suite, device: DeviceProfile, transport: LocalTransport, artifacts: dict, name: str) -> dict:
    artifact = artifacts[name]
    job = jobs.job(suite, device, suite.variant(name), artifact, artifacts[suite.reference], True,
                   transport.device_path)
    job["model"] = str(artifact.model)
    return job


def test_shipped_npz_inputs_are_what_the_variants_are_fed(tmp_path: Path, shared_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = np.random.default_rng(7).uniform(0, 1, (5, 3, 8, 8)).astype(np.float32)
    (tmp_path / "suites").mkdir()
    np.savez(tmp_path / "suites" / "batch.npz", x=inputs)
    suite, artifacts = built(write_suite(tmp_path, "    inputs_npz: batch.npz"), shared_cache, ("fp32", "fp16"))
    device = local_device(tmp_path / "device")
    transport = LocalTransport(device)
    reference = measured(transport, job_for(suite, device, transport, artifacts, "fp32"))
    assert "x [5, 3, 8, 8] float32" in reference["infer_ms"]["note"]
    saved = next((tmp_path / "device" / "outputs").glob("*.npz"))
    expected = ort.InferenceSession(str(artifacts["fp32"].model)).run(None, {"x": inputs})
    with np.load(saved) as archive:
        np.testing.assert_array_equal(archive["probs"], expected[0])
    monkeypatch.setattr(jobs, "INLINE_INPUTS_BYTES", 0)  # the inputs now travel as a file of their own
    job = job_for(suite, device, transport, artifacts, "fp16")
    assert "npz_base64" not in job["inputs"]
    unstaged = list(transport.run_job(job, timeout_s=120))
    assert any("did not upload them" in e.get("message", "") for e in unstaged if e["event"] == "error")
    jobs.stage_files(job, transport)
    fp16 = measured(transport, job)
    assert fp16["output_cosine_min"]["value"] > 0.999 and fp16["output_top1_agreement"]["value"] == 1.0


def test_int8_static_calibrates_on_a_shipped_npz_checked_like_the_inputs(tmp_path: Path, shared_cache: Path) -> None:
    path = write_suite(tmp_path, text=TINY_SUITE.replace("params: {{calibration_windows: 2}}",
                                                         "params: {{calibration: calib.npz}}"))
    calibration = np.random.default_rng(3).uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)
    np.savez(path.parent / "calib.npz", x=calibration)
    suite = load_suite(path)
    artifact = VariantFactory(suite, shared_cache).artifact(suite.variant("int8s"))
    assert artifact.manifest["facts"]["calibration_windows"] == 1 and "calibration" in artifact.manifest["param_files"]
    assert artifact.manifest["facts"]["quantized_ops"].get("QuantizeLinear", 0) > 0
    np.savez(path.parent / "calib.npz", x=calibration[:, :2])  # two channels where the model takes three
    with pytest.raises(ConfigError) as caught:
        VariantFactory(load_suite(path), shared_cache).artifact(suite.variant("int8s"))
    assert caught.value.field == "variants.int8s.params.calibration[x]"
    assert "dimension 1 is 2; the model's input 'x' fixes it at 3" in caught.value.problem


# --- bad input declarations ---------------------------------------------------------------------

BAD_AT_LOAD = [
    ("    inputs:\n      x: {shape: [batch, 0, 8, 8]}\n    dims: {batch: 2}", "measurements.infer.inputs.x.shape[1]",
     "whole number >= 1 or a dimension name"),
    ("    inputs:\n      x: {shape: [2, 3, 8, 8], dtype: float31}", "measurements.infer.inputs.x.dtype", "must be one of"),
    ("    inputs:\n      x: {shape: [2, 3, 8, 8], range: [1, 0]}", "measurements.infer.inputs.x.range", "low < high"),
    ("    inputs:\n      x: {shape: [2, 3, 8, 8], colour: red}", "measurements.infer.inputs.x.colour", "unknown key"),
    ("    inputs_npz: nowhere.npz", "measurements.infer.inputs_npz", "does not exist"),
    ("    inputs_npz: ../../escape.npz", "measurements.infer.inputs_npz", "escapes the suite's folder"),
    ("    inputs_npz: b.npz\n    inputs:\n      x: {shape: [2, 3, 8, 8]}", "measurements.infer.inputs_npz", "not both"),
    ("    dims: {batch: 2}", "measurements.infer.dims", "give inputs"),
    ("    seed: 1", "measurements.infer.seed", "give inputs"),
    ("    max_seconds: 1", "measurements.infer", "needs its inputs"),
]
BAD_FOR_THE_GRAPH = [
    ("    inputs:\n      x: {shape: [2, 3, 8, 8]}\n      y: {shape: [2]}", "measurements.infer.inputs.y",
     "the model has no input 'y'; its inputs: x [batch, 3, 8, 8] float32"),
    ("    inputs:\n      x: {shape: [2, 3, 8]}", "measurements.infer.inputs.x.shape",
     "has 3 dimensions; the model's input 'x' has 4"),
    ("    inputs:\n      x: {shape: [2, 4, 8, 8]}", "measurements.infer.inputs.x.shape",
     "dimension 1 is 4; the model's input 'x' fixes it at 3"),
    ("    inputs:\n      x: {shape: [batch, 3, 8, 8]}", "measurements.infer.inputs.x.shape",
     "dimension 'batch' (position 0) has no value"),
    ("    inputs:\n      x: {shape: [batch, 3, 8, 8]}\n    dims: {batch: 2, height: 8}", "measurements.infer.dims.height",
     "names no dimension"),
    ("    inputs:\n      x: {shape: [2, 3, 8, 8], dtype: int64}", "measurements.infer.inputs.x.dtype",
     "int64 given; the model's input 'x' takes float32"),
    ("    inputs_npz: b.npz", "measurements.infer.inputs_npz", "b.npz has no array for x and holds z"),
]


def _declare(tmp_path: Path, infer: str):
    (tmp_path / "suites").mkdir(exist_ok=True)
    np.savez(tmp_path / "suites" / "b.npz", z=np.zeros((2, 3, 8, 8), dtype=np.float32))
    return write_suite(tmp_path, infer)


@pytest.mark.parametrize(("infer", "field", "problem"), BAD_AT_LOAD)
def test_a_malformed_declaration_fails_the_suite_naming_its_field(tmp_path: Path, infer: str, field: str,
                                                                  problem: str) -> None:
    path = _declare(tmp_path, infer)
    with pytest.raises(ConfigError) as caught:
        load_suite(path)
    assert (caught.value.path, caught.value.field) == (path, field) and problem in caught.value.problem


@pytest.mark.parametrize(("infer", "field", "problem"), BAD_FOR_THE_GRAPH)
def test_a_declaration_the_graph_does_not_take_fails_naming_its_field(tmp_path: Path, infer: str, field: str,
                                                                      problem: str) -> None:
    from edgegate.generic_inputs import arrays

    path = _declare(tmp_path, infer)
    suite = load_suite(path)
    with pytest.raises(ConfigError) as caught:
        arrays(suite.infer.inputs, path.parent / "tiny_cls.onnx")
    assert (caught.value.path, caught.value.field) == (path, field) and problem in caught.value.problem, caught.value


def test_infer_on_a_language_model_suite_and_a_package_path_escaping_are_refused(tmp_path: Path) -> None:
    suite = tmp_path / "suite_x.yaml"
    suite.write_text("schema: 1\nbase_model: {kind: hf_dir, path: m}\nreference: a\nvariants: {a: {recipe: export_fp32}}\n"
                     "measurements: {infer: {warmup: 1}}\n")
    with pytest.raises(ConfigError, match=r"measurements.infer: measures generic ONNX models .* this base model is a hf_dir"):
        load_suite(suite)
    suite.write_text("schema: 1\nbase_model: {kind: onnx_package, package: p, file: ../m.onnx}\nreference: a\n"
                     "variants: {a: {recipe: export_fp32}}\nmeasurements: {infer: {inputs: {x: {shape: [1]}}}}\n")
    with pytest.raises(ConfigError, match=r"base_model.file: must be an .onnx file inside the package"):
        load_suite(suite)


def test_int4_does_not_apply_to_a_graph_without_matmul_weights(tmp_path: Path, shared_cache: Path) -> None:
    path = write_suite(tmp_path, text=TINY_SUITE.replace("int8: {{recipe: int8_dynamic",
                                                         "int4: {{recipe: int4_weight_only").replace("int8s:", "# "))
    build_tiny_classifier(path.parent / "tiny_cls.onnx", matmul=False)
    suite = load_suite(path)
    with pytest.raises(ConfigError) as caught:
        VariantFactory(suite, shared_cache).artifact(suite.variant("int4"))
    assert caught.value.field == "variants.int4.recipe"
    assert caught.value.problem.startswith("int4_weight_only does not apply to this base model: the graph has no MatMul")


def test_the_shipped_ocr_suite_declares_what_its_model_takes() -> None:
    import importlib.metadata

    from edgegate.generic_inputs import arrays
    from edgegate.variants.base_models import locate

    suite = load_suite(Path(__file__).resolve().parent.parent / "suites" / "suite_ocr_cls.yaml")
    try:
        importlib.metadata.distribution(suite.base_model.package or "")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{suite.base_model.package} is not installed (pip install --no-deps rapidocr-onnxruntime==1.4.4)")
    base = locate(suite.base_model)
    fed = arrays(suite.infer.inputs, base.folder / (base.onnx_file or ""))
    assert list(fed) == ["x"] and fed["x"].shape == (32, 3, 48, 192) and fed["x"].dtype == np.float32
    assert -1.0 <= fed["x"].min() < -0.99 and 0.99 < fed["x"].max() < 1.0


# --- a namespace SSH device ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def namespace_device(tmp_path_factory: pytest.TempPathFactory):
    sshdevices = pytest.importorskip("sshdevices")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("generic-farm"), prefix="eggen") as farm:
        if not farm.uses_namespaces:
            pytest.skip("namespace devices need root and `ip netns`")
        device = farm.start("gen")
        yield device, this_venv_python(device)


def this_venv_python(device) -> str:
    """The system python of this venv's version with this venv's packages: a device ready in a
    second (`edgegate devices setup` takes a minute); the runner itself is deployed as usual."""
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not base.exists():
        pytest.skip(f"{base} (this venv's Python version) is not installed for the device to use")
    wrapper = device.home / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(sysconfig.get_paths()["purelib"])} exec {base} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_a_generic_suite_runs_on_a_namespace_device(namespace_device, pytester: pytest.Pytester,
                                                    generic_project: Path, shared_cache: Path) -> None:
    device, python = namespace_device
    (generic_project / "device_profiles" / "gen.yaml").write_text(device.profile_yaml(python=python))
    result = pytester.runpytest_subprocess("suites/", "--device", "gen", "--edgegate-cache", str(shared_cache),
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    rows = history(generic_project, "gen")
    assert all((variant, "infer_ms") in rows for variant in ("fp32", "fp16", "int8", "int8s"))
    assert rows[("fp16", "output_cosine_min")][0] > 0.999
    saved = list((device.home / "edgegate" / "outputs").glob("*.npz"))
    assert len(saved) == 1  # the reference's outputs, on the device
