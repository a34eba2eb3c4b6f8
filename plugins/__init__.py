"""EdgeGate's pytest plugin: options and collection in ``hooks``, fixtures in ``fixtures``."""

from __future__ import annotations

from .fixtures import edgegate_devices, edgegate_run
from .hooks import pytest_addoption, pytest_collect_file, pytest_collection_modifyitems, pytest_configure

__all__ = [
    "edgegate_devices",
    "edgegate_run",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
]
