from __future__ import annotations

import math

import numpy as np
import pytest

from edgegate.regression import DEFAULT_RULES, Comparison, RegressionRule, compare_metric, mann_whitney_u

DECODE = DEFAULT_RULES["decode_ms"]


def lognormal(seed: int, n: int = 60, median: float = 30.0, sigma: float = 0.05) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(median), sigma, n)


def judge(rule: RegressionRule, old: np.ndarray, new: np.ndarray) -> Comparison:
    return compare_metric(rule, float(np.median(old)), list(old), float(np.median(new)), list(new))


def test_same_distribution_does_not_regress() -> None:
    result = judge(DECODE, lognormal(1), lognormal(2))
    assert not result.regressed
    assert result.p_value is not None and result.p_value > DECODE.alpha
    assert result.verdict == "same"


def test_ten_percent_slowdown_regresses_with_small_p() -> None:
    old, new = lognormal(3), lognormal(4) * 1.10
    result = judge(DECODE, old, new)
    assert result.regressed and result.verdict == "regressed"
    assert result.p_value is not None and result.p_value < 1e-6
    assert result.change == pytest.approx(np.median(new) / np.median(old) - 1)
    assert result.worse_by == pytest.approx(result.change)
    message = result.message()
    assert message.startswith(f"decode_ms regressed: {np.median(old):.4g} -> {np.median(new):.4g} ms (+")
    assert "limit +5%), Mann-Whitney U p=" in message and "< 0.01" in message


def test_three_percent_slowdown_under_a_five_percent_limit_passes() -> None:
    result = judge(DECODE, lognormal(5, sigma=0.02), lognormal(6, sigma=0.02) * 1.03)
    assert 0 < result.worse_by < 0.05  # type: ignore[operator]
    assert not result.regressed
    assert result.verdict == "worse"  # real (significant) but allowed


def test_large_shift_of_pure_noise_is_not_a_regression() -> None:
    """Medians 20% apart, but the samples are so spread out that the test cannot tell them apart."""
    old = np.array([10.0, 40.0, 12.0, 38.0, 11.0, 39.0])
    new = np.array([12.0, 41.0, 14.0, 39.0, 13.0, 40.0])
    result = judge(DECODE, old, new)
    assert result.worse_by > 0.05  # type: ignore[operator]
    assert not result.regressed and "within noise" in result.reason


def test_fewer_than_five_samples_fall_back_to_the_scalar_rule() -> None:
    old, new = [10.0, 30.0, 11.0], [30.0, 12.0, 31.0]  # medians 11 -> 30: huge, but 3 samples each
    steady = compare_metric(DECODE, 20.0, old, 20.5, new)
    assert steady.p_value is None and not steady.regressed
    assert steady.change == pytest.approx(0.025)
    slower = compare_metric(DECODE, 20.0, old, 22.0, new)
    assert slower.p_value is None and slower.regressed and slower.reason == "over the limit"


def test_higher_is_better_metrics_regress_when_they_drop() -> None:
    rule = RegressionRule("decode_tok_s", 0.05)
    old = lognormal(7, median=40.0)
    slower = judge(rule, old, lognormal(8, median=40.0) * 0.9)
    assert slower.regressed and slower.change < 0 and slower.worse_by > 0  # type: ignore[operator]
    assert "decode_tok_s regressed" in slower.message() and "limit -5%" in slower.message()
    faster = judge(rule, old, lognormal(9, median=40.0) * 1.1)
    assert not faster.regressed and faster.verdict == "better"
    assert faster.p_value is not None and faster.p_value < 1e-6  # p of the direction it moved


def test_perplexity_three_percent_over_a_two_percent_limit_regresses() -> None:
    result = compare_metric(DEFAULT_RULES["perplexity"], 10.0, None, 10.3, None)
    assert result.regressed and result.p_value is None
    assert result.message() == "perplexity regressed: 10 -> 10.3 (+3.0%, limit +2%), over the limit"
    assert not compare_metric(DEFAULT_RULES["perplexity"], 10.0, None, 10.15, None).regressed


def test_kl_near_zero_is_held_by_the_absolute_floor() -> None:
    rule = DEFAULT_RULES["kl_mean"]
    tiny = compare_metric(rule, 0.001, None, 0.002, None)
    assert tiny.change == pytest.approx(1.0) and not tiny.regressed
    assert "absolute floor" in tiny.reason
    assert compare_metric(rule, 0.01, None, 0.02, None).regressed


def test_top1_agreement_drop_beyond_one_point_regresses() -> None:
    rule = DEFAULT_RULES["top1_agreement"]
    assert not compare_metric(rule, 0.95, None, 0.945, None).regressed
    assert compare_metric(rule, 0.95, None, 0.93, None).regressed


