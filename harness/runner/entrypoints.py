"""Entry points of installed distributions, for EdgeGate's extension points; standard library only.

The runner ships to a device alone (this package, without an installed edgegate), so it finds
EdgeGate's own backends and sensors in its built-in tables, and looks up only the other names
here, among the distributions the device's Python has installed. The host uses the same lookup
for its transports, recipes and report sections (``edgegate.plugins_registry``).

A plugin that cannot be used (it does not import, or it is not what its group expects) is one
line, ``BrokenPlugin``, naming the entry point and its distribution, never a traceback: the
person who reads it did not write the plugin and needs to know which package to fix or remove.

The distributions are read once per process (``plugins.cache_clear()`` reads them again).
Python 3.9 has no ``entry_points(group=...)`` and its entry points do not know their
distribution, hence the walk over ``distributions()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Check = Callable[[Any], str | None]  # what is wrong with a loaded object, or None

BACKENDS = "edgegate.backends"  # name = "module:Class", a class taking a backend's arguments (backends/base.py)
SENSORS = "edgegate.sensors"  # name = "module:callable", taking the sensor settings, returning a sensor or Unavailable
TRANSPORTS = "edgegate.transports"  # name = "module:callable", taking (profile, accept_new_host_key=...)
RECIPES = "edgegate.recipes"  # name = "module", a module with NAME, PARENT, TOOLS, DEFAULTS, build
REPORT_SECTIONS = "edgegate.report_sections"  # name = "module:callable", taking the report's data


class BrokenPlugin(Exception):
    """An entry point that could not be loaded or is of the wrong type: one line, its distribution named."""


@dataclass(frozen=True)
class Plugin:
    group: str
    name: str
    value: str  # "module:attribute", as the distribution declared it
    distribution: str  # "name version"
    entry_point: Any

    def describe(self) -> str:
        return f"entry point {self.group} '{self.name} = {self.value}' of {self.distribution}"

    def load(self, check: Check | None = None) -> Any:
        """The object the entry point names; BrokenPlugin when it does not import or ``check`` refuses it."""
        try:
            loaded = self.entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any failure of someone else's import is one line
            raise BrokenPlugin(f"{self.describe()} could not be loaded: {one_line(exc)}") from None
        problem = check(loaded) if check is not None else None
        if problem:
            raise BrokenPlugin(f"{self.describe()}: {problem}")
        return loaded


@functools.cache
def plugins(group: str) -> dict[str, Plugin]:
    """Name -> plugin for every entry point of ``group``; where two distributions register one
    name, the first on ``sys.path`` counts, as an import would."""
    found: dict[str, Plugin] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = str(dist.metadata["Name"] or "?")
        if name.lower().replace("_", "-") in seen:  # a second copy further down sys.path
            continue
        seen.add(name.lower().replace("_", "-"))
        for entry in dist.entry_points:
            if entry.group == group and entry.name not in found:
                found[entry.name] = Plugin(group, entry.name, entry.value, f"{name} {dist.version}", entry)
    return found


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a message over several lines is joined)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def is_callable(what: str) -> Check:
    """A check that the loaded object can be called, saying what it should have been."""
    def check(loaded: Any) -> str | None:
        return None if callable(loaded) else f"is a {type(loaded).__name__}, not {what}"
    return check
