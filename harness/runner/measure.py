"""The measurements, each timed on the device itself. Tokenization happens on the host.

Latency samples are the runtime's own call (``session.run``), as llama-bench times its eval:
building feeds and picking the next token are outside the timed region.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .backends import CausalLMBackend

Event = dict[str, Any]


def metric(name: str, value: float | None, unit: str, samples: list[float] | None = None, note: str | None = None) -> Event:
    return {"event": "metric", "name": name, "value": value, "unit": unit, "samples": samples, "note": note}


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


def prefill(backend: CausalLMBackend, job: dict[str, Any]) -> Iterator[Event]:
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    samples = []
    for index in range(job["warmup"] + job["repetitions"]):
        _, _, elapsed_ns = backend.step(prompt, backend.empty_past(), 0)
        if index >= job["warmup"]:
            samples.append(elapsed_ns / 1e6)
    median_ms = float(np.median(samples))
    yield metric("prefill_ms", median_ms, "ms", samples)
    yield metric("prefill_tok_s", prompt.shape[1] / (median_ms / 1e3), "tok/s")


def decode(backend: CausalLMBackend, job: dict[str, Any]) -> Iterator[Event]:
    """Greedy decode after a prompt; each step is one sample at a context depth of prompt+i."""
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    samples: list[float] = []
    for round_index in range(job["warmup"] + job["repetitions"]):
        steps = _decode_round(backend, prompt, job["tokens"])
        if round_index >= job["warmup"]:
            samples.extend(steps)
    median_ms = float(np.median(samples))
    yield metric("decode_ms", median_ms, "ms", samples)
    yield metric("decode_tok_s", 1e3 / median_ms, "tok/s")


def _decode_round(backend: CausalLMBackend, prompt: np.ndarray, tokens: int) -> list[float]:
    logits, past, _ = backend.step(prompt, backend.empty_past(), 0)
    past_len = prompt.shape[1]
    steps = []
    for _ in range(tokens):
        next_id = np.asarray([[int(np.argmax(logits[0, -1]))]], dtype=np.int64)
        logits, past, elapsed_ns = backend.step(next_id, past, past_len)
        steps.append(elapsed_ns / 1e6)
        past_len += 1
    return steps


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


def accuracy(backend: CausalLMBackend, job: dict[str, Any]) -> Iterator[Event]:
    """Perplexity on the text; KL and top-1 agreement against the reference's saved log-probs."""
    logprobs, targets = _window_logprobs(backend, job["windows"])
    picked = np.take_along_axis(logprobs, targets[:, None], axis=1)[:, 0]
    yield metric("perplexity", float(np.exp(-picked.astype(np.float64).mean())), "")
    if job.get("save_logprobs"):
        _save_atomically(job["save_logprobs"], logprobs)
    reference_path = job.get("reference_logprobs")
    if not reference_path:
        return
    reference = np.load(reference_path, mmap_mode="r")
    if reference.shape != logprobs.shape:
        raise ValueError(f"reference log-probs have shape {reference.shape}, this variant {logprobs.shape}")
    kl = _kl_per_position(np.asarray(reference), logprobs)
    yield metric("kl_mean", float(kl.mean()), "nats")
    yield metric("kl_max", float(kl.max()), "nats")
    agree = np.argmax(reference, axis=1) == np.argmax(logprobs, axis=1)
    yield metric("top1_agreement", float(agree.mean()), "")


def _window_logprobs(backend: CausalLMBackend, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    all_logprobs, all_targets = [], []
    for window in windows:
        ids = np.asarray([window], dtype=np.int64)
        logits, _, _ = backend.step(ids, backend.empty_past(), 0)
        all_logprobs.append(_log_softmax(logits[0, :-1].astype(np.float32)))
        all_targets.append(ids[0, 1:])
    return np.concatenate(all_logprobs), np.concatenate(all_targets)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _kl_per_position(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """KL(reference || variant) over the full vocabulary, one value per position."""
    return np.maximum((np.exp(reference) * (reference - variant)).sum(axis=1), 0.0)


def _save_atomically(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}.npy"
    np.save(temporary, array)
    os.replace(temporary, path)
