"""EdgeGate's pytest hooks: implement them in a ``conftest.py`` or a pytest plugin.

pytest collects a hook only when its name starts with ``pytest_``, hence ``pytest_edgegate_*``
(as pytest-benchmark's ``pytest_benchmark_*``). ``hooks.pytest_addhooks`` registers them; they
fire in ``extensions``: on the process that measures (an xdist worker too) for a row and a verdict,
on the one that writes the report for its data.

The hooks change things in place, as pytest-benchmark's ``update`` hooks do, rather than return
copies: every implementation then sees the changes of those before it. What they may change,
and what they may not, each hook says; a change they may not make fails the item, naming the hook.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_edgegate_result_before_store(config: pytest.Config, row: dict[str, Any]) -> None:
    """One measurement row, just before the history stores it (and before the report and the
    pytest-benchmark JSON read it from there). Change ``row`` in place; the return value is ignored.

    The row's keys are the history's ``results`` columns: ``run_id``, ``suite``, ``device``,
    ``variant`` and ``metric`` say what it is and may not change; ``value``, ``note``, ``samples``
    and the rest may. The verdict of the running item is judged on the measurement as the runner
    gave it; the row is what later runs compare with (baselines) and what the report shows.

    To mark every figure of a lab's bench in its note:

    .. sourcecode:: python

        def pytest_edgegate_result_before_store(config, row):
            row["note"] = "; ".join(part for part in (row.get("note"), "bench: lab 3, shelf B") if part)
    """


@pytest.hookspec
def pytest_edgegate_report_context(config: pytest.Config, context: dict[str, Any]) -> None:
    """The report's data (what the jinja template ``report.html.j2`` gets: ``run``, ``rows``,
    ``columns``, ``warnings``, ``overall``, ``environment``, ...) before the page is rendered.
    Change ``context`` in place; the return value is ignored. The sections of installed
    ``edgegate.report_sections`` plugins are made after this hook, from the data it leaves.

    To add a warning to the page:

    .. sourcecode:: python

        def pytest_edgegate_report_context(config, context):
            context["warnings"].append({"device": "all", "variant": "all", "metric": "-",
                                        "note": "measured during the data-centre maintenance window"})
    """


@pytest.hookspec(firstresult=True)
def pytest_edgegate_verdict(config: pytest.Config, item: pytest.Item, verdict: Any, result: Any) -> Any:
    """An item's verdict (``edgegate.verdict.Verdict``) before it is final; ``result`` is the
    variant's measurements (``result.metrics[name].value``, ``.note``, ``result.settings``).
    Return a new Verdict to replace it, or None to keep it; the first non-None answer counts.

    A hook may only make a verdict stricter (ship, then inconclusive, then blocked), with a reason:
    a blocked one needs a breach, an inconclusive one a line in ``inconclusive``. To waive a known
    block, declare ``expect: {blocked: ...}`` in the suite instead. The replaced verdict is what
    pytest reports, the history records and the report shows.

    To block any variant whose resident memory exceeds a lab's own limit:

    .. sourcecode:: python

        import dataclasses
        from edgegate.gate import Breach, Threshold

        def pytest_edgegate_verdict(config, item, verdict, result):
            rss = result.metrics.get("peak_rss_mb")
            if rss is None or rss.value is None or rss.value <= 512:
                return None
            breach = Breach(Threshold("peak_rss_mb", "max", 512), rss.value, 512,
                            f"peak_rss_mb = {rss.value:.0f} MB > 512 MB (the lab's limit)")
            return dataclasses.replace(verdict, outcome="blocked", breaches=(*verdict.breaches, breach))
    """
