"""Why does plain int8 dynamic quantization hurt a small LLM so much? A study on the suite's fp32 export.

For each candidate int8 scheme this builds the variant from the suite's cached fp32 ONNX and
measures perplexity, KL and top-1 agreement against fp32 on the suite's own evaluation windows:

- dynamic (weights int8, activations quantized per tensor at run time): all MatMuls, per tensor
  and per channel; then one projection kind at a time, to find the sensitive layers;
- 8-bit weight-only MatMulNBits (activations stay fp32, or int8 per block with accuracy_level 4);
- static QDQ with calibration on real text (MinMax, Percentile).

It also prints, for each projection kind, how peaked the activations entering it are
(max |x| over the 99.9th percentile of |x|): per-tensor activation scales are set by the max, so a
large ratio means most values land on a handful of int8 levels.

Usage: .venv/bin/python bench/int8_study.py [SUITE [LABEL-SUBSTRING]]   (needs the suite's fp32 build cached)
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from edgegate import evaldata
from edgegate.runner.backends import OnnxRuntimeBackend
from edgegate.runner.measure import _kl_per_position, _window_logprobs
from edgegate.suites import load_suite
from edgegate.variants.recipes.int8_static import _feed
from edgegate.variants.factory import VariantFactory

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def matmuls(model_path: Path) -> dict[str, list[str]]:
    """Weight MatMuls by projection kind. The exporter names them node_linear_N in module order
    (q, k, v, o, gate, up, down per layer, then lm_head), so the kind follows from the position."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    weighted = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    per_layer = len(KINDS) - 1
    if len(weighted) % per_layer != 1:
        raise SystemExit(f"{len(weighted)} weight MatMuls: not {per_layer} per layer plus lm_head")
    by_kind: dict[str, list[str]] = {"lm_head": [weighted[-1]]}
    for index, name in enumerate(weighted[:-1]):
        by_kind.setdefault(KINDS[index % per_layer], []).append(name)
    return by_kind


def evaluate(model: Path, windows: list[list[int]], reference: np.ndarray | None) -> dict[str, float]:
    backend = OnnxRuntimeBackend(str(model), ["CPUExecutionProvider"], threads=2)
    logprobs, targets = _window_logprobs(backend, windows)
    picked = np.take_along_axis(logprobs, targets[:, None], axis=1)[:, 0]
    row = {"perplexity": float(np.exp(-picked.astype(np.float64).mean())), "size_mb": model.stat().st_size / 1e6}
    if reference is not None:
        kl = _kl_per_position(reference, logprobs)
        row |= {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
                "top1": float((reference.argmax(1) == logprobs.argmax(1)).mean())}
    row["logprobs"] = logprobs  # type: ignore[assignment]
    return row


def with_recipe(fp32: Path, out: Path, recipe: str, **params: object) -> None:
    """Builds ``out`` (a model.onnx path) from the fp32 folder with one of the factory's recipes."""
    from edgegate.variants.recipes import RECIPES
    from edgegate.variants.recipes._context import BuildContext

    module = RECIPES[recipe]
    out.mkdir()
    module.build(BuildContext(base=None, parent=fp32.parent, out_dir=out, params={**module.DEFAULTS, **params},  # type: ignore[arg-type]
                              log=lambda line: print(f"    {line}", flush=True)))


