"""When to stop repeating a measurement (how busy the device was meanwhile: ``disturbance``).

Imported by the host too (``edgegate.stats``) so both sides compute the interval the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def median_ci(samples: Any, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size < 2:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class StopRule:
    """Repeat until the median's CI half-width is within ``target_ci`` of the median (0: never),
    or ``max_samples`` or ``max_seconds`` is reached; never stop before ``min_samples``."""

    min_samples: int
    max_samples: int
    max_seconds: float
    target_ci: float

    @classmethod
    def from_job(cls, job: dict[str, Any], per_round: int = 1) -> StopRule:
        if "target_ci" not in job:  # a fixed count: the older form of a job
            count = int(job["repetitions"]) * per_round
            return cls(count, count, float("inf"), 0.0)
        return cls(int(job["min_samples"]), int(job["max_samples"]), float(job["max_seconds"]), float(job["target_ci"]))

    def verdict(self, samples: list[float], elapsed_s: float) -> str | None:
        """Why to stop now, or None to go on."""
        count = len(samples)
        if count < self.min_samples:
            return None
        if count >= self.max_samples:
            return f"count cap {self.max_samples}"
        if elapsed_s >= self.max_seconds:
            return f"time cap {self.max_seconds:g} s"
        if self.target_ci > 0 and relative_half_width(samples) <= self.target_ci:
            return f"median CI within +/-{self.target_ci:.1%}"
        return None if self.target_ci > 0 else f"fixed count {self.min_samples}"


def relative_half_width(samples: list[float]) -> float:
    low, high = median_ci(samples, resamples=400)
    middle = float(np.median(samples))
    return (high - low) / 2 / middle if middle else float("inf")
