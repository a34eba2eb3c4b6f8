"""What every runtime backend offers the measurements, and what it may lack.

A backend is one file in this package that imports its runtime only when a model is opened, so
the runner ships to a device that has only the runtimes its variants use.

Every causal-LM backend takes ``(model_path, providers, threads, slowdown=0.0, spin=True)``:
``providers`` matter to onnxruntime only; ``threads`` 0 means one per physical core on every
runtime (``resolve_threads``: onnxruntime's own default, which the others' defaults are not:
LiteRT's Python interpreter runs 1 thread, llama-cpp-python half the logical CPUs), so runtimes
are compared on the same cores; ``slowdown`` stretches each timed call (fault
injection for testing the gate); ``spin=False`` asks for worker threads that sleep when idle,
for two models decoding side by side.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import numpy as np


class CausalLMBackend(Protocol):
    """A loaded decoder. ``step`` runs ``input_ids`` on top of ``past`` and returns new state.

    The logits ``step`` returns cover every input position, or only the last one where the
    runtime gives no more (then the backend also offers ``window_logits`` for accuracy, or is a
    ``ScoringBackend``)."""

    def empty_past(self) -> Any: ...

    def step(self, input_ids: np.ndarray, past: Any, past_len: int) -> tuple[np.ndarray, Any, int]:
        """(logits [1, positions, vocab], new past, nanoseconds spent in the runtime's own call)."""
        ...

    def settings(self) -> dict[str, Any]: ...


class WindowLogits(Protocol):
    """A backend whose multi-token ``step`` does not return every position's logits."""

    def window_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [positions, vocab] of one window of ``input_ids`` [1, positions], from an empty cache."""
        ...


class ScoringBackend(Protocol):
    """A runtime that scores text but gives no logits (LiteRT-LM's engine): perplexity only."""

    NO_LOGITS: str  # why: names the runtime and what it gives instead

    def target_nll(self, window: list[int]) -> np.ndarray:
        """Negative log-likelihood of each of ``window[1:]`` given the tokens before it."""
        ...


def hold(start_ns: int, slowdown: float) -> None:
    """Stretch the call that began at ``start_ns`` by ``slowdown`` of its length, exactly: a
    busy wait, since a sleep of a fraction of a millisecond overshoots by tens of microseconds."""
    end = time.perf_counter_ns() + int((time.perf_counter_ns() - start_ns) * slowdown)
    while time.perf_counter_ns() < end:
        pass


def timed(call: Any, slowdown: float) -> tuple[Any, int]:
    """``call()``'s result and its nanoseconds, stretched by ``slowdown`` when asked."""
    start = time.perf_counter_ns()
    result = call()
    if slowdown:
        hold(start, slowdown)
    return result, time.perf_counter_ns() - start


def resolve_threads(threads: int) -> int:
    """``threads``, or where it is 0 one per physical core (onnxruntime's default)."""
    if threads > 0:
        return threads
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return int(physical or os.cpu_count() or 1)
