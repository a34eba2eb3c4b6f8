"""Did a metric really get worse than its baseline? Relative limits plus a rank test on raw samples.

A night's latency samples are noisy; a relative limit alone would fail nights on noise, and a
test alone would fail them on tiny but real shifts nobody cares about. So a metric with raw
samples on both sides regresses only when its median moved the wrong way by more than the rule
allows AND a one-sided Mann-Whitney U test (as google-benchmark's ``compare.py`` uses) says the
shift is not noise. The test runs on independent units, not on pooled samples: the decode steps
of one round are autocorrelated and taken at rising context depths, so each round (one decode
from the prompt) is reduced to its median first, and the message names the unit. One-number
metrics (size, perplexity) have no samples: a plain relative limit. The tests are scipy.stats'.

Pure functions on numbers; the store and the choice of baseline live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import METRICS, Direction

MIN_SAMPLES = 5  # fewer on either side: the test has no power, use the scalar rule
SAME_WITHIN = 0.001  # a scalar that moved less than 0.1% is reported "same", not better/worse


@dataclass(frozen=True)
class RegressionRule:
    """How much worse ``metric`` may get: relatively (``max_change``) and beyond an absolute floor.

    ``min_abs_change`` exists for metrics near zero (KL divergence), where a relative limit says
    nothing: 0.001 -> 0.002 nats is +100% and still meaningless.
    """

    metric: str
    max_change: float
    alpha: float = 0.01
    min_abs_change: float = 0.0

    @property
    def better(self) -> Direction:
        return METRICS[self.metric].better


@dataclass(frozen=True)
class Comparison:
    """One metric, baseline against new, with the numbers a release manager needs to judge it.

    ``change`` is (new - old) / old; ``worse_by`` is the same change signed so that > 0 is worse.
    ``p_value`` is the one-sided Mann-Whitney U p-value in the direction the median moved
    (None for scalar metrics).
    """

    metric: str
    baseline_value: float | None
    value: float | None
    change: float | None
    worse_by: float | None
    p_value: float | None
    regressed: bool
    reason: str
    verdict: str = "same"  # regressed | worse | better | same | n/a
    max_change: float = 0.0
    min_abs_change: float = 0.0

    def message(self) -> str:
        """E.g. ``decode_ms regressed: 31.2 -> 34.9 ms (+11.9%, limit +5%), Mann-Whitney U p=0.0003 < 0.01``."""
        if self.change is None:
            return f"{self.metric} {self.verdict}: {self.reason}"
        info = METRICS.get(self.metric)
        unit = f" {info.unit}" if info and info.unit else ""
        sign = "-" if info and info.better == "higher" else "+"
        limit = f"limit {sign}{self.max_change * 100:.3g}%"
        if self.min_abs_change:
            limit += f" and {sign}{self.min_abs_change:g}"
        return (f"{self.metric} {self.verdict}: {_num(self.baseline_value)} -> {_num(self.value)}{unit} "
                f"({_pct(self.change)}, {limit}), {self.reason}")


# Throughputs (tok/s) are not ruled: they are 1/median of a sampled latency, which its own rule
# tests with the rank test; a scalar rule on the derived number would gate noise.
DEFAULT_RULES: dict[str, RegressionRule] = {
    rule.metric: rule
    for rule in (
        RegressionRule("decode_ms", 0.05),
        RegressionRule("decode_vs_baseline", 0.03),
        RegressionRule("prefill_ms", 0.05),
        RegressionRule("ttft_ms", 0.05),
        RegressionRule("infer_ms", 0.05),  # a generic model's run, judged like prefill (infer_per_s follows from it)
        RegressionRule("peak_rss_mb", 0.10),
        RegressionRule("size_mb", 0.01),
        RegressionRule("perplexity", 0.02),
        RegressionRule("kl_mean", 0.25, min_abs_change=0.005),
        RegressionRule("top1_agreement", 0.0, min_abs_change=0.01),
    )
}


def compare_metric(
    rule: RegressionRule,
    baseline_value: float | None,
    baseline_samples: Sequence[float] | None,
    value: float | None,
    samples: Sequence[float] | None,
    unit_sizes: tuple[int, int] = (1, 1),
) -> Comparison:
    """Judge one metric. ``unit_sizes``: how many consecutive samples of (baseline, new) form one
    independent unit (a decode round); each unit is reduced to its median. With >= MIN_SAMPLES
    units on both sides the medians and a rank test over the units decide; otherwise the scalar
    values and the relative limit (and absolute floor) alone."""
    old_s, new_s = _finite(baseline_samples), _finite(samples)
    old_u, new_u = unit_medians(old_s, unit_sizes[0]), unit_medians(new_s, unit_sizes[1])
    if old_u.size >= MIN_SAMPLES and new_u.size >= MIN_SAMPLES:
        return _compare_samples(rule, old_s, new_s, (old_u, new_u), unit_sizes)
    return _compare_scalars(rule, baseline_value, value)


def unit_medians(samples: np.ndarray, unit_size: int) -> np.ndarray:
    """The median of each whole unit of ``unit_size`` consecutive samples (a partial last unit is dropped)."""
    if unit_size <= 1:
        return samples
    whole = samples.size // unit_size * unit_size
    return np.median(samples[:whole].reshape(-1, unit_size), axis=1)


def _units(count: int, unit_size: int) -> str:
    return f"{count} rounds of {unit_size} steps" if unit_size > 1 else f"{count} calls"


def _compare_samples(rule: RegressionRule, old_s: np.ndarray, new_s: np.ndarray,
                     units: tuple[np.ndarray, np.ndarray], unit_sizes: tuple[int, int]) -> Comparison:
    old, new = float(np.median(old_s)), float(np.median(new_s))
    change, worse_by = relative_change(old, new, rule.better)
    worse_side = "greater" if rule.better == "lower" else "less"  # new stochastically worse than old
    better_side = "less" if worse_side == "greater" else "greater"
    old_u, new_u = units
    p = mann_whitney_u(new_u, old_u, worse_side if worse_by >= 0 else better_side)[1]
    significant = p < rule.alpha
    big = _beyond_floor(rule, old, new)
    regressed = worse_by > rule.max_change and big and significant
    test = (f"Mann-Whitney U p={p:.2g} {'<' if significant else '>='} {rule.alpha:g} over "
            f"{_units(new_u.size, unit_sizes[1])} vs {_units(old_u.size, unit_sizes[0])}")
    if regressed:
        reason = test
    elif worse_by > rule.max_change and big:
        reason = f"{test}: within noise"
    elif not big:
        reason = f"within the absolute floor {rule.min_abs_change:g} ({test})"
    else:
        reason = f"within the limit ({test})"
    verdict = "regressed" if regressed else (_direction(worse_by) if significant and big else "same")
    return Comparison(rule.metric, old, new, change, worse_by, p, regressed, reason, verdict, rule.max_change,
                      rule.min_abs_change)


PAIRED_METRICS = frozenset({"decode_vs_baseline"})  # ratios to the baseline build, measured side by side


def compare_paired(rule: RegressionRule, ratios: Sequence[float] | None, against: str) -> Comparison:
    """Judge per-round ratios (this build / baseline build, lower is better) measured in one run:
    regressed when the median ratio is beyond the limit and a one-sided Wilcoxon signed-rank
    test on the log-ratios says the builds really differ."""
    values = _finite(ratios)
    values = values[values > 0]
    if values.size < MIN_SAMPLES:
        return Comparison(rule.metric, 1.0, None, None, None, None, False,
                          f"{values.size} paired rounds: too few to judge", "n/a", rule.max_change)
    ratio = float(np.median(values))
    worse_by = ratio - 1.0
    p = wilcoxon_signed_rank(np.log(values), "greater" if worse_by >= 0 else "less")
    significant = p < rule.alpha
    regressed = worse_by > rule.max_change and significant
    test = f"Wilcoxon signed-rank p={p:.2g} {'<' if significant else '>='} {rule.alpha:g} over {values.size} rounds"
    reason = test if regressed or worse_by <= rule.max_change else f"{test}: within noise"
    verdict = "regressed" if regressed else (_direction(worse_by) if significant else "same")
    return Comparison(rule.metric, 1.0, ratio, worse_by, worse_by, p, regressed, f"{reason}, against {against}",
                      verdict, rule.max_change)


def wilcoxon_signed_rank(differences: Sequence[float] | np.ndarray, alternative: str) -> float:
    """One-sided p-value that ``differences`` are centred above 0 (``greater``) or below (``less``):
    ``scipy.stats.wilcoxon`` (exact for small samples without ties; zeros dropped)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    return float(stats.wilcoxon(d, alternative=alternative).pvalue)


