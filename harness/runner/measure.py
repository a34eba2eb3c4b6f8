"""The measurements, each timed on the device itself. Tokenization happens on the host.

Latency samples are the runtime's own call (``session.run``), as llama-bench times its eval:
building feeds and picking the next token are outside the timed region.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import disturbance
from .backends import CausalLMBackend
from .events import Event, metric
from .sensors import PowerSampler
from .timing import StopRule


def bandwidth(job: dict[str, Any]) -> Iterator[Event]:
    """STREAM-like read bandwidth: threads summing slices of an array far larger than the caches."""
    from concurrent.futures import ThreadPoolExecutor

    size_mb, threads = int(job.get("mb", 256)), int(job.get("threads") or os.cpu_count() or 1)
    data = np.ones(size_mb * 1024 * 1024 // 8)
    chunks = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(int(job.get("repetitions", 5))):
            begin = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = max(best, data.nbytes / (time.perf_counter() - begin) / 1e9)
    yield metric("memory_bandwidth_gbs", best, "GB/s", note=f"best of {job.get('repetitions', 5)} threaded reads of {size_mb} MB")


def model_size(model_path: str) -> Iterator[Event]:
    """The model file plus any external-data files beside it that the graph refers to."""
    total = os.path.getsize(model_path)
    data_file = model_path + ".data"
    if os.path.exists(data_file):
        total += os.path.getsize(data_file)
    yield metric("size_mb", total / 1e6, "MB")


def load(factory: Callable[[], CausalLMBackend]) -> tuple[CausalLMBackend, list[Event]]:
    import psutil

    process = psutil.Process()
    rss_before = process.memory_info().rss
    start = time.perf_counter()
    backend = factory()
    load_ms = (time.perf_counter() - start) * 1e3
    load_rss_mb = (process.memory_info().rss - rss_before) / 1e6
    events = [metric("load_ms", load_ms, "ms"), metric("load_rss_mb", load_rss_mb, "MB")]
    events.append({"event": "settings", "settings": backend.settings()})
    return backend, events


def prefill(backend: CausalLMBackend, job: dict[str, Any], sensor: Any = None) -> Iterator[Event]:
    """Prefill latency (the runtime call) and time to first token (call + picking the token)."""
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    for _ in range(job["warmup"]):
        backend.step(prompt, backend.empty_past(), 0)
    limits, sysfs_root = disturbance.for_job(job)
    measured = disturbance.until_clean(lambda: _prefill_region(backend, prompt, StopRule.from_job(job), sensor),
                                       limits, sysfs_root)
    run_ms, ttft_ms, why, sampler = measured.value
    region = disturbance.fields(measured)
    median_ms = float(np.median(run_ms))
    yield metric("prefill_ms", median_ms, "ms", run_ms, note=f"stopped at n={len(run_ms)}: {why}", **region)
    yield metric("ttft_ms", float(np.median(ttft_ms)), "ms", ttft_ms, note=f"prompt of {prompt.shape[1]} tokens",
                 **region)
    yield metric("prefill_tok_s", prompt.shape[1] / (median_ms / 1e3), "tok/s", **region)
    yield contention_metric("prefill_contention", measured)
    if sensor is not None:
        summary = sampler.summary(sampler.elapsed_s, len(run_ms))
        watts = summary["avg_w"]
        yield metric("energy_per_prefill_j", watts * float(np.mean(run_ms)) / 1e3 if watts is not None else None, "J",
                     note=f"average prefill power x mean prefill time (one inference over the prompt); {summary['method']}",
                     **region)


def _prefill_region(backend: CausalLMBackend, prompt: np.ndarray, rule: StopRule,
                    sensor: Any) -> tuple[list[float], list[float], str, Any]:
    ttft_ms: list[float] = []

    def step(run_ms: list[float]) -> None:
        begin = time.perf_counter_ns()
        logits, _, run_ns = backend.step(prompt, backend.empty_past(), 0)
        int(np.argmax(logits[0, -1]))
        ttft_ms.append((time.perf_counter_ns() - begin) / 1e6)
        run_ms.append(run_ns / 1e6)

    run_ms, why, sampler = sample_until_stopped(rule, sensor, step)
    return run_ms, ttft_ms, why, sampler


def sample_until_stopped(rule: StopRule, sensor: Any,
                         step: Callable[[list[float]], None]) -> tuple[list[float], str, Any]:
    """Call ``step`` (it appends its samples) until ``rule`` says why to stop, under the power
    sampler when there is a sensor: one timed region. Returns the samples, why, the sampler."""
    samples: list[float] = []
    sampler = PowerSampler(sensor) if sensor is not None else contextlib.nullcontext()
    started = time.monotonic()
    with sampler:
        while (why := rule.verdict(samples, time.monotonic() - started)) is None:
            step(samples)
    return samples, why, sampler


def decode(backend: CausalLMBackend, job: dict[str, Any], sensor: Any = None) -> Iterator[Event]:
    """Greedy decode after a prompt; each step is one sample at a context depth of prompt+i, and
    each round of ``tokens`` steps (one decode from the prompt) is one independent unit."""
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    for _ in range(job["warmup"]):
        _decode_round(backend, prompt, job["tokens"])
    limits, sysfs_root = disturbance.for_job(job)
    rule = StopRule.from_job(job, per_round=job["tokens"])
    measured = disturbance.until_clean(lambda: _decode_region(backend, prompt, job["tokens"], rule, sensor),
                                       limits, sysfs_root)
    samples, why, sampler = measured.value
    region = disturbance.fields(measured)
    median_ms = float(np.median(samples))
    depth = f"depth {prompt.shape[1]}-{prompt.shape[1] + job['tokens'] - 1}"
    yield metric("decode_ms", median_ms, "ms", samples, note=f"{depth}; stopped at n={len(samples)}: {why}",
                 unit_size=job["tokens"], **region)
    yield metric("decode_tok_s", 1e3 / median_ms, "tok/s", **region)
    yield contention_metric("decode_contention", measured)
    if sensor is not None:
        for event in power_metrics(sampler.summary(sampler.elapsed_s, len(samples)), float(np.mean(samples)) / 1e3):
            yield {**event, **region}


def _decode_region(backend: CausalLMBackend, prompt: np.ndarray, tokens: int, rule: StopRule,
                   sensor: Any) -> tuple[list[float], str, Any]:
    return sample_until_stopped(rule, sensor, lambda samples: samples.extend(_decode_round(backend, prompt, tokens)))


def paired_decode(open_candidate: Callable[[], CausalLMBackend], open_baseline: Callable[[str], CausalLMBackend],
                  job: dict[str, Any]) -> Iterator[Event]:
    """This build's decode step time over the baseline build's, measured side by side.

    Both models are loaded in this one process. In each round both decode the same tokens with
    their steps interleaved one by one (AB BA AB ...), so whatever slows the machine for a few
    milliseconds slows both alike: what remains in the round's ratio of medians is the difference
    between the builds. Contention is reported, not re-measured: it slows both builds alike.

    Two sessions of one file differ by a few tenths of a percent to 2% for as long as they live,
    and the one opened first tends to be the slower (SmolLM2 int8: 1.2% over 100 A/A jobs). So
    both are opened anew every ``reopen_every`` rounds, the other one first each time, and the
    biases cancel in the median. Both run without spinning workers: onnxruntime's idle workers spin
    for a while after each run, on the cores the other session's next step needs (24 A/A rounds:
    log-ratio spread 0.22 with spinning, 0.009 without).
    """
    every = int(job.get("reopen_every") or job["rounds"])
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    ratios: list[float] = []
    with disturbance.RegionMonitor(job.get("sysfs_root", "/")) as monitor:
        for index in range(job["rounds"]):
            if index % every == 0:
                candidate = baseline = None  # the old pair is freed before the new one is loaded
                candidate, baseline = _opened(open_candidate, lambda: open_baseline(job["baseline_model"]), prompt,
                                              baseline_first=(index // every) % 2 == 1, warmup=job["warmup"])
            ratios.append(_interleaved_round(candidate, baseline, prompt, job["tokens"], index))
    yield metric("decode_vs_baseline", float(np.median(ratios)), "x", ratios, unit_size=1,
                 note=f"{len(ratios)} rounds of {job['tokens']} interleaved steps against {job['baseline_label']} "
                      f"(sessions opened anew every {every} rounds, in alternating order; other processes used "
                      f"{monitor.contention:.0%} of the CPU meanwhile)")


def _opened(open_candidate: Callable[[], CausalLMBackend], open_baseline: Callable[[], CausalLMBackend],
            prompt: np.ndarray, baseline_first: bool, warmup: int) -> tuple[CausalLMBackend, CausalLMBackend]:
    """Both sessions anew, in the order asked, each warmed by ``warmup`` decodes of the prompt."""
    openers = [open_baseline, open_candidate] if baseline_first else [open_candidate, open_baseline]
    opened = [opener() for opener in openers]
    for backend in opened:
        for _ in range(max(warmup, 1)):
            _decode_round(backend, prompt, 4)
    return (opened[1], opened[0]) if baseline_first else (opened[0], opened[1])


class _Decoding:
    """One greedy decode in progress: the state between steps, and each step's time."""

    def __init__(self, backend: CausalLMBackend, prompt: np.ndarray) -> None:
        self.backend = backend
        self.logits, self.past, _ = backend.step(prompt, backend.empty_past(), 0)
        self.length = prompt.shape[1]
        self.steps_ms: list[float] = []

    def step(self) -> None:
        next_id = np.asarray([[int(np.argmax(self.logits[0, -1]))]], dtype=np.int64)
        self.logits, self.past, elapsed_ns = self.backend.step(next_id, self.past, self.length)
        self.steps_ms.append(elapsed_ns / 1e6)
        self.length += 1


