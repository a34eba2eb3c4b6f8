"""One item's verdict from its breaches and its measurements: ship, blocked or inconclusive.

A latency metric whose timed region stayed disturbed after the runner measured it again (another
process took the CPU, the hypervisor stole time, a clock fell, a trip point was reached, the
device lease was lost) is not judged: its thresholds and regressions make the item
*inconclusive*, never blocked and never silently passed. Anything else that broke (accuracy,
size, an undisturbed latency) blocks the item as before. Such a run never becomes a baseline,
nor does one whose timings were slowed on purpose (``EDGEGATE_INJECT_SLOWDOWN``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .gate import Breach

SHIP, BLOCKED, INCONCLUSIVE, ERROR = "ship", "blocked", "inconclusive", "error"


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, the reasons it gives, and why the run may not be a baseline."""

    outcome: str  # SHIP | BLOCKED | INCONCLUSIVE
    breaches: tuple[Breach, ...] = ()
    inconclusive: tuple[str, ...] = ()  # one line per unjudged metric, with its figure and why
    baseline_excluded: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == SHIP

    def messages(self, device: str, variant: str) -> list[str]:
        lines = [breach.message(device, variant) for breach in self.breaches]
        return lines + [f"{variant} on {device}: inconclusive: {line}" for line in self.inconclusive]


def decide(breaches: Iterable[Breach], judged: Iterable[str], disturbed: Mapping[str, str],
           values: Mapping[str, float | None], excluded: Iterable[str] = ()) -> Verdict:
    """``judged``: the metrics a threshold or regression rule looked at; ``disturbed``: metric ->
    why its region was disturbed; ``excluded``: run-wide reasons the run may not be a baseline."""
    breaches = tuple(breaches)
    kept = tuple(b for b in breaches if b.threshold.metric not in disturbed)
    unjudged = sorted({b.threshold.metric for b in breaches} | set(judged), key=str)
    inconclusive = tuple(_unjudged(name, values.get(name), disturbed[name]) for name in unjudged if name in disturbed)
    reasons = list(excluded) + ([f"disturbed: {', '.join(sorted(disturbed))}"] if disturbed else [])
    outcome = BLOCKED if kept else (INCONCLUSIVE if inconclusive else SHIP)
    return Verdict(outcome, kept, inconclusive, "; ".join(reasons) or None)


def _unjudged(metric: str, value: float | None, why: str) -> str:
    shown = "not measured" if value is None else f"{value:.4g}"
    return f"{metric} = {shown} not judged: its timed region was disturbed ({why})"
