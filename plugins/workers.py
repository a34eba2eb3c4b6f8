"""What the xdist controller and its workers share about the run: its id (controller to workers)
and what each worker learnt (workers to controller). Plain data; pytest-xdist is not imported."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest

RUN_ID_INPUT = "edgegate_run_id"  # workerinput key: the controller's run id
RUN_OUTPUT = "edgegate_run"  # workeroutput key: what a worker learnt about the run, as JSON
RUN_ID_KEY = pytest.StashKey[str]()


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def run_id_for(config: pytest.Config) -> str:
    """This session's run id: the controller's on an xdist worker, else made once here."""
    given = getattr(config, "workerinput", {}).get(RUN_ID_INPUT)
    if given:
        return str(given)
    if RUN_ID_KEY not in config.stash:
        config.stash[RUN_ID_KEY] = new_run_id()
    return config.stash[RUN_ID_KEY]


def publish_to_controller(config: pytest.Config, environment: dict[str, Any], facts: dict[str, Any]) -> None:
    output: dict[str, str] = config.workeroutput  # type: ignore[attr-defined]
    output[RUN_OUTPUT] = json.dumps({"environment": environment, "facts": facts}, default=str)


def merge_facts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' facts (each a dict of dicts keyed by device or suite/device/variant) as one."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, entries in part.items():
            merged.setdefault(section, {}).update(entries)
    return merged
