"""The regression gate's two ways of judging decode latency, side by side in one run:

- night to night: each night's decode samples from a fresh runner process, compared with the
  baseline night's by the decode_ms rule (relative limit + Mann-Whitney U);
- side by side: a rebuilt variant decodes in one process alternately with the baseline's build
  (harness/paired.py), and the per-round ratios are judged by the decode_vs_baseline rule
  (relative limit + Wilcoxon signed-rank).

    python bench/bench_paired.py [--suite suites/suite_smollm2.yaml] [--variant int4] [--aa 50] [--as 25]
                                 [--slowdown 0.05] [--model PATH/model.onnx]

Every job is a fresh runner process doing what a nightly job does: plain decode, then the paired
decode against the same model file loaded a second time (A/A) or with tonight's build slowed by
``--slowdown`` (A/S; the runner sleeps that share of every step of tonight's build only). A jobs
and S jobs are interleaved in time, so both methods see the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from edgegate import paired
from edgegate.profiles import DeviceProfile
from edgegate.regression import DEFAULT_RULES, compare_metric, compare_paired
from edgegate.transport import LocalTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adaptive import PROMPT  # noqa: E402
from bench_llamacpp import runner_backend  # noqa: E402


def main() -> None:
    args = parse_args()
    model = args.model or suite_model(args.suite, args.variant)
    transport = LocalTransport(DeviceProfile(name="local", path=Path("local.yaml"), transport="local", python="auto"))
    started = time.perf_counter()
    a_jobs, s_jobs = [], []
    for index in range(max(args.aa + 1, args.as_)):
        if index <= args.aa:
            a_jobs.append(measure(transport, model, 0.0))
            progress("A", index, a_jobs[-1], started)
        if index < args.as_:
            s_jobs.append(measure(transport, model, args.slowdown))
            progress("S", index, s_jobs[-1], started)
    print(f"model {model.parent.name}; {len(a_jobs)} A jobs and {len(s_jobs)} S jobs (+{args.slowdown:.0%}) "
          f"in {time.perf_counter() - started:.0f} s")
    report_night_to_night(a_jobs, s_jobs, args.slowdown)
    report_side_by_side(a_jobs, s_jobs, args.slowdown)


def suite_model(suite_path: Path, variant: str) -> Path:
    import os

    from edgegate.suites import load_suite
    from edgegate.variants.factory import VariantFactory

    suite = load_suite(suite_path)
    cache = Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")
    return VariantFactory(suite, cache, log=print).artifact(suite.variant(variant)).model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path("suites/suite_smollm2.yaml"))
    parser.add_argument("--variant", default="int4", help="the suite's variant to measure (built if not cached)")
    parser.add_argument("--model", type=Path, help="an ONNX file instead of the suite's variant")
    parser.add_argument("--aa", type=int, default=50, help="A/A comparisons (A jobs minus one)")
    parser.add_argument("--as", dest="as_", type=int, default=25, help="slowed jobs")
    parser.add_argument("--slowdown", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=64, help="plain decode samples per job")
    return parser.parse_args()


def measure(transport: LocalTransport, model: Path, slowdown: float) -> dict[str, list[float]]:
    decode = {"prompt_ids": PROMPT, "tokens": 32, "warmup": 1, "min_samples": 64, "max_samples": 64,
              "max_seconds": 1e9, "target_ci": 0.0}
    pairing = {"baseline_model": str(model), "baseline_label": "A", "prompt_ids": PROMPT, "tokens": paired.TOKENS,
               "warmup": paired.WARMUP, "rounds": paired.ROUNDS}
    job = {"model": str(model), "backend": runner_backend(model.parent), "providers": ["CPUExecutionProvider"],
           "threads": 0, "inject_slowdown": slowdown,
           "measurements": {"decode": decode, "paired_decode": pairing}}
    found = {e["name"]: e["samples"] for e in transport.run_job(job, timeout_s=600) if e.get("event") == "metric"
             and e.get("name") in ("decode_ms", "decode_vs_baseline")}
    return found


def progress(kind: str, index: int, job: dict[str, list[float]], started: float) -> None:
    """One line per job as it ends: a long run that is stopped still leaves its data."""
    print(f"{kind}{index} decode_ms median {np.median(job['decode_ms']):.2f}, decode_vs_baseline rounds "
          f"{' '.join(f'{r:.3f}' for r in job['decode_vs_baseline'])} ({time.perf_counter() - started:.0f} s)", flush=True)


def report_night_to_night(a_jobs: list[dict], s_jobs: list[dict], slowdown: float) -> None:
    medians = np.array([np.median(job["decode_ms"]) for job in a_jobs])
    p5, p50, p95 = np.percentile(medians, [5, 50, 95])
    print(f"\nnight to night: A medians p5 {p5:.2f}, p50 {p50:.2f}, p95 {p95:.2f} ms/token (p95/p5 {p95 / p5:.3f})")
    print(f"{'decode_ms rule':<22} {'A/A false alarms':>18} {'A/S detected':>14}")
    for limit in (0.05, 0.10, 0.20):
        rule = dataclasses.replace(DEFAULT_RULES["decode_ms"], max_change=limit)
        alarms = [judge(rule, a["decode_ms"], b["decode_ms"]) for a, b in zip(a_jobs, a_jobs[1:])]
        caught = [judge(rule, a["decode_ms"], s["decode_ms"]) for a, s in zip(a_jobs, s_jobs)]
        print(f"{f'+{limit:.0%}, p < 0.01':<22} {rate(alarms):>18} {rate(caught):>14}")


def report_side_by_side(a_jobs: list[dict], s_jobs: list[dict], slowdown: float) -> None:
    rule = DEFAULT_RULES["decode_vs_baseline"]
    aa = [float(np.median(job["decode_vs_baseline"])) for job in a_jobs]
    sa = [float(np.median(job["decode_vs_baseline"])) for job in s_jobs]
    print(f"\nside by side ({paired.ROUNDS} rounds of {paired.TOKENS} tokens per build, ABBA):")
    print(f"A/A ratio p5 {np.percentile(aa, 5):.3f}, p50 {np.median(aa):.3f}, p95 {np.percentile(aa, 95):.3f}; "
          f"A/S ratio p5 {np.percentile(sa, 5):.3f}, p50 {np.median(sa):.3f}, p95 {np.percentile(sa, 95):.3f}")
    alarms = [compare_paired(rule, job["decode_vs_baseline"], "A").regressed for job in a_jobs[1:]]
    caught = [compare_paired(rule, job["decode_vs_baseline"], "A").regressed for job in s_jobs]
    print(f"{'decode_vs_baseline rule':<22} {'A/A false alarms':>18} {'A/S detected':>14}")
    print(f"{f'+{rule.max_change:.0%}, p < {rule.alpha}':<22} {rate(alarms):>18} {rate(caught):>14}")


def judge(rule, baseline: list[float], candidate: list[float]) -> bool:
    return compare_metric(rule, None, baseline, None, candidate).regressed


def rate(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} = {np.mean(flags):.0%}" if flags else "-"


if __name__ == "__main__":
    main()
