"""pytest hooks: options, settings, collection of suite files, the recorder's start, and
EdgeGate's own hooks (hookspec.py) for conftest files and plugins."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgegate.errors import EdgeGateError

from .items import SuiteFile, VariantItem, is_suite_file
from .options import add_options, settings_from
from .recorder import RECORDER_KEY, SETTINGS_KEY, recorder

RUN_FIXTURES = frozenset({"edgegate_run", "edgegate_devices"})  # a suite written in Python asks for the run


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgegate", "EdgeGate: gate compressed models on edge devices")
    add_options(group.addoption)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edgegate(device, variant): an EdgeGate measurement item")
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): keeps a device's items on one pytest-xdist worker")
    try:
        settings = config.stash.get(SETTINGS_KEY, None) or settings_from(config.getoption, Path(config.rootpath))
    except EdgeGateError as exc:  # a tag or 'all' that matches nothing, or a broken profile
        raise pytest.UsageError(str(exc)) from None
    config.stash[SETTINGS_KEY] = settings
    if config.getoption("edgegate_devices"):  # asked for by name: a wrong one is a usage error
        try:
            for name in settings.devices:
                settings.profile(name)
        except EdgeGateError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if not is_suite_file(file_path.name):
        return None
    return SuiteFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:  # nothing will be measured: no run, no report
        return
    suites = sorted({str(item.suite.path) for item in items if isinstance(item, VariantItem)})
    python_suites = [item for item in items if set(getattr(item, "fixturenames", ())) & RUN_FIXTURES]
    if suites or python_suites or RECORDER_KEY in config.stash:
        recorder(config).start(suites + sorted({str(item.path) for item in python_suites}))
