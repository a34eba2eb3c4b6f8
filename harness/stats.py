"""Summaries of latency samples: percentiles, spread and a bootstrap interval for the median."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples: list[float], seed: int = 0) -> Summary:
    """Percentiles (linear interpolation), sample stdev, and a percentile-bootstrap CI of the median."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    low, high = median_ci(values, seed)
    stdev = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Summary(int(values.size), float(p50), float(p90), float(p99), float(values.mean()), stdev, low, high)


def median_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if values.size < 2:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
    medians = np.median(values[picks], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)