def test_missing_value_is_not_comparable_rather_than_an_error() -> None:
    result = compare_metric(DEFAULT_RULES["size_mb"], None, None, 120.0, None)
    assert not result.regressed and result.verdict == "n/a" and result.change is None
    assert result.message() == "size_mb n/a: no value in the baseline"


def test_mann_whitney_exact_textbook_value() -> None:
    """No overlap, 5 vs 5: exactly one of C(10, 5) = 252 orderings is this extreme."""
    x, y = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    assert mann_whitney_u(x, y, "less") == (0.0, pytest.approx(1 / 252))
    assert mann_whitney_u(x, y, "two-sided")[1] == pytest.approx(2 / 252)
    assert mann_whitney_u(x, y, "greater")[1] == pytest.approx(1.0)


def test_mann_whitney_normal_approximation_textbook_value() -> None:
    """10 vs 10 without overlap: U2 = 100, mu = 50, sigma = sqrt(10*10*21/12), continuity -0.5."""
    u, p = mann_whitney_u(range(1, 11), range(11, 21), "less")
    z = (100 - 50 - 0.5) / math.sqrt(100 * 21 / 12)
    assert u == 0.0 and p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert p == pytest.approx(9.1304e-05, rel=1e-3)


def test_mann_whitney_with_ties_matches_scipy_values() -> None:
    """Values produced by scipy 1.17.1 ``mannwhitneyu`` (method auto -> asymptotic: ties)."""
    x, y = [1, 2, 2, 3, 3, 3, 4, 5, 9, 10], [3, 4, 4, 5, 6, 6, 7, 8, 8, 11, 12]
    assert mann_whitney_u(x, y, "less") == (25.0, pytest.approx(0.018327991366261610, rel=1e-9))
    assert mann_whitney_u(x, y)[1] == pytest.approx(0.03665598273252322, rel=1e-9)
    a = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    b = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    assert mann_whitney_u(a, b, "greater") == (58.0, pytest.approx(0.06645972909265946, rel=1e-9))


def test_identical_samples_give_p_one() -> None:
    assert mann_whitney_u([3.0] * 6, [3.0] * 7, "greater")[1] == 1.0
    assert not compare_metric(DECODE, 3.0, [3.0] * 6, 3.0, [3.0] * 7).regressed


def test_wilcoxon_signed_rank_exact_values_counted_by_hand() -> None:
    from edgegate.regression import wilcoxon_signed_rank

    # Ranks 1,2,3: 8 equally likely sign patterns; W+ = 6 only when all are positive.
    assert wilcoxon_signed_rank([0.1, 0.2, 0.3], "greater") == pytest.approx(1 / 8)
    # W+ = 1 + 3 = 4; patterns with W+ >= 4: {1,3}, {2,3}, {1,2,3}.
    assert wilcoxon_signed_rank([0.1, -0.2, 0.3], "greater") == pytest.approx(3 / 8)
    assert wilcoxon_signed_rank([0.1, -0.2, 0.3], "less") == pytest.approx(6 / 8)
    assert wilcoxon_signed_rank([0.0, 0.0], "greater") == 1.0


def test_wilcoxon_signed_rank_holds_its_size_under_the_null() -> None:
    from edgegate.regression import wilcoxon_signed_rank

    rng = np.random.default_rng(7)
    p_values = np.array([wilcoxon_signed_rank(rng.normal(0, 1, 12), "greater") for _ in range(2000)])
    assert 0.02 < np.mean(p_values < 0.05) <= 0.06
    shifted = np.array([wilcoxon_signed_rank(rng.normal(1.0, 1, 12), "greater") for _ in range(200)])
    assert np.mean(shifted < 0.05) > 0.7


def test_paired_ratios_regress_only_beyond_the_limit_and_the_noise() -> None:
    from edgegate.regression import DEFAULT_RULES, compare_paired

    rule = DEFAULT_RULES["decode_vs_baseline"]
    rng = np.random.default_rng(3)
    slower = compare_paired(rule, list(1.06 + rng.normal(0, 0.01, 12)), "the build of run B")
    assert slower.regressed and slower.p_value < 0.01 and "against the build of run B" in slower.message()
    assert not compare_paired(rule, list(1.0 + rng.normal(0, 0.01, 12)), "B").regressed
    assert not compare_paired(rule, list(1.01 + rng.normal(0, 0.002, 12)), "B").regressed  # real but within +3%
    noisy = compare_paired(rule, [1.3, 0.8, 1.25, 0.85, 1.2, 0.9], "B")
    assert not noisy.regressed
    assert compare_paired(rule, [1.5, 1.5], "B").verdict == "n/a"
