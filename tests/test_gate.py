from __future__ import annotations

from pathlib import Path

from edgegate import gate
from edgegate.gate import Threshold


def rules(**limits: tuple[str, float]) -> dict[str, tuple[Threshold, ...]]:
    return {metric: (Threshold(metric, kind, limit),) for metric, (kind, limit) in limits.items()}


def test_absolute_limits() -> None:
    thresholds = rules(decode_ms=("max", 50), top1_agreement=("min", 0.9))
    assert gate.check(thresholds, {"decode_ms": 49.9, "top1_agreement": 0.95}, None) == []
    breaches = gate.check(thresholds, {"decode_ms": 50.1, "top1_agreement": 0.8}, None)
    assert [b.threshold.metric for b in breaches] == ["decode_ms", "top1_agreement"]
    assert breaches[0].reason == "decode_ms = 50.1 ms > limit 50"
    assert breaches[1].reason == "top1_agreement = 0.8 < limit 0.9"


def test_ratio_limits_use_the_reference() -> None:
    thresholds = rules(perplexity=("max_ratio", 1.10))
    assert gate.check(thresholds, {"perplexity": 12.0}, {"perplexity": 11.0}) == []
    (breach,) = gate.check(thresholds, {"perplexity": 12.5}, {"perplexity": 11.0})
    assert breach.limit_value is not None and abs(breach.limit_value - 12.1) < 1e-9
    assert "(1.1 x reference 11)" in breach.reason


def test_unmeasured_metric_is_a_breach_with_its_reason() -> None:
    thresholds = rules(power_w=("max", 5))
    (breach,) = gate.check(thresholds, {"power_w": None}, None, {"power_w": "unavailable: no sensor"})
    assert "cannot be checked: power_w unavailable: no sensor" in breach.reason


def test_missing_reference_value_is_a_breach() -> None:
    (breach,) = gate.check(rules(size_mb=("max_ratio", 0.3)), {"size_mb": 10.0}, {})
    assert "no reference value" in breach.reason


def test_later_layers_override_per_metric(tmp_path: Path) -> None:
    suite = gate.parse_thresholds(tmp_path / "s.yaml", "thresholds", {"decode_ms": {"max": 100}, "size_mb": {"max": 9}})
    device = gate.parse_thresholds(tmp_path / "d.yaml", "thresholds", {"decode_ms": {"max": 300}})
    merged = gate.merge(suite, device)
    assert merged["decode_ms"][0].limit == 300 and merged["size_mb"][0].limit == 9


def test_limits_resolve_ratios_against_the_reference() -> None:
    thresholds = rules(perplexity=("max_ratio", 1.10), top1_agreement=("min", 0.8))
    assert gate.limits(thresholds, {"perplexity": 18.45}) == {"perplexity": "<= 20.3", "top1_agreement": ">= 0.8"}
    assert gate.limits(thresholds, None) == {"top1_agreement": ">= 0.8"}


def test_a_breach_gives_its_interval_and_says_when_it_straddles_the_limit() -> None:
    from edgegate.gate import Intervals, straddling

    rules = {"top1_agreement": (Threshold("top1_agreement", "min", 0.80),),
             "perplexity": (Threshold("perplexity", "max_ratio", 1.10),)}
    near = Intervals({"top1_agreement": (0.776, 0.803), "perplexity": (15.0, 23.0)}, {"perplexity": (1.11, 1.13)})
    values, reference = {"top1_agreement": 0.79, "perplexity": 20.1}, {"perplexity": 18.0}
    messages = [b.reason for b in gate.check(rules, values, reference, intervals=near)]
    assert messages == [
        "top1_agreement = 0.79 (95% interval 0.776-0.803, straddles the limit: within noise of it) < limit 0.8",
        "perplexity = 20.1 (95% interval 19.98-20.34) > limit 19.8 (1.1 x reference 18)"]
    # the ratio's interval decides a ratio limit: the absolute one (15-23) holds the text's own difficulty
    assert straddling(rules, near, reference) == {
        "top1_agreement": "95% interval 0.776-0.803 straddles the limit 0.8"}
    assert straddling(rules, Intervals({"perplexity": (15.0, 23.0)}), reference) == {}
