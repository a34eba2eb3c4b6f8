"""Fixtures for suites written in Python: the same run and devices the YAML suites use."""

from __future__ import annotations

import pytest
from edgegate.profiles import DeviceProfile
from edgegate.session import RunSession

from .recorder import recorder


@pytest.fixture(scope="session")
def edgegate_run(pytestconfig: pytest.Config) -> RunSession:
    """The run: build, measure and judge variants; results land in the history and the report."""
    return recorder(pytestconfig).session


@pytest.fixture(scope="session")
def edgegate_devices(pytestconfig: pytest.Config) -> list[DeviceProfile]:
    """The device profiles selected with ``--device`` (default: ``local``)."""
    return list(recorder(pytestconfig).profiles.values())
