"""EdgeGate's pytest plugin: options and collection in ``hooks``, fixtures in ``fixtures``,
pytest-xdist fleets (one worker per device, one run and report) in ``fleet``."""

from __future__ import annotations

from .fixtures import edgegate_devices, edgegate_run
from .fleet import (
                    pytest_cmdline_main,
                    pytest_configure_node,
                    pytest_testnodedown,
                    pytest_xdist_auto_num_workers,
                    pytest_xdist_make_scheduler,
)
from .hooks import (
                    pytest_addhooks,
                    pytest_addoption,
                    pytest_collect_file,
                    pytest_collection_modifyitems,
                    pytest_configure,
)

__all__ = [
    "edgegate_devices",
    "edgegate_run",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_cmdline_main",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_configure_node",
    "pytest_testnodedown",
    "pytest_xdist_auto_num_workers",
    "pytest_xdist_make_scheduler",
]
