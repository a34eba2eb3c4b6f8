"""Which past run a new run is compared with, and that run's numbers.

By default the baseline is the pinned run for the suite/device/variant, else the last run on the
main line in which that variant passed cleanly: a failed night, a feature branch, a night whose
timed regions stayed disturbed, one run with an injected slowdown or one whose device lease was
lost must never become the yardstick. The passing runs skipped for that are kept with the
choice, with their reasons, for the report. ``--baseline`` names one instead, by run id or by a git ref/tag/sha.
A missing baseline is None, never an error: the caller reports "no baseline" and moves on.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import StoreError
from .store import HistoryStore, decode_samples, decode_value

MAIN_BRANCHES = ("main", "master")
DIRTY = "-dirty"


@dataclass(frozen=True)
class BaselineChoice:
    """The run chosen as baseline and how it was chosen (shown next to every regression);
    ``skipped``: newer passing runs that were not clean enough, as "RUN_ID: why"."""

    run_id: str
    reason: str
    skipped: tuple[str, ...] = ()


def skipped_runs(store: HistoryStore, suite: str, device: str, variant: str, exclude_run: str | None = None,
                 newer_than: str | None = None, main_branches: Sequence[str] = MAIN_BRANCHES) -> tuple[str, ...]:
    """Runs on the main line that passed or were inconclusive but may not be baselines, newest
    first, down to ``newer_than``; a blocked run is no candidate, so it is not listed."""
    runs = _on_main(store.verdict_runs(suite, device, variant), main_branches)
    skipped = []
    for row in runs.itertuples():
        if row.run_id == newer_than:
            break
        candidate = bool(row.ok) or bool(row.inconclusive)
        if row.run_id != exclude_run and candidate and isinstance(row.excluded, str):
            skipped.append(f"{row.run_id}: {row.excluded}")
    return tuple(skipped)


def find_baseline(
    store: HistoryStore,
    suite: str,
    device: str,
    variant: str,
    spec: str | None = None,
    main_branches: Sequence[str] = MAIN_BRANCHES,
    exclude_run: str | None = None,
    repo: Path | None = None,
) -> BaselineChoice | None:
    """The baseline run for suite/device/variant, or None when there is none.

    ``spec`` None: the pinned run, else the newest passing run on a main branch (or with no
    branch recorded). Otherwise ``spec`` is a run id, or a git ref resolved in ``repo``.
    """
    if spec is None:
        return _default(store, suite, device, variant, main_branches, exclude_run)
    if _run_exists(store, spec):
        return BaselineChoice(spec, "run id")
    commit = resolve_ref(spec, repo)
    if commit is None:
        return None
    runs = _passing(store, suite, device, variant, exclude_run)
    matches = runs[runs.git_commit.map(lambda c: _same_commit(c, commit))]
    if matches.empty:
        return None
    return BaselineChoice(str(matches.run_id.iloc[0]), f"git ref {spec} = {commit[:7]}")


def _default(store: HistoryStore, suite: str, device: str, variant: str, main_branches: Sequence[str],
             exclude_run: str | None) -> BaselineChoice | None:
    pinned = store.pinned(suite, device, variant)
    if pinned is not None and pinned != exclude_run:
        return BaselineChoice(pinned, "pinned")
    on_main = _on_main(_passing(store, suite, device, variant, exclude_run), main_branches)
    if on_main.empty:
        return None
    chosen = str(on_main.run_id.iloc[0])
    skipped = skipped_runs(store, suite, device, variant, exclude_run, chosen, main_branches)
    return BaselineChoice(chosen, f"last clean passing run on {'/'.join(main_branches)}", skipped)


def _on_main(runs: pd.DataFrame, main_branches: Sequence[str]) -> pd.DataFrame:
    return runs[runs.branch.isna() | runs.branch.isin(list(main_branches))]


def _passing(store: HistoryStore, suite: str, device: str, variant: str, exclude_run: str | None) -> pd.DataFrame:
    """Passing runs that may be baselines (clean), newest first."""
    runs = store.passing_runs(suite, device, variant)
    runs = runs[runs.excluded.isna()]
    return runs[runs.run_id != exclude_run] if exclude_run else runs


def _run_exists(store: HistoryStore, run_id: str) -> bool:
    try:
        store.require_run(run_id)
    except StoreError:
        return False
    return True


def resolve_ref(spec: str, repo: Path | None) -> str | None:
    """The full commit sha ``git rev-parse`` gives for ``spec`` in ``repo``; None if git cannot."""
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"], cwd=repo,
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _same_commit(recorded: object, commit: str) -> bool:
    """A recorded commit (full or abbreviated sha, perhaps with "-dirty") names ``commit``."""
    if not isinstance(recorded, str) or not recorded:
        return False
    sha = recorded.removesuffix(DIRTY)
    return len(sha) >= 7 and commit.startswith(sha.lower())


def baseline_samples(store: HistoryStore, run_id: str, suite: str, device: str,
                     variant: str) -> dict[str, tuple[float | None, list[float] | None, int]]:
    """{metric: (value, raw samples or None, samples per unit)} of one run's suite/device/variant,
    ready for :func:`edgegate.regression.compare_metric`. The last row wins if a metric was
    recorded twice."""
    rows = store.frame("results", run_id, where={"suite": suite, "device": device, "variant": variant})
    return {str(row.metric): (decode_value(row.value), decode_samples(row.samples), _unit_size(row))
            for row in rows.itertuples()}


def _unit_size(row: Any) -> int:
    """Samples per independent unit; rows written before it was recorded give it in the note
    (a decode round from depth A to B has B - A + 1 steps)."""
    size = decode_value(getattr(row, "unit_size", None))
    if size:
        return int(size)
    match = re.search(r"depth (\d+)-(\d+)", str(row.note or ""))
    return int(match.group(2)) - int(match.group(1)) + 1 if match and row.metric == "decode_ms" else 1
