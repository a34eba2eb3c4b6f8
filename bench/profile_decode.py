"""Where an ONNX decode step spends its time, by op type, from onnxruntime's own profiler.

    python bench/profile_decode.py [--suite suites/suite_smollm2.yaml] [--variants int8,int4]
                                   [--steps 32] [--threads 2] [--model PATH/model.onnx ...]

For each variant (built already; a missing one is skipped) a session with ``enable_profiling``
prefills a 64-token prompt, then decodes ``--steps`` greedy tokens, feeding the graph as the
runner does, through the backend the harness picks for the graph (KV cache in place for fused_decoder graphs). The profile's ``model_run`` events are the steps; the kernel events inside
each decode step are summed by op type. "share" is of the whole step (the model_run span), so the
rest, "outside kernels", is onnxruntime's own per-run work: feeds, allocations, output copies.
The first decode step is left out (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llamacpp import built_variant, onnx_prompt_ids, runner_backend
from edgegate.runner.backends import BACKENDS

CATEGORIES = {
    "MatMulNBits": "weight matmuls", "MatMul": "attention (QK, PV)", "Softmax": "attention (QK, PV)",
    "Concat": "KV concat / rotary", "Transpose": "layout", "Reshape": "layout", "Expand": "attention (GQA expand)",
    "Pow": "RMS norm", "ReduceMean": "RMS norm", "Sqrt": "RMS norm", "Reciprocal": "RMS norm", "Div": "RMS norm",
    "SimplifiedLayerNormalization": "RMS norm", "SkipSimplifiedLayerNormalization": "RMS norm",
    "GroupQueryAttention": "attention (fused GQA: rotary, KV append, softmax)",
    "Sigmoid": "SiLU", "Neg": "rotary", "Slice": "rotary", "GatherBlockQuantized": "embedding", "Gather": "embedding",
}


def main() -> None:
    args = parse_args()
    for name, model in models(args):
        plain = BACKENDS[runner_backend(model.parent)](str(model), ["CPUExecutionProvider"], args.threads)
        plain_ms = float(np.median(greedy_decode(plain, prompt_for(model, args.prompt_tokens), args.steps)[2:]))
        steps, by_op, nodes = profile(model, args.steps, args.threads, args.prompt_tokens)
        print_profile(name, steps, by_op, nodes, args.top)
        print(f"without the profiler: median {plain_ms:.2f} ms/step ({1e3 / plain_ms:.1f} tok/s); the profiler's own cost "
              f"is {max(0.0, float(np.median(steps)) - plain_ms) / sum(nodes.values()) * 1e3:.1f} us per node run")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent.parent / "suites" / "suite_smollm2.yaml")
    parser.add_argument("--variants", default="int8,int4")
    parser.add_argument("--model", type=Path, action="append", default=[], help="profile this model.onnx too (repeatable)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate"))
    return parser.parse_args()


def models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    from edgegate.suites import load_suite

    suite = load_suite(args.suite)
    found = []
    for name in filter(None, args.variants.split(",")):
        folder = built_variant(suite, args.cache, name)
        if folder is not None:
            found.append((name, folder / "model.onnx"))
    return found + [(str(path), path) for path in args.model]


def prompt_for(model: Path, prompt_tokens: int) -> list[int]:
    tokenizer = model.parent / "tokenizer.json"
    return list(onnx_prompt_ids(tokenizer, prompt_tokens)) if tokenizer.is_file() else list(range(100, 100 + prompt_tokens))


def profile(model: Path, steps: int, threads: int, prompt_tokens: int
            ) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """(ms of each decode step, op type -> kernel ms in each step, op type -> kernels run per step);
    the prefill and the first decode step are left out."""
    with tempfile.TemporaryDirectory() as scratch:
        backend = BACKENDS[runner_backend(model.parent)](str(model), ["CPUExecutionProvider"], threads,
                                                          profile_prefix=str(Path(scratch) / "decode"))
        greedy_decode(backend, prompt_for(model, prompt_tokens), steps)
        events = json.loads(Path(backend.session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[2:]
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(runs))
    nodes: dict[str, int] = defaultdict(int)
    starts = [run["ts"] for run in runs]
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            index = _run_index(starts, runs, event["ts"])
            if index is not None:
                by_op[event["args"]["op_name"]][index] += event["dur"] / 1e3
                nodes[event["args"]["op_name"]] += index == 0
    return [run["dur"] / 1e3 for run in runs], dict(by_op), dict(nodes)


def _run_index(starts: list[float], runs: list[dict[str, Any]], ts: float) -> int | None:
    import bisect

    index = bisect.bisect_right(starts, ts) - 1
    if index < 0 or ts > runs[index]["ts"] + runs[index]["dur"]:
        return None
    return index


def greedy_decode(backend: Any, prompt: list[int], steps: int) -> list[float]:
    """Prefill then ``steps`` greedy tokens through the runner backend's ``step``; the ms of each
    call, prefill first."""
    logits, past, elapsed_ns = backend.step(np.asarray([prompt], dtype=np.int64), backend.empty_past(), 0)
    length, times = len(prompt), [elapsed_ns / 1e6]
    for _ in range(steps):
        next_id = np.asarray([[int(np.argmax(logits[0, -1]))]], dtype=np.int64)
        logits, past, elapsed_ns = backend.step(next_id, past, length)
        times.append(elapsed_ns / 1e6)
        length += 1
    return times


def print_profile(name: str, steps: list[float], by_op: dict[str, list[float]], nodes: dict[str, int], top: int) -> None:
    step_ms = float(np.median(steps))
    rows = sorted(((op, float(np.median(ms))) for op, ms in by_op.items()), key=lambda row: -row[1])
    kernels = sum(ms for _, ms in rows)
    print(f"\n{name}: {len(steps)} decode steps, median {step_ms:.2f} ms/step inside the profiler, "
          f"{sum(nodes.values())} kernels run per step")
    print(f"{'op type':<34} {'category':<24} {'nodes':>6} {'ms/step':>8} {'share':>7}")
    for op, ms in rows[:top]:
        print(f"{op:<34} {CATEGORIES.get(op, ''):<24} {nodes.get(op, 0):>6} {ms:>8.3f} {ms / step_ms:>7.1%}")
    rest = sum(ms for _, ms in rows[top:])
    rest_nodes = sum(nodes.get(op, 0) for op, _ in rows[top:])
    print(f"{f'{len(rows) - top} other op types':<34} {'':<24} {rest_nodes:>6} {rest:>8.3f} {rest / step_ms:>7.1%}")
    print(f"{'outside kernels':<34} {'session overhead':<24} {'':>6} {step_ms - kernels:>8.3f} {(step_ms - kernels) / step_ms:>7.1%}")
    print_categories(rows, step_ms)


def print_categories(rows: list[tuple[str, float]], step_ms: float) -> None:
    totals: dict[str, float] = defaultdict(float)
    for op, ms in rows:
        totals[CATEGORIES.get(op, "other ops")] += ms
    print("by category: " + ", ".join(f"{cat} {ms / step_ms:.0%}" for cat, ms in sorted(totals.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
