"""The regression gate's two ways of judging decode latency, side by side in one run:

- night to night: each night's decode rounds from a fresh runner process, compared with the
  baseline night's by the decode_ms rule (relative limit + Mann-Whitney U over round medians);
- side by side: tonight's build decodes in one process step by step against the baseline's
  build (harness/paired.py), and the per-round ratios are judged by the decode_vs_baseline rule
  (relative limit + Wilcoxon signed-rank over the rounds).

    python bench/bench_paired.py --out bench/results/paired-quiet.jsonl [--aa 100] [--as 100]
                                 [--slowdown 0.05] [--hog] [--variant int8] [--model PATH/model.onnx]
    python bench/bench_paired.py --report bench/results/paired-quiet.jsonl [more.jsonl ...]

Every job is a fresh runner process doing what a nightly job does: plain decode, then the paired
decode against the same model file loaded a second time (A/A) or with tonight's build slowed by
``--slowdown`` (A/S; the runner sleeps that share of every step of tonight's build only). A jobs
and S jobs are interleaved in time, so both methods see the same machine. Each job is appended
to ``--out`` as one JSON line when it ends: a stopped run keeps its data, and running the same
command again resumes it (jobs already in the file are not run again). ``--hog`` keeps one
busy-looping process pinned to CPU 0 for the whole run. ``--report`` merges files and prints the
tables without measuring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgegate import paired
from edgegate.profiles import DeviceProfile
from edgegate.regression import DEFAULT_RULES, compare_metric, compare_paired
from edgegate.transport import LocalTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PROMPT, runner_backend, suite_model  # noqa: E402

PLAIN_ROUNDS = 10  # plain decode rounds per job (x --tokens steps): the night-to-night units (5 vs 5 at least for p < 0.01)


def main() -> None:
    args = parse_args()
    if args.report:
        report([job for path in args.report for job in read_jobs(path)], args.slowdown)
        return
    model = args.model or suite_model(args.suite, args.variant)
    done = read_jobs(args.out) if args.out.exists() else []
    hog = start_hog() if args.hog else None
    try:
        run_jobs(args, model, done)
    finally:
        if hog is not None:
            hog.terminate()
    report(read_jobs(args.out), args.slowdown)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path("suites/suite_smollm2.yaml"))
    parser.add_argument("--variant", default="int8", help="the suite's variant to measure (built if not cached)")
    parser.add_argument("--model", type=Path, help="an ONNX file instead of the suite's variant")
    parser.add_argument("--out", type=Path, default=Path("bench/results/paired.jsonl"))
    parser.add_argument("--report", type=Path, nargs="+", help="only print the tables of these files")
    parser.add_argument("--aa", type=int, default=100, help="A/A comparisons (A jobs minus one)")
    parser.add_argument("--as", dest="as_", type=int, default=100, help="slowed jobs")
    parser.add_argument("--slowdown", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=paired.ROUNDS)
    parser.add_argument("--tokens", type=int, default=paired.TOKENS)
    parser.add_argument("--reopen-every", type=int, default=paired.REOPEN_EVERY,
                        help="rounds between opening both sessions anew, in alternating order")
    parser.add_argument("--hog", action="store_true", help="a CPU hog pinned to CPU 0 for the whole run")
    return parser.parse_args()


def run_jobs(args: argparse.Namespace, model: Path, done: list[dict[str, Any]]) -> None:
    transport = LocalTransport(DeviceProfile(name="local", path=Path("local.yaml"), transport="local", python="auto"))
    have = {kind: sum(job["kind"] == kind for job in done) for kind in "AS"}
    want = {"A": args.aa + 1, "S": args.as_}
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index in range(max(want.values())):
        for kind, slowdown in (("A", 0.0), ("S", args.slowdown)):
            if have[kind] <= index < want[kind]:
                job = measure(transport, model, slowdown, args) | {"kind": kind, "hog": args.hog}
                with args.out.open("a") as out:
                    out.write(json.dumps(job) + "\n")
                progress(kind, index, job, started)


def measure(transport: LocalTransport, model: Path, slowdown: float, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh runner process: a plain decode, then the paired decode; the seconds each took."""
    decode = {"prompt_ids": PROMPT, "tokens": args.tokens, "warmup": 1, "min_samples": PLAIN_ROUNDS * args.tokens,
              "max_samples": PLAIN_ROUNDS * args.tokens, "max_seconds": 1e9, "target_ci": 0.0,
              }
    pairing = {"baseline_model": str(model), "baseline_label": "A", "prompt_ids": PROMPT, "tokens": args.tokens,
               "warmup": paired.WARMUP, "rounds": args.rounds, "reopen_every": args.reopen_every}
    job = {"model": str(model), "backend": runner_backend(model.parent), "providers": ["CPUExecutionProvider"],
           "threads": 0, "inject_slowdown": slowdown, "disturbance": {"retries": 0},
           "measurements": {"decode": decode, "paired_decode": pairing}}
    found: dict[str, Any] = {"slowdown": slowdown, "rounds": args.rounds, "tokens": args.tokens,
                             "reopen_every": args.reopen_every}
    begin = last = time.perf_counter()
    for event in transport.run_job(job, timeout_s=600):
        if event.get("event") == "metric" and event["name"] in ("decode_ms", "decode_vs_baseline", "decode_contention"):
            now = time.perf_counter()
            found[event["name"]] = event["samples"] if event["samples"] is not None else event["value"]
            if event["name"] != "decode_contention":
                found[f"{event['name']}_s"] = now - last  # the first includes the process start and the load
                last = now
    found["job_s"] = time.perf_counter() - begin
    return found


