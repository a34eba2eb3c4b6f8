"""Where EdgeGate's pytest hooks (hookspec.py) fire, and the runner's stray output reaches the terminal.

The run (``edgegate.session.RunSession``) knows nothing of pytest: the recorder gives it a
``HookedStore``, whose ``append_results`` calls ``pytest_edgegate_result_before_store`` on each
row before the history stores it; the item has the run judge with ``final_verdict`` as its
review, so the verdict recorded is the one the hook made (only a stricter one is allowed), and
the recorder renders the report through ``report_hook``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from edgegate.errors import EdgeGateError
from edgegate.store import HistoryStore
from edgegate.transport.base import RUNNER_OUTPUT
from edgegate.verdict import BLOCKED, INCONCLUSIVE, SHIP, Verdict

ROW_IDENTITY = ("run_id", "suite", "device", "variant", "metric")  # what a row is: a hook may not change it
STRICTNESS = {SHIP: 0, INCONCLUSIVE: 1, BLOCKED: 2}


class HookError(EdgeGateError):
    """A hook implementation made a change its hook does not allow; names the hook."""


class HookedStore(HistoryStore):
    """The history, with ``pytest_edgegate_result_before_store`` called on each row it stores."""

    def __init__(self, location: Path | str, config: pytest.Config) -> None:
        super().__init__(location)
        self.config = config

    def append_results(self, rows: Iterable[dict[str, Any]]) -> None:
        changed = []
        for row in rows:
            mine = dict(row)  # the caller's row stays as the runner gave it
            self.config.hook.pytest_edgegate_result_before_store(config=self.config, row=mine)
            moved = [key for key in ROW_IDENTITY if mine.get(key) != row.get(key)]
            if moved:
                raise HookError(f"pytest_edgegate_result_before_store changed {', '.join(moved)} of the row "
                                f"{row.get('variant')}/{row.get('metric')}: what a row is may not change")
            changed.append(mine)
        super().append_results(changed)


def final_verdict(item: Any, verdict: Verdict, result: Any) -> Verdict:
    """``pytest_edgegate_verdict``'s answer, checked; ``verdict`` when no hook changes it.
    ``item``: the VariantItem (suite, device, variant); a failed measurement is an error whatever
    a hook would say, so the hook is not asked."""
    if result.errors:
        return verdict
    answer = item.config.hook.pytest_edgegate_verdict(config=item.config, item=item, verdict=verdict, result=result)
    if answer is None or answer == verdict:
        return verdict
    _check_stricter(verdict, answer)
    return answer


def _check_stricter(verdict: Verdict, answer: Any) -> None:
    hook = "pytest_edgegate_verdict"
    if not isinstance(answer, Verdict) or answer.outcome not in STRICTNESS:
        raise HookError(f"{hook} returned {answer!r}, not an edgegate.verdict.Verdict (ship, inconclusive or blocked)")
    if STRICTNESS[answer.outcome] < STRICTNESS[verdict.outcome]:
        raise HookError(f"{hook} made a {verdict.outcome} verdict {answer.outcome}: a hook may only make a verdict "
                        f"stricter; waive a known block with `expect: {{blocked: ...}}` in the suite")
    if answer.outcome == BLOCKED and not answer.breaches:
        raise HookError(f"{hook} blocked the item without a breach saying why")
    if answer.outcome == INCONCLUSIVE and not answer.inconclusive:
        raise HookError(f"{hook} made the item inconclusive without a line saying why")


def report_hook(config: pytest.Config) -> Callable[[dict[str, Any]], object]:
    """``render_run``'s ``before_render``: the page's data through ``pytest_edgegate_report_context``."""
    return lambda context: config.hook.pytest_edgegate_report_context(config=config, context=context)


class RunnerOutput(logging.Handler):
    """Shows what a runner printed that was not an event (``RUNNER_OUTPUT``) with the run's log."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.log = log
        RUNNER_OUTPUT.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log(record.getMessage())
        except Exception:  # noqa: BLE001 - logging must not break a measurement
            self.handleError(record)

    def close(self) -> None:
        RUNNER_OUTPUT.removeHandler(self)
        super().close()
