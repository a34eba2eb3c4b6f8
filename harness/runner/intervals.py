"""95% intervals of accuracy metrics: a percentile bootstrap over independent units.

Positions inside one evaluation window are not independent (they share their context), so the
language-model metrics resample whole windows; sentence metrics resample sentences, pair
metrics pairs. The unit is named with the interval, in the metric's note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95


def bootstrap(units: int, statistic: Callable[[np.ndarray], float], seed: int = 0,
              resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """Interval of ``statistic(indices)`` over units drawn with replacement; None below 2 units."""
    if units < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, units, units)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def fields(interval: tuple[float, float] | None, unit: str) -> dict[str, Any]:
    """What a metric event carries about its interval (see ``events.metric``)."""
    if interval is None:
        return {}
    return {"ci_low": interval[0], "ci_high": interval[1], "ci_unit": unit}