def _compare_scalars(rule: RegressionRule, old: float | None, new: float | None) -> Comparison:
    if not _is_number(old) or not _is_number(new):
        missing = "baseline" if not _is_number(old) else "new run"
        return Comparison(rule.metric, old, new, None, None, None, False, f"no value in the {missing}", "n/a",
                          rule.max_change, rule.min_abs_change)
    assert old is not None and new is not None
    change, worse_by = relative_change(old, new, rule.better)
    big = _beyond_floor(rule, old, new)
    regressed = worse_by > rule.max_change and big
    if regressed:
        reason = "over the limit"
    elif not big:
        reason = f"within the absolute floor {rule.min_abs_change:g}"
    else:
        reason = "within the limit"
    moved = abs(worse_by) > SAME_WITHIN and big
    verdict = "regressed" if regressed else (_direction(worse_by) if moved else "same")
    return Comparison(rule.metric, old, new, change, worse_by, None, regressed, reason, verdict, rule.max_change,
                      rule.min_abs_change)


def relative_change(old: float, new: float, better: str) -> tuple[float, float]:
    """(signed change, change towards worse); from 0 any move is infinitely large."""
    if old == 0:
        change = 0.0 if new == 0 else math.copysign(math.inf, new)
    else:
        change = (new - old) / abs(old)
    return change, (change if better == "lower" else -change)


def mann_whitney_u(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                   alternative: str = "two-sided") -> tuple[float, float]:
    """(U of x, p-value) of ``scipy.stats.mannwhitneyu(x, y, alternative=...)`` (method "auto":
    exact for small samples without ties, else the normal approximation with tie and continuity
    corrections). "greater" tests whether x tends to be larger than y."""
    from scipy import stats

    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.size == 0 or ys.size == 0:
        raise ValueError("mann_whitney_u needs samples on both sides")
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be two-sided, less or greater, not {alternative!r}")
    if np.all(xs == xs[0]) and np.all(ys == xs[0]):  # every value equal: no evidence of anything
        return float(xs.size * ys.size / 2), 1.0
    result = stats.mannwhitneyu(xs, ys, alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def _beyond_floor(rule: RegressionRule, old: float, new: float) -> bool:
    return abs(new - old) > rule.min_abs_change


def _direction(worse_by: float) -> str:
    return "worse" if worse_by > 0 else ("better" if worse_by < 0 else "same")


def _finite(samples: Sequence[float] | None) -> np.ndarray:
    if samples is None:
        return np.empty(0)
    values = np.asarray([float(s) for s in samples if s is not None], dtype=np.float64)
    return values[np.isfinite(values)]


def _is_number(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _pct(change: float) -> str:
    return f"{change * 100:+.1f}%" if math.isfinite(change) else ("+inf" if change > 0 else "-inf")
