"""False-alarm rate of the regression gate over A/A comparisons, and its detection rate of an
injected 5% slowdown, on a real model on this machine, in one run.

    python bench/bench_gate.py [--model PATH/model.onnx] [--pairs 50] [--slowdown 0.05]

Each measurement is a fresh runner process (as each night is), decoding `--samples` tokens after
a 64-token prompt. Unchanged (A) and slowed (S, the runner sleeping `--slowdown` of every step)
measurements alternate: A0 S1 A1 S2 A2 ... A/A pairs are consecutive A's; A/S pairs are each S
with the A before it. Every pair is judged by the default rule for decode_ms (relative limit
and one-sided Mann-Whitney U), as the nightly gate does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from edgegate.profiles import DeviceProfile
from edgegate.regression import DEFAULT_RULES, compare_metric
from edgegate.transport import LocalTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PROMPT, runner_backend, suite_model  # noqa: E402


def main() -> None:
    args = parse_args()
    model = args.model or suite_model()
    transport = LocalTransport(DeviceProfile(name="local", path=Path("local.yaml"), transport="local", python="auto"))
    started = time.perf_counter()
    a_sets, s_sets = [measure(transport, model, 0.0, args.samples)], []
    for _ in range(args.pairs):
        s_sets.append(measure(transport, model, args.slowdown, args.samples))
        a_sets.append(measure(transport, model, 0.0, args.samples))
    default = DEFAULT_RULES["decode_ms"]
    for limit in sorted({0.02, 0.03, default.max_change, 0.10}):
        rule = dataclasses.replace(default, max_change=limit)
        false_alarms = [judge(rule, a, b) for a, b in zip(a_sets, a_sets[1:])]
        detections = [judge(rule, a, s) for a, s in zip(a_sets, s_sets)]
        report(args, model, rule, a_sets, false_alarms, detections, limit == default.max_change)
    print(f"wall time {time.perf_counter() - started:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--slowdown", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=64)
    return parser.parse_args()


def measure(transport: LocalTransport, model: Path, slowdown: float, samples: int) -> list[float]:
    job = {"model": str(model), "backend": runner_backend(model.parent), "providers": ["CPUExecutionProvider"],
           "threads": 0, "inject_slowdown": slowdown,
           "measurements": {"decode": {"prompt_ids": PROMPT, "tokens": 32, "warmup": 1, "min_samples": samples,
                                       "max_samples": samples, "max_seconds": 1e9, "target_ci": 0.0}}}
    events = transport.run_job(job, timeout_s=600)
    return next(e["samples"] for e in events if e.get("name") == "decode_ms")


def judge(rule, baseline: list[float], candidate: list[float]) -> bool:
    return compare_metric(rule, None, baseline, None, candidate, (32, 32)).regressed  # rounds of 32 steps


def report(args, model, rule, a_sets, false_alarms, detections, is_default: bool) -> None:
    import numpy as np

    medians = np.array([np.median(a) for a in a_sets])
    spread = np.percentile(medians, [5, 50, 95])
    default = " (the default)" if is_default else ""
    print(f"\nmodel {model.parent.name}; rule decode_ms: +{rule.max_change:.0%}{default} and Mann-Whitney p < {rule.alpha}")
    print(f"A medians over {len(a_sets)} fresh processes: p5 {spread[0]:.2f}, p50 {spread[1]:.2f}, "
          f"p95 {spread[2]:.2f} ms/token (p95/p5 = {spread[2] / spread[0]:.3f})")
    print(f"{'comparison':<32} {'pairs':>6} {'flagged':>8} {'rate':>7}")
    print(f"{'A/A (false alarms)':<32} {len(false_alarms):>6} {sum(false_alarms):>8} {np.mean(false_alarms):>7.1%}")
    label = f"A/S, +{args.slowdown:.0%} injected (detected)"
    print(f"{label:<32} {len(detections):>6} {sum(detections):>8} {np.mean(detections):>7.1%}")


if __name__ == "__main__":
    main()