def start_hog() -> multiprocessing.Process:
    hog = multiprocessing.Process(target=_spin, daemon=True)
    hog.start()
    return hog


def _spin() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


def read_jobs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(kind: str, index: int, job: dict[str, Any], started: float) -> None:
    """One line per job as it ends."""
    print(f"{kind}{index} decode_ms median {np.median(job['decode_ms']):.2f}, contention "
          f"{job.get('decode_contention', 0):.0%}, rounds {' '.join(f'{r:.3f}' for r in job['decode_vs_baseline'])} "
          f"({job['job_s']:.1f} s; {time.perf_counter() - started:.0f} s in all)", flush=True)


def report(jobs: list[dict[str, Any]], slowdown: float) -> None:
    for (hog, config), group in sorted(_groups(jobs).items()):
        a_jobs = [j for j in group if j["kind"] == "A"]
        s_jobs = [j for j in group if j["kind"] == "S"]
        rounds, tokens, every = config
        print(f"\n## {'busy (a CPU hog on CPU 0)' if hog else 'quiet'}: {len(a_jobs)} A jobs, {len(s_jobs)} S jobs "
              f"(+{slowdown:.0%}); paired: {rounds} rounds of {tokens} steps, "
              f"{f'sessions reopened every {every} rounds, alternating order' if every else 'one session each'}")
        print(f"contention during plain decode: median {np.median([j.get('decode_contention', 0) for j in group]):.0%}")
        report_night_to_night(a_jobs, s_jobs)
        report_side_by_side(a_jobs, s_jobs, slowdown)


def _groups(jobs: list[dict[str, Any]]) -> dict[tuple[bool, tuple[int, int, int]], list[dict[str, Any]]]:
    """Jobs by machine state and paired method (files from before ``reopen_every``: one session each)."""
    groups: dict[tuple[bool, tuple[int, int, int]], list[dict[str, Any]]] = {}
    for job in jobs:
        key = (bool(job.get("hog")), (job.get("rounds", 12), job.get("tokens", 16), int(job.get("reopen_every") or 0)))
        groups.setdefault(key, []).append(job)
    return groups


def report_night_to_night(a_jobs: list[dict], s_jobs: list[dict]) -> None:
    if len(a_jobs) < 2:
        return
    medians = np.array([np.median(job["decode_ms"]) for job in a_jobs])
    p5, p50, p95 = np.percentile(medians, [5, 50, 95])
    seconds = np.median([job["decode_ms_s"] for job in a_jobs])
    print(f"night to night: A medians p5 {p5:.2f}, p50 {p50:.2f}, p95 {p95:.2f} ms/token (p95/p5 {p95 / p5:.3f}); "
          f"{seconds:.1f} s per judgement (process start, load, warm-up, {PLAIN_ROUNDS} rounds)")
    print("| decode_ms rule | A/A false alarms | A/S detected |\n|---|---|---|")
    for limit in (0.03, 0.05, 0.10, 0.20):
        rule = dataclasses.replace(DEFAULT_RULES["decode_ms"], max_change=limit)
        alarms = [judge(rule, a, b) for a, b in zip(a_jobs, a_jobs[1:])]
        caught = [judge(rule, a, s) for a, s in zip(a_jobs, s_jobs)]
        print(f"| +{limit:.0%}, p < 0.01 (round medians) | {rate(alarms)} | {rate(caught)} |")


def report_side_by_side(a_jobs: list[dict], s_jobs: list[dict], slowdown: float) -> None:
    aa = np.log([float(np.median(job["decode_vs_baseline"])) for job in a_jobs[1:]])
    sa = np.log([float(np.median(job["decode_vs_baseline"])) for job in s_jobs])
    seconds = np.median([job["decode_vs_baseline_s"] for job in a_jobs + s_jobs])
    print(f"side by side: A/A median ratio p5 {np.exp(np.percentile(aa, 5)):.4f}, p50 {np.exp(np.median(aa)):.4f}, "
          f"p95 {np.exp(np.percentile(aa, 95)):.4f}, p99 {np.exp(np.percentile(aa, 99)):.4f}; A/S p5 "
          f"{np.exp(np.percentile(sa, 5)):.4f}, p50 {np.exp(np.median(sa)):.4f}; {seconds:.1f} s per judgement")
    print("| decode_vs_baseline rule | A/A false alarms | A/S detected |\n|---|---|---|")
    for limit in (0.01, 0.02, 0.03):
        rule = dataclasses.replace(DEFAULT_RULES["decode_vs_baseline"], max_change=limit)
        alarms = [compare_paired(rule, job["decode_vs_baseline"], "A").regressed for job in a_jobs[1:]]
        caught = [compare_paired(rule, job["decode_vs_baseline"], "A").regressed for job in s_jobs]
        print(f"| +{limit:.0%}, Wilcoxon p < {rule.alpha} | {rate(alarms)} | {rate(caught)} |")
    if aa.size >= 20 and sa.size >= 20:  # the A/S spread shifted to any slowdown, against the A/A 99th percentile
        smallest = np.percentile(aa, 99) - (np.percentile(sa, 5) - np.log1p(slowdown))
        print(f"smallest slowdown whose median ratio clears the A/A 99th percentile 95% of the time: "
              f"+{np.expm1(smallest):.1%}")


def judge(rule: Any, baseline: dict, candidate: dict) -> bool:
    units = (baseline.get("tokens", 32), candidate.get("tokens", 32))
    return compare_metric(rule, None, baseline["decode_ms"], None, candidate["decode_ms"], units).regressed


def rate(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} = {np.mean(flags):.0%}" if flags else "-"


if __name__ == "__main__":
    main()
