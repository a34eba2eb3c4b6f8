"""The history's verdict rows: a judged variant, one whose measurement failed, one the device
cannot run."""

from __future__ import annotations

from typing import Any

from .profiles import DeviceProfile
from .results import VariantResult, now
from .suites import Expectation, Suite, VariantSpec
from .verdict import Verdict


def judged(run_id: str, suite: Suite, device: DeviceProfile, variant: VariantSpec, verdict: Verdict,
           result: VariantResult, expected: Expectation | None) -> dict[str, Any]:
    outcome = "error" if result.errors else verdict.outcome
    return {
        **_item(run_id, suite, device, variant), "passed": verdict.passed and not result.errors, "verdict": outcome,
        "breaches": [b.reason for b in verdict.breaches], "error": "; ".join(result.errors) or None,
        "inconclusive": list(verdict.inconclusive), "baseline_excluded": verdict.baseline_excluded,
        "expected": expected.blocked if expected else None,
    }


def error(run_id: str, suite: Suite, device: DeviceProfile, variant: VariantSpec, why: str) -> dict[str, Any]:
    return {**_item(run_id, suite, device, variant), "passed": False, "breaches": [], "error": why}


def unsupported(run_id: str, suite: Suite, device: DeviceProfile, variant: VariantSpec, why: str) -> dict[str, Any]:
    return {**_item(run_id, suite, device, variant), "passed": False, "verdict": "unsupported", "breaches": [],
            "unsupported": why}


def _item(run_id: str, suite: Suite, device: DeviceProfile, variant: VariantSpec) -> dict[str, Any]:
    return {"run_id": run_id, "time": now(), "suite": suite.name, "device": device.name, "variant": variant.name}
