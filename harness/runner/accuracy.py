"""A causal LM's accuracy on the evaluation windows: perplexity, and KL and top-1 against the reference.

The reference variant saves, per predicted position, its ``TOP_K`` most likely tokens and their
log-probabilities (not the whole vocabulary: 4,096 positions x 49,152 tokens would be 800 MB on
the device). KL(reference || variant) is then computed over those tokens plus the rest of the
vocabulary as one bucket, which is exact when the tail holds no mass and otherwise a lower bound
(merging outcomes never raises a KL divergence). Every metric carries a 95% bootstrap interval
over windows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import intervals
from .backends import CausalLMBackend
from .backends.base import ScoringBackend
from .events import Event, metric

TOP_K = 256


def accuracy(backend: CausalLMBackend, job: dict[str, Any]) -> Iterator[Event]:
    """Perplexity on the text; KL and top-1 agreement against the reference's saved top tokens.

    One window's log-probs at a time (4,096 positions of the full vocabulary would be 800 MB)."""
    try:
        reference, problem = _reference(job), None
    except (OSError, ValueError, KeyError) as exc:  # reported after perplexity, which needs no reference
        reference, problem = None, exc
    nll, kl, agree, saved = [], [], [], []
    started = time.perf_counter()
    no_logits = getattr(backend, "NO_LOGITS", None)
    if no_logits and job.get("save_logprobs"):
        raise ValueError(f"the reference must give logits: {no_logits}")
    for window in job["windows"]:
        if no_logits:
            nll.append(_scored_nll(backend, window))
            continue
        logprobs, targets = _window_logprobs(backend, window)
        nll.append(-np.take_along_axis(logprobs, targets[:, None], axis=1)[:, 0].astype(np.float64))
        if job.get("save_logprobs"):
            saved.append(top_k(logprobs))
        if reference is not None:
            part = _slice(reference, sum(map(len, kl)), len(targets))
            kl.append(kl_to_reference(part, logprobs))
            agree.append((part["indices"][:, 0] == np.argmax(logprobs, axis=1)).astype(np.float64))
    unit = f"bootstrap over {len(nll)} windows of {len(nll[0])} predictions"
    cost = f"{sum(map(len, nll))} predictions in {time.perf_counter() - started:.1f} s"
    event = _metric("perplexity", _per_window(nll, lambda parts: float(np.exp(np.concatenate(parts).mean()))), "",
                    unit, cost)
    yield {**event, **(_ratio_interval(nll, reference) if reference is not None else {})}
    if saved:
        save_top_k(job["save_logprobs"], saved, np.concatenate(nll))
    if problem is not None:
        raise problem
    if reference is None:
        return
    if no_logits:
        for name, unit_name in (("kl_mean", "nats"), ("kl_max", "nats"), ("top1_agreement", "")):
            yield metric(name, None, unit_name, note=f"unavailable: {no_logits}", unsupported=True)
        return
    tail = f"KL over the reference's top {reference['indices'].shape[1]} tokens and the rest as one bucket"
    yield _metric("kl_mean", _per_window(kl, lambda parts: float(np.concatenate(parts).mean())), "nats", unit, tail)
    yield _metric("kl_max", _per_window(kl, lambda parts: float(np.concatenate(parts).max())), "nats", unit, tail)
    yield _metric("top1_agreement", _per_window(agree, lambda parts: float(np.concatenate(parts).mean())), "", unit)


