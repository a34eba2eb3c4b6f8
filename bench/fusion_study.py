"""Do onnxruntime.transformers' decoder fusions apply to EdgeGate's exported graph, and what do
they do to decode time and logits? A study, not wired into the build.

    python bench/fusion_study.py [--suite suites/suite_smollm2.yaml] [--variant int8]
                                 [--model PATH/model.onnx] [--model-type gpt2] [--steps 32] [--rounds 3]

Runs ``optimize_model`` (python fusions only, opt_level 0; onnxruntime's own level-99 passes
still run when the session loads, as they do for the original) on the built variant, counts
the fused ops it wrote (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization,
RotaryEmbedding, MultiHeadAttention, GroupQueryAttention, ...), then greedily decodes the same
prompt with the original and the optimized graph, alternating ``--rounds`` times, and prints the
median decode ms/step of each and the largest absolute logit difference over every step.
The optimized model is written to a temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llamacpp import built_variant
from profile_decode import prompt_for, session_for

FUSED_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding",
             "MultiHeadAttention", "GroupQueryAttention", "Attention", "FusedMatMul", "SkipLayerNormalization")


def main() -> None:
    args = parse_args()
    from edgegate.suites import load_suite

    folder = args.model.parent if args.model else built_variant(load_suite(args.suite), args.cache, args.variant)
    if folder is None:
        raise SystemExit(1)
    original = folder / "model.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "model.onnx"
        counts = optimize(original, optimized, args.model_type)
        print(f"{args.variant} ({args.model_type} fusions): ops before -> after")
        for op in sorted(set(counts["before"]) | set(counts["after"]), key=lambda o: -counts["before"].get(o, 0)):
            if counts["before"].get(op, 0) != counts["after"].get(op, 0) or op in FUSED_OPS:
                print(f"  {op:<36} {counts['before'].get(op, 0):>5} -> {counts['after'].get(op, 0):>5}")
        print(f"  {'all nodes':<36} {sum(counts['before'].values()):>5} -> {sum(counts['after'].values()):>5}")
        compare(original, optimized, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent.parent / "suites" / "suite_smollm2.yaml")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--model", type=Path, help="study this model.onnx instead of the suite's variant")
    parser.add_argument("--model-type", default="gpt2")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate"))
    return parser.parse_args()


def optimize(original: Path, optimized: Path, model_type: str) -> dict[str, Counter[str]]:
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    num_heads, hidden_size = model_shape(original)
    before = Counter(node.op_type for node in onnx.load(str(original), load_external_data=False).graph.node)
    model = optimize_model(str(original), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=0, use_gpu=False)
    model.save_model_to_file(str(optimized))
    after = Counter(node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node)
    return {"before": before, "after": after}


def model_shape(model: Path) -> tuple[int, int]:
    """(attention heads, hidden size): head size from the KV-cache inputs, hidden size from the
    input width (attribute K) of the first weight matmul, which reads the hidden state."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    past = next(i for i in graph.input if i.name.startswith("past_key_values."))
    head_dim = past.type.tensor_type.shape.dim[3].dim_value
    first = next(node for node in graph.node if node.op_type == "MatMulNBits")
    hidden = next(attr.i for attr in first.attribute if attr.name == "K")
    return hidden // head_dim, hidden


def compare(original: Path, optimized: Path, args: argparse.Namespace) -> None:
    prompt = prompt_for(original, args.prompt_tokens)
    sessions = {"original": session_for(original, args.threads, None), "optimized": session_for(optimized, args.threads, None)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    logits: dict[str, list[np.ndarray]] = {}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            step_ms, logits[name] = decode_with_logits(session, prompt, args.steps)
            times[name].append(float(np.median(step_ms[2:])))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(logits["original"], logits["optimized"]))
    same_tokens = all(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(logits["original"], logits["optimized"]))
    for name, medians in times.items():
        print(f"{name:<10} decode median {np.median(medians):.2f} ms/step (rounds: {', '.join(f'{m:.2f}' for m in medians)})")
    print(f"optimized / original decode time: {np.median(times['optimized']) / np.median(times['original']):.2f}")
    print(f"max |logit difference| over prefill and {args.steps} steps: {diff:.3g}; same greedy tokens: {same_tokens}")


def decode_with_logits(session: Any, prompt: list[int], steps: int) -> tuple[list[float], list[np.ndarray]]:
    """Like profile_decode.greedy_decode, keeping the last-position logits of every run. Each graph
    follows its own greedy path; the logits compare like for like while the paths stay equal."""
    import time

    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [name for name in inputs if name.startswith("past_key_values.")]
    present_names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    past = {name: np.zeros((1, int(inputs[name].shape[1]), 0, int(inputs[name].shape[3])), dtype=np.float32) for name in past_names}
    ids, length, times, kept = np.asarray([prompt], dtype=np.int64), 0, [], []
    for _ in range(steps + 1):
        feeds = {**past, "input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), dtype=np.int64)}
        begin = time.perf_counter()
        logits, *presents = session.run(["logits", *present_names], feeds)
        times.append((time.perf_counter() - begin) * 1e3)
        kept.append(logits[0, -1].copy())
        length += ids.shape[1]
        past = dict(zip(past_names, presents))
        ids = np.asarray([[int(np.argmax(logits[0, -1]))]], dtype=np.int64)
    return times, kept


if __name__ == "__main__":
    main()
