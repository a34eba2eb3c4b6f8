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
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from edgegate.errors import EdgeGateError

from .items import ItemDevices
from .options import settings_from
from .recorder import SETTINGS_KEY, recorder
from .workers import RUN_ID_INPUT, RUN_OUTPUT, run_id_for


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
    """``--dist loadgroup`` whose group for a suite item is its device.

    xdist's own loadgroup reads the group from a suffix its workers append to node ids, which
    pytest 9.2 no longer lets them change (pytest-xdist issue 1386): every item then becomes its
    own group. The controller collects nothing, so it learns each item's device from the suite
    files and the selected devices, as collection makes the items. Items of other tests keep
    xdist's rules.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    devices = ItemDevices(config.rootpath, config.stash[SETTINGS_KEY].devices)

    class DeviceGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            device = devices.of(nodeid)
            return f"edgegate-device:{device}" if device else str(super()._split_scope(nodeid))

    return DeviceGroupScheduling(config, log)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per selected device, when there are several."""
    try:
        settings = settings_from(config.getoption, Path(config.rootpath))
    except EdgeGateError:
        return None  # reported as a usage error when the session configures
    config.stash[SETTINGS_KEY] = settings  # its profiles, read here, are not read again
    return len(settings.devices) if len(settings.devices) > 1 else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[RUN_ID_INPUT] = run_id_for(node.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker ended: take what it learnt into the controller's recorder, which reports at the end."""
    sent = getattr(node, "workeroutput", {}).get(RUN_OUTPUT)
    if sent:
        payload = json.loads(sent)
        recorder(node.config).adopt(payload["environment"], payload["facts"])