def _ratio_interval(nll: list[np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """Perplexity over the reference's, with its interval from the same resampled windows on both
    sides: the windows' own difficulty, shared by both, cancels (it does not in either interval alone)."""
    if "nll" not in reference:
        return {}
    theirs = _split(reference["nll"].astype(np.float64), nll)

    def ratio(picked: Any) -> float:
        return float(np.exp(np.concatenate([nll[i] for i in picked]).mean()
                            - np.concatenate([theirs[i] for i in picked]).mean()))

    interval = intervals.bootstrap(len(nll), ratio)
    if interval is None:
        return {}
    return {"ratio": ratio(range(len(nll))), "ratio_ci_low": interval[0], "ratio_ci_high": interval[1]}


def _split(values: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    return np.split(values, np.cumsum([len(part) for part in like])[:-1])


def _reference(job: dict[str, Any]) -> dict[str, np.ndarray] | None:
    if not job.get("reference_logprobs"):
        return None
    reference = dict(np.load(job["reference_logprobs"]))
    positions = sum(len(window) - 1 for window in job["windows"])
    if reference["indices"].shape[0] != positions:
        raise ValueError(f"reference top tokens cover {reference['indices'].shape[0]} positions, "
                         f"this variant's windows {positions}")
    return reference


def _slice(reference: dict[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    return {name: reference[name][start:start + count] for name in ("indices", "logprobs")}


def _per_window(parts: list[np.ndarray], statistic: Any) -> tuple[float, tuple[float, float] | None]:
    """The statistic over every window, and its bootstrap interval over resampled windows."""
    return statistic(parts), intervals.bootstrap(len(parts), lambda picked: statistic([parts[i] for i in picked]))


def _metric(name: str, measured: tuple[float, tuple[float, float] | None], unit: str, ci_unit: str,
            note: str | None = None) -> Event:
    value, interval = measured
    shown = f"95% interval {interval[0]:.4g}-{interval[1]:.4g} ({ci_unit})" if interval else None
    text = "; ".join(part for part in (note, shown) if part) or None
    return metric(name, value, unit, note=text, **intervals.fields(interval, ci_unit))


def _window_logprobs(backend: CausalLMBackend, window: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs of each next token of the window, from one call over the whole window (or the
    backend's own route where its multi-token step gives only the last position)."""
    ids = np.asarray([window], dtype=np.int64)
    if hasattr(backend, "window_logits"):
        logits = backend.window_logits(ids)
    else:
        logits = backend.step(ids, backend.empty_past(), 0)[0][0]
    if logits.shape[0] != len(window):
        raise ValueError(f"the backend gave logits for {logits.shape[0]} of the window's {len(window)} positions")
    return _log_softmax(logits[:-1].astype(np.float32)), ids[0, 1:]


def _scored_nll(backend: ScoringBackend, window: list[int]) -> np.ndarray:
    nll = np.asarray(backend.target_nll(window), dtype=np.float64)
    if nll.shape != (len(window) - 1,):
        raise ValueError(f"the backend scored {nll.shape} of the window's {len(window) - 1} predictions")
    return nll


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def top_k(logprobs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most likely tokens of each position, most likely first, and their log-probs."""
    k = min(k, logprobs.shape[1])
    top = np.argpartition(-logprobs, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(logprobs, top, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int32), np.take_along_axis(picked, order, axis=1)


def save_top_k(path: str, windows: list[tuple[np.ndarray, np.ndarray]], nll: np.ndarray) -> None:
    """Every window's top tokens, and each position's negative log-likelihood of its target (for
    the perplexity ratio's interval), in one ``.npz``, written atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(temporary, indices=np.concatenate([i for i, _ in windows]),
             logprobs=np.concatenate([v for _, v in windows]).astype(np.float32), nll=nll.astype(np.float32))
    os.replace(temporary, path)


def kl_to_reference(reference: Any, logprobs: np.ndarray) -> np.ndarray:
    """KL(reference || variant) per position over the reference's top tokens plus one tail bucket."""
    indices, ref_top = reference["indices"], reference["logprobs"].astype(np.float64)
    var_top = np.take_along_axis(logprobs, indices, axis=1).astype(np.float64)
    p, q = np.exp(ref_top), np.exp(var_top)
    head = (p * (ref_top - var_top)).sum(axis=1)
    p_tail, q_tail = np.clip(1 - p.sum(axis=1), 0, 1), np.clip(1 - q.sum(axis=1), 1e-12, 1)
    tail = np.where(p_tail > 1e-12, p_tail * (np.log(np.maximum(p_tail, 1e-300)) - np.log(q_tail)), 0.0)
    return np.maximum(head + tail, 0.0)