def activation_peaks(fp32: Path, window: list[int], names_by_kind: dict[str, list[str]]) -> dict[str, float]:
    """Median over layers of max|x| / p99.9|x| for the activations entering each projection kind."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32))
    inputs = {n.name: n.input[0] for n in model.graph.node if n.op_type == "MatMul"}
    wanted = {inputs[name]: kind for kind, names in names_by_kind.items() for name in names}
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in existing)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "probe.onnx")
        onnx.save_model(model, str(path), save_as_external_data=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        past = {i.name: (int(i.shape[1]), int(i.shape[3])) for i in session.get_inputs() if i.name.startswith("past_")}
        values = session.run(list(wanted), _feed(window, past))
    ratios: dict[str, list[float]] = {}
    for (tensor, kind), value in zip(wanted.items(), values):
        magnitude = np.abs(value.astype(np.float32)).ravel()
        ratios.setdefault(kind, []).append(float(magnitude.max() / np.percentile(magnitude, 99.9)))
    return {kind: float(np.median(r)) for kind, r in ratios.items()}


def main(suite_path: str = "suites/suite_smollm2.yaml", only: str = "") -> None:
    suite = load_suite(Path(suite_path))
    fp32_artifact = VariantFactory(suite, Path.home() / ".cache" / "edgegate").artifact(suite.variant(suite.reference))
    text = evaldata.tokenize(fp32_artifact.tokenizer, suite.prefill.prompt_tokens,
                             suite.accuracy.windows, suite.accuracy.window_tokens)
    windows = [list(w) for w in text.windows]
    fp32 = fp32_artifact.model
    names_by_kind = matmuls(fp32)
    print("activation peak ratio (max|x| / p99.9|x|, median over layers):")
    for kind, ratio in activation_peaks(fp32, windows[0], names_by_kind).items():
        print(f"  {kind:10s} {ratio:8.1f}")
    reference = evaluate(fp32, windows, None)
    rows: list[tuple[str, dict[str, float]]] = [("fp32", reference)]
    candidates = candidate_builds(fp32, names_by_kind)
    with tempfile.TemporaryDirectory() as folder:
        for label, build in candidates:
            if only and only not in label:
                continue
            out = Path(folder, re.sub(r"\W+", "_", label))
            started = time.perf_counter()
            build(out)
            row = evaluate(out / "model.onnx", windows, reference["logprobs"])  # type: ignore[arg-type]
            row["build_s"] = time.perf_counter() - started
            rows.append((label, row))
            print_row(label, row, reference["perplexity"])
            shutil.rmtree(out)


def candidate_builds(fp32: Path, names_by_kind: dict[str, list[str]]) -> list[tuple[str, Callable[[Path], None]]]:
    everything = [n for names in names_by_kind.values() for n in names]

    def dynamic_only(kind: str) -> Callable[[Path], None]:
        others = [n for n in everything if n not in names_by_kind[kind]]
        return lambda out: exclude_nodes(fp32, out, others)

    builds: list[tuple[str, Callable[[Path], None]]] = [
        ("dynamic per-tensor, all MatMuls", lambda out: with_recipe(fp32, out, "int8_dynamic", quantize_embedding=False)),
        ("dynamic per-channel, 8-bit weights", lambda out: with_recipe(fp32, out, "int8_dynamic", per_channel=True,
                                                                      reduce_range=False, quantize_embedding=False)),
        ("dynamic per-channel, 7-bit weights", lambda out: with_recipe(fp32, out, "int8_dynamic", per_channel=True,
                                                                      quantize_embedding=False)),
    ]
    builds += [(f"dynamic, only {kind}", dynamic_only(kind)) for kind in KINDS if kind in names_by_kind]
    builds += [
        ("dynamic per-tensor, mlp_down in fp32", lambda out: with_recipe(fp32, out, "int8_dynamic", keep_fp32=["mlp_down"])),
        ("dynamic per-channel, mlp_down in fp32", lambda out: with_recipe(fp32, out, "int8_dynamic", per_channel=True,
                                                                         keep_fp32=["mlp_down"])),
        ("8-bit MatMulNBits b32, fp32 activations", lambda out: with_recipe(fp32, out, "int8_weight_only",
                                                                           accuracy_level=None)),
        ("8-bit MatMulNBits b32, int8 activations", lambda out: with_recipe(fp32, out, "int8_weight_only")),
        ("static QDQ MinMax, per-channel", lambda out: with_recipe(fp32, out, "int8_static", method="MinMax")),
        ("static QDQ Percentile, per-channel", lambda out: with_recipe(fp32, out, "int8_static")),
        ("static QDQ Percentile, mlp_down in fp32", lambda out: with_recipe(fp32, out, "int8_static",
                                                                           keep_fp32=["mlp_down"])),
    ]
    return builds


def exclude_nodes(fp32: Path, out: Path, excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir()
    quantize_dynamic(str(fp32), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded)


def print_row(label: str, row: dict[str, float], fp32_ppl: float) -> None:
    print(f"{label:40s} ppl {row['perplexity']:10.2f} ({row['perplexity'] / fp32_ppl:6.3f}x)  "
          f"KL {row['kl_mean']:.4f}  top1 {row['top1']:.3f}  {row['size_mb']:7.1f} MB  build {row['build_s']:.0f} s",
          flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
