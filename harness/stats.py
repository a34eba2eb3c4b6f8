"""Summaries of latency samples: percentiles, spread, outliers and the median's bootstrap interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .runner.timing import (
    median_ci,  # one definition for the runner's stopping rule and the host
)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    iqr: float
    outliers: int  # samples beyond 1.5 IQR of the quartiles (Tukey's fences)
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples: list[float], seed: int = 0) -> Summary:
    """Percentiles (linear interpolation), sample stdev, IQR, Tukey outliers, CI of the median."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    q1, p50, q3, p90, p99 = np.percentile(values, [25, 50, 75, 90, 99])
    iqr = q3 - q1
    outliers = int(((values < q1 - 1.5 * iqr) | (values > q3 + 1.5 * iqr)).sum())
    low, high = median_ci(values, seed)
    stdev = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Summary(int(values.size), float(p50), float(p90), float(p99), float(values.mean()), stdev,
                   float(iqr), outliers, low, high)
