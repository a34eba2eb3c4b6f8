"""How many decode samples the adaptive stopping rule needs for a +/-1% median CI, against a
fixed 1,000-sample rule, on one model on this machine, side by side in one run.

    python bench/bench_adaptive.py [--model PATH/model.onnx] [--rounds 3] [--target 0.01]

Without --model it measures the default suite's int8 already in the cache (it builds nothing; it
says which command builds it when there is none).

Both rules run the runner's own decode measurement (same backend, same prompt, same threads);
they alternate, `--rounds` times. For each run the table gives the samples taken, wall time,
the median, and the half-width of its 95% bootstrap CI relative to the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgegate.runner.backends import BACKENDS, OnnxRuntimeBackend
from edgegate.runner.measure import decode
from edgegate.runner.timing import relative_half_width

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PROMPT, cached_suite_model, runner_backend  # noqa: E402



def main() -> None:
    args = parse_args()
    model = args.model or cached_suite_model("int8")
    backend = BACKENDS[runner_backend(model.parent)](str(model), ["CPUExecutionProvider"], 0)
    rules = {
        "adaptive": {"min_samples": 64, "max_samples": 4000, "max_seconds": 300, "target_ci": args.target},
        "fixed 1000": {"min_samples": 1000, "max_samples": 1000, "max_seconds": 1e9, "target_ci": 0.0},
    }
    rows: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name in rules}
    for _ in range(args.rounds):
        for name, rule in rules.items():
            rows[name].append(run(backend, rule))
    print_table(rows, args.target)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model (default: the default suite's int8 in the cache)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.01)
    return parser.parse_args()


def run(backend: OnnxRuntimeBackend, rule: dict) -> tuple[int, float, float, float]:
    job = {"prompt_ids": PROMPT, "tokens": 32, "warmup": 1, **rule}
    started = time.perf_counter()
    samples = next(e for e in decode(backend, job) if e["name"] == "decode_ms")["samples"]
    return len(samples), time.perf_counter() - started, float(np.median(samples)), relative_half_width(samples)


def print_table(rows: dict[str, list[tuple[int, float, float, float]]], target: float) -> None:
    print(f"\ndecode ms/token, target +/-{target:.1%} (median CI half-width / median)")
    print(f"{'rule':<12} {'samples':>8} {'seconds':>8} {'median ms':>10} {'CI +/-':>8}   (median of runs; each run)")
    for name, runs in rows.items():
        n, secs, med, width = (statistics.median(col) for col in zip(*runs))
        each = ", ".join(f"n={r[0]} {r[3]:.2%}" for r in runs)
        print(f"{name:<12} {n:>8.0f} {secs:>8.1f} {med:>10.2f} {width:>8.2%}   {each}")
    adaptive, fixed = (statistics.median(r[1] for r in rows[k]) for k in rows)
    print(f"time ratio adaptive / fixed: {adaptive / fixed:.2f}")


if __name__ == "__main__":
    main()
