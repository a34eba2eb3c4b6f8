from __future__ import annotations

import numpy as np
import pytest

from edgegate.stats import summarize


def test_summary_matches_numpy() -> None:
    samples = list(np.random.default_rng(1).lognormal(3.0, 0.2, size=200))
    summary = summarize(samples)
    assert summary.n == 200
    assert summary.p50 == pytest.approx(np.percentile(samples, 50))
    assert summary.p99 == pytest.approx(np.percentile(samples, 99))
    assert summary.stdev == pytest.approx(np.std(samples, ddof=1))
    assert summary.ci_low <= summary.p50 <= summary.ci_high
    assert summary.p50 <= summary.p90 <= summary.p99


def test_interval_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(2)
    few = summarize(list(rng.normal(10, 1, size=20)))
    many = summarize(list(rng.normal(10, 1, size=2000)))
    assert (many.ci_high - many.ci_low) < (few.ci_high - few.ci_low) / 3


def test_empty_samples_refused() -> None:
    with pytest.raises(ValueError):
        summarize([])
