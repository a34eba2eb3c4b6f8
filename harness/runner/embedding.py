"""Sentence-encoder measurements: latency of one batch, and embeddings against the reference's.

The host sends token ids (tokenizing is never timed). The accuracy embeds one sentence per
call, so a sentence's embedding does not depend on which others share its batch (dynamic int8
quantizes each activation tensor with one scale, padding included).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from . import disturbance, intervals
from .events import Event, metric
from .measure import contention_metric, sample_until_stopped, save_atomically
from .timing import StopRule

PAD_ID = 0  # padded positions are masked out, so the id there only has to exist in the vocabulary


class EncoderBackend(Protocol):
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, int]: ...


def pad_batch(sentences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), right-padded to the longest sentence."""
    length = max(len(ids) for ids in sentences)
    input_ids = np.full((len(sentences), length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(sentences), length), dtype=np.int64)
    for row, ids in enumerate(sentences):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def latency(backend: EncoderBackend, job: dict[str, Any], sensor: Any = None) -> Iterator[Event]:
    """One call embedding the job's batch, repeated under the prefill stopping rule."""
    input_ids, mask = pad_batch(job["sentences"])
    for _ in range(job["warmup"]):
        backend.embed(input_ids, mask)
    limits, sysfs_root = disturbance.for_job(job)
    measured = disturbance.until_clean(lambda: _latency_region(backend, input_ids, mask, StopRule.from_job(job), sensor),
                                       limits, sysfs_root)
    run_ms, why, sampler = measured.value
    region = disturbance.fields(measured)
    median_ms = float(np.median(run_ms))
    shape = f"batch of {input_ids.shape[0]} sentences padded to {input_ids.shape[1]} tokens"
    yield metric("embed_ms", median_ms, "ms", run_ms, note=f"{shape}; stopped at n={len(run_ms)}: {why}", **region)
    yield metric("sentences_per_s", input_ids.shape[0] / (median_ms / 1e3), "sent/s", **region)
    yield contention_metric("embed_contention", measured)
    if sensor is not None:
        summary = sampler.summary(sampler.elapsed_s, len(run_ms))
        how = f"while embedding; {summary['method']}, {len(summary['samples'])} samples"
        yield metric("power_w", summary["avg_w"], "W", [w for _, w in summary["samples"]] or None, note=how, **region)
        yield metric("power_peak_w", summary["peak_w"], "W", note="while embedding" if summary["peak_w"] is not None
                     else f"while embedding; unavailable: {summary['peak_error']}", **region)


def _latency_region(backend: EncoderBackend, input_ids: np.ndarray, mask: np.ndarray, rule: StopRule,
                    sensor: Any) -> tuple[list[float], str, Any]:
    return sample_until_stopped(rule, sensor, lambda run_ms: run_ms.append(backend.embed(input_ids, mask)[1] / 1e6))


def similarity(backend: EncoderBackend, job: dict[str, Any]) -> Iterator[Event]:
    """Spearman of pair similarities with the gold scores; against the reference's embeddings,
    per-sentence cosine and the Spearman of the two sets of pair similarities."""
    embeddings = np.concatenate([backend.embed(*pad_batch([ids]))[0] for ids in job["sentences"]]).astype(np.float32)
    pairs = np.asarray(job["pairs"], dtype=np.int64)
    scores = pair_similarities(embeddings, pairs)
    if job.get("gold"):
        gold = np.asarray(job["gold"], dtype=np.float64)
        yield _with_interval("gold_spearman", lambda i: spearman(scores[i], gold[i]), len(pairs), "pairs")
    if job.get("save_embeddings"):
        save_atomically(job["save_embeddings"], embeddings)
    if not job.get("reference_embeddings"):
        return
    reference = np.asarray(np.load(job["reference_embeddings"]), dtype=np.float32)
    if reference.shape != embeddings.shape:
        raise ValueError(f"reference embeddings have shape {reference.shape}, this variant {embeddings.shape}")
    cosines = row_cosines(embeddings, reference)
    references = pair_similarities(reference, pairs)
    yield _with_interval("cosine_mean", lambda i: float(cosines[i].mean()), len(cosines), "sentences")
    yield _with_interval("cosine_min", lambda i: float(cosines[i].min()), len(cosines), "sentences")
    yield _with_interval("rank_spearman", lambda i: spearman(scores[i], references[i]), len(pairs), "pairs")


def _with_interval(name: str, statistic: Any, units: int, unit: str) -> Event:
    """The metric over every unit, with its 95% bootstrap interval over resampled units."""
    everything = np.arange(units)
    interval = intervals.bootstrap(units, statistic)
    how = f"bootstrap over {units} {unit}"
    shown = f"; 95% interval {interval[0]:.4g}-{interval[1]:.4g} ({how})" if interval else ""
    return metric(name, statistic(everything), "", note=f"{units} {unit}{shown}", **intervals.fields(interval, how))


def row_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``first`` with the same row of ``second``."""
    a, b = first.astype(np.float64), second.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-30)


def pair_similarities(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return row_cosines(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks, ties given their average rank.

    NaN when either side is constant (no ranking to agree with).
    """
    a, b = average_ranks(np.asarray(first, dtype=np.float64)), average_ranks(np.asarray(second, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1; equal values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    _, first_index, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first_index + (counts + 1) / 2.0, counts)
    return ranks