def _interleaved_round(candidate: CausalLMBackend, baseline: CausalLMBackend, prompt: np.ndarray, tokens: int,
                       index: int) -> float:
    this, other = _Decoding(candidate, prompt), _Decoding(baseline, prompt)
    for step in range(tokens):
        for decoding in ((this, other) if (step + index) % 4 in (0, 3) else (other, this)):
            decoding.step()
    return float(np.median(this.steps_ms) / np.median(other.steps_ms))


def contention_metric(name: str, measured: disturbance.Measured[Any]) -> Event:
    """The CPU share other processes used in the kept attempt, with every sign of disturbance in the note."""
    monitor = measured.monitor
    figures = f"steal {monitor.steal:.0%}, largest clock drop {monitor.clock_drop:.0%}"
    note = f"{figures}; measured {len(measured.attempts)} time(s)"
    if measured.disturbed:
        note = f"flagged: {measured.disturbed}; {figures}"
    return metric(name, monitor.contention, "share", note=note, disturbed=measured.disturbed,
                  attempts=len(measured.attempts))


def power_metrics(summary: dict[str, Any], step_s: float) -> Iterator[Event]:
    """Average and peak watts over the decode region; joules per token = average W x step time."""
    watts = [w for _, w in summary["samples"]]
    how = f"{summary['method']}, {len(watts)} samples"
    yield metric("power_w", summary["avg_w"], "W", watts or None, note=how)
    yield metric("power_peak_w", summary["peak_w"], "W",
                 note=summary["method"] if summary["peak_w"] is not None else f"unavailable: {summary['peak_error']}")
    per_token = summary["avg_w"] * step_s if summary["avg_w"] is not None else None
    yield metric("energy_per_token_j", per_token, "J",
                 note=f"average decode power x mean decode step time; {summary['method']}")


def _decode_round(backend: CausalLMBackend, prompt: np.ndarray, tokens: int) -> list[float]:
    decoding = _Decoding(backend, prompt)
    for _ in range(tokens):
        decoding.step()
    return decoding.steps_ms


def peak_rss() -> Iterator[Event]:
    """Peak resident memory of this process so far.

    Linux's VmHWM belongs to the process's own address space. ru_maxrss is not used there: it
    survives fork and exec, so a runner started by a large parent (pytest with torch loaded)
    would report the parent's peak.
    """
    high_water = _vm_hwm_bytes()
    if high_water is not None:
        yield metric("peak_rss_mb", high_water / 1e6, "MB")
        return
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    yield metric("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6, "MB",
                 note="from ru_maxrss, which may include the parent's peak")


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def save_atomically(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}.npy"
    np.save(temporary, array)
    os.replace(temporary, path)
