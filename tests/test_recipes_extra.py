"""Pruning, distillation, imported students and bring-your-own models, on the tiny Llama."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgegate.errors import ConfigError
from edgegate.profiles import DeviceProfile
from edgegate.suites import load_suite
from edgegate.transport import LocalTransport
from edgegate.variants.factory import Artifact, VariantFactory
from onnx import numpy_helper

pytestmark = pytest.mark.slow

SUITE = """\
schema: 1
name: extra
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  pruned: {recipe: prune_magnitude, params: {sparsity: 0.5}}
  pruned_global: {recipe: prune_magnitude, params: {sparsity: 0.3, scope: global}}
  pruned_2_4: {recipe: prune_magnitude, params: {pattern: "2:4"}}
  pruned_int8: {recipe: int8_dynamic, parent: pruned}
  student: {recipe: distill, params: {steps: 12, seq_len: 32, batch_size: 4, learning_rate: 0.001}}
"""
CAUSAL_LM = {"inputs": {"input_ids": {"dtype": "int64", "rank": 2}, "attention_mask": None, "past_key_values.*": None},
             "outputs": ["logits", "present.*"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("extra") / "suites"
    shutil.copytree(tiny_model_dir, root / "tiny_model")
    (root / "suite_extra.yaml").write_text(SUITE)
    return root


@pytest.fixture(scope="module")
def built(project: Path, shared_cache: Path) -> dict[str, Artifact]:
    suite = load_suite(project / "suite_extra.yaml")
    factory = VariantFactory(suite, shared_cache)
    return {variant.name: factory.artifact(variant) for variant in suite.variants}


def write_suite(project: Path, name: str, variant: str) -> Path:
    path = project / f"suite_{name}.yaml"
    path.write_text(f"schema: 1\nbase_model: {{kind: hf_dir, path: tiny_model}}\nreference: fp32\n"
                    f"variants:\n  fp32: {{recipe: export_fp32}}\n  {variant}\n")
    return path


def build(suite_file: Path, cache: Path, variant: str) -> Artifact:
    suite = load_suite(suite_file)
    return VariantFactory(suite, cache).artifact(suite.variant(variant))


def weights(model_path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def changed_tensors(parent: Path, child: Path) -> dict[str, np.ndarray]:
    before, after = weights(parent), weights(child)
    return {name: array for name, array in after.items() if not np.array_equal(array, before[name])}


def logits(model_path: Path, ids: list[int]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {"input_ids": np.array([ids], dtype=np.int64),
                                    "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    for value in session.get_inputs():
        if value.name.startswith("past_key_values."):
            _, heads, _, head_dim = value.shape
            feeds[value.name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
    return session.run(["logits"], feeds)[0]


@pytest.mark.parametrize(("variant", "target"), [("pruned", 0.5), ("pruned_global", 0.3)])
def test_unstructured_pruning_reaches_its_target(built: dict[str, Artifact], variant: str, target: float) -> None:
    pruned = changed_tensors(built["fp32"].model, built[variant].model)
    zeros = sum(int((array == 0).sum()) for array in pruned.values())
    total = sum(array.size for array in pruned.values())
    assert len(pruned) == built[variant].manifest["facts"]["pruned_tensors"] > 0
    assert abs(zeros / total - target) < 0.01
    assert built[variant].manifest["facts"]["achieved_sparsity_pruned"] == pytest.approx(zeros / total)
    assert built[variant].manifest["facts"]["target_sparsity"] == target


def test_lm_head_and_embedding_are_left_whole(built: dict[str, Artifact]) -> None:
    vocab = logits(built["fp32"].model, [5]).shape[-1]
    pruned = changed_tensors(built["fp32"].model, built["pruned"].model)
    assert all(vocab not in array.shape for array in pruned.values())


def test_2_4_pruning_leaves_two_zeros_in_every_group_of_four(built: dict[str, Artifact]) -> None:
    pruned = changed_tensors(built["fp32"].model, built["pruned_2_4"].model)
    assert pruned
    for array in pruned.values():  # MatMul weights are stored [in, out]: groups run along axis 0
        groups = array.T.reshape(array.shape[1], -1, 4)
        assert ((groups == 0).sum(axis=-1) >= 2).all()
    assert built["pruned_2_4"].manifest["facts"]["groups_of_4_with_2_zeros"] == 1.0


def test_pruned_models_run_and_differ_from_the_parent(built: dict[str, Artifact]) -> None:
    ids = list(range(5, 21))
    reference = logits(built["fp32"].model, ids)
    for name in ("pruned", "pruned_2_4", "pruned_int8"):
        out = logits(built[name].model, ids)
        assert out.shape == reference.shape and np.isfinite(out).all()
        assert np.abs(out - reference).max() > 1e-4, name


def test_quantizing_a_pruned_parent_builds_on_it(built: dict[str, Artifact]) -> None:
    manifest = built["pruned_int8"].manifest
    assert manifest["parent"] == built["pruned"].key
    assert manifest["facts"]["quantized_ops"]


def test_distilled_student_is_smaller_learned_and_runs_in_the_runner(built: dict[str, Artifact], tmp_path: Path) -> None:
    facts = built["student"].manifest["facts"]
    assert facts["student"]["layers"] == 1 < facts["teacher"]["layers"] == 2
    assert facts["student"]["parameters"] < facts["teacher"]["parameters"]
    assert facts["train_kl_last"] < facts["train_kl_first"]
    assert facts["held_out_kl_after"] < facts["held_out_kl_before"]
    student_inputs = [i.name for i in onnx.load(str(built["student"].model)).graph.input]
    assert sum(name.endswith(".key") for name in student_inputs) == 1
    windows = [list(range(5, 37)), list(range(40, 72))]
    saved = tmp_path / "reference.npy"
    run_accuracy(built["fp32"].model, windows, tmp_path, save_logprobs=str(saved))
    measured = run_accuracy(built["student"].model, windows, tmp_path, reference_logprobs=str(saved))
    assert np.isfinite(measured["perplexity"]) and measured["kl_mean"] > 0
    assert 0 <= measured["top1_agreement"] <= 1


def run_accuracy(model: Path, windows: list[list[int]], work: Path, **extra: str) -> dict[str, float]:
    transport = LocalTransport(DeviceProfile(name="local", path=work / "p.yaml", transport="local",
                                             python="auto", work_dir=str(work)))
    job = {"model": str(model), "providers": ["CPUExecutionProvider"], "threads": 1,
           "measurements": {"accuracy": {"windows": windows, **extra}}}
    events = list(transport.run_job(job, timeout_s=120))
    return {e["name"]: e["value"] for e in events if e["event"] == "metric"}


def test_import_student_refuses_another_vocabulary(built: dict[str, Artifact], project: Path, shared_cache: Path) -> None:
    folder = project / "wide_student"
    shutil.copytree(project / "tiny_model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 100}))
    (folder / "tokenizer.json").unlink()
    suite = write_suite(project, "wide", "student: {recipe: import_student, params: {path: wide_student}}")
    with pytest.raises(ConfigError, match=r"variants\.student\.params\.path: wide_student/config.json has a vocabulary of 484"):
        build(suite, shared_cache, "student")
    model = onnx.load(str(built["fp32"].model))
    model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 500
    onnx.save_model(model, str(project / "wide.onnx"))
    suite = write_suite(project, "wide_onnx", "student: {recipe: import_student, params: {path: wide.onnx}}")
    with pytest.raises(ConfigError, match=r"suite_wide_onnx.yaml: variants\.student\.params\.path: wide.onnx has a vocabulary of 500"):
        build(suite, shared_cache, "student")


def test_import_student_takes_a_matching_onnx_file(built: dict[str, Artifact], project: Path, shared_cache: Path) -> None:
    shutil.copy2(built["pruned"].model, project / "student.onnx")
    suite = write_suite(project, "student", "student: {recipe: import_student, params: {path: student.onnx}}")
    student = build(suite, shared_cache, "student")
    assert student.manifest["facts"]["vocab_size"] == logits(built["fp32"].model, [5]).shape[-1]
    assert np.array_equal(logits(student.model, [5, 6, 7]), logits(built["pruned"].model, [5, 6, 7]))


def test_bring_your_own_refuses_a_contract_mismatch(built: dict[str, Artifact], project: Path, shared_cache: Path) -> None:
    shutil.copy2(built["fp32"].model, project / "mine.onnx")
    contract = {"inputs": ["input_ids", "position_ids", "past_key_values.*"], "outputs": ["logits"]}
    suite = write_suite(project, "mismatch", f"byo: {{recipe: bring_your_own, params: {{path: mine.onnx, contract: {json.dumps(contract)}}}}}")
    with pytest.raises(ConfigError) as refused:
        build(suite, shared_cache, "byo")
    message = str(refused.value)
    assert message.startswith(f"{suite}: variants.byo.params.contract: mine.onnx does not match")
    assert "missing inputs position_ids" in message and "extra inputs attention_mask" in message
    assert "extra outputs present.0.key" in message


def test_bring_your_own_refuses_a_wrong_dtype(built: dict[str, Artifact], project: Path, shared_cache: Path) -> None:
    shutil.copy2(built["fp32"].model, project / "mine.onnx")
    contract = {**CAUSAL_LM, "inputs": {**CAUSAL_LM["inputs"], "input_ids": {"dtype": "int32"}}}
    suite = write_suite(project, "dtype", f"byo: {{recipe: bring_your_own, params: {{path: mine.onnx, contract: {json.dumps(contract)}}}}}")
    with pytest.raises(ConfigError, match="input input_ids is int64, the contract says int32"):
        build(suite, shared_cache, "byo")


def test_bring_your_own_refuses_a_path_out_of_the_suite_folder(project: Path) -> None:
    suite = write_suite(project, "escape", f"byo: {{recipe: bring_your_own, params: {{path: ../outside.onnx, contract: {json.dumps(CAUSAL_LM)}}}}}")
    with pytest.raises(ConfigError, match=r"suite_escape.yaml: variants\.byo\.params\.path: '../outside.onnx' escapes"):
        load_suite(suite)


def test_bring_your_own_copies_a_matching_model(built: dict[str, Artifact], project: Path, shared_cache: Path) -> None:
    shutil.copy2(built["fp32"].model, project / "mine.onnx")
    suite = write_suite(project, "byo", f"byo: {{recipe: bring_your_own, params: {{path: mine.onnx, contract: {json.dumps(CAUSAL_LM)}}}}}")
    artifact = build(suite, shared_cache, "byo")
    assert artifact.model.read_bytes() == (project / "mine.onnx").read_bytes()
    assert artifact.tokenizer.read_bytes() == (project / "tiny_model" / "tokenizer.json").read_bytes()
    assert artifact.manifest["facts"]["inputs"] == 2 + 2 * 2 and artifact.manifest["param_files"]["path"]


def test_unchanged_recipe_is_reused_and_one_changed_parameter_rebuilds_one(built: dict[str, Artifact], project: Path,
                                                                           shared_cache: Path) -> None:
    suite = load_suite(project / "suite_extra.yaml")
    logged: list[str] = []
    started = time.perf_counter()
    factory = VariantFactory(suite, shared_cache, logged.append)
    again = {variant.name: factory.artifact(variant) for variant in suite.variants}
    assert time.perf_counter() - started < 1
    assert {name: a.key for name, a in again.items()} == {name: a.key for name, a in built.items()}
    assert not [line for line in logged if line.startswith("building")]
    changed = dataclasses.replace(suite.variant("pruned"), params={"sparsity": 0.4})
    artifact = factory.artifact(changed)
    builds = [line for line in logged if line.startswith("building")]
    assert len(builds) == 1 and builds[0].startswith("building prune_magnitude {'sparsity': 0.4")
    assert artifact.key != built["pruned"].key


@pytest.mark.parametrize(("parent", "problem"), [
    ("nowhere", "names no other variant of this suite: 'nowhere'"),
    ("pruned", "parents form a cycle"),
])
def test_bad_parents_are_refused(project: Path, parent: str, problem: str) -> None:
    path = write_suite(project, "parents", f"pruned: {{recipe: prune_magnitude, parent: other}}\n"
                                           f"  other: {{recipe: int8_dynamic, parent: {parent}}}")
    with pytest.raises(ConfigError, match=problem):
        load_suite(path)


def test_a_recipe_built_from_the_base_model_takes_no_parent(project: Path) -> None:
    path = write_suite(project, "baseparent", "student: {recipe: distill, parent: fp32}")
    with pytest.raises(ConfigError, match=r"variants\.student\.parent: recipe distill builds from the base model"):
        load_suite(path)
