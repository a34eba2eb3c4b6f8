"""Fleets with pytest-xdist: each device on its own worker; one run id, one history, one report.

pytest-xdist stays optional: its hooks here are marked optional and nothing imports it. The
controller names the run and hands the id to every worker (``workerinput``); each worker joins
that run in the shared history and writes its rows there as they come; when a worker ends it
sends what only it knows (device facts, baselines, settings, limits) back (``workeroutput``); the
controller then finishes the run and writes the report once, from the history, holding every
worker's results.

``-n N`` alone distributes with ``--dist loadgroup``, whose groups here are devices: a device's
items (and the reference they are compared with) stay on one worker while devices run in
parallel. ``-n auto`` starts one worker per selected device.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Generator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from edgegate.errors import EdgeGateError

from .options import settings_from

RUN_ID_INPUT = "edgegate_run_id"  # workerinput key: the controller's run id
RUN_OUTPUT = "edgegate_run"  # workeroutput key: what a worker learnt about the run, as JSON
RUN_ID_KEY = pytest.StashKey[str]()
_ITEM_NAME = re.compile(r"[^\[\]]+\[(?P<device>[A-Za-z0-9][A-Za-z0-9._-]*)\](@[^\[\]]*)?")  # variant[device]@group


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, object, object]:
    """Before xdist turns ``-n`` into ``--dist load``: group by device unless a mode was given."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no" \
            and not getattr(option, "distload", False):
        option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` whose group for a suite item is its device, read from the item's id.

    xdist's own loadgroup reads the group from a suffix its workers append to node ids, which
    pytest 9.2 no longer lets them change (pytest-xdist issue 1386): every item then becomes its
    own group. Items of other tests keep xdist's rules.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class DeviceGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            device = device_of(nodeid)
            return f"edgegate-device:{device}" if device else str(super()._split_scope(nodeid))

    return DeviceGroupScheduling(config, log)


def device_of(nodeid: str) -> str | None:
    """The device of a suite item's node id (``suites/suite_x.yaml::int4[jetson-nano]``), else None."""
    from .items import is_suite_file

    path, _, name = nodeid.partition("::")
    found = _ITEM_NAME.fullmatch(name)
    return found.group("device") if found and is_suite_file(PurePosixPath(path).name) else None


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per selected device, when there are several."""
    try:
        devices = settings_from(config.getoption, Path(config.rootpath)).devices
    except EdgeGateError:
        return None  # reported as a usage error when the session configures
    return len(devices) if len(devices) > 1 else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[RUN_ID_INPUT] = run_id_for(node.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker ended: take what it learnt into the controller's recorder, which reports at the end."""
    from .recorder import recorder

    sent = getattr(node, "workeroutput", {}).get(RUN_OUTPUT)
    if sent:
        payload = json.loads(sent)
        recorder(node.config).adopt(payload["environment"], payload["facts"])
