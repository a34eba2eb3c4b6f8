"""EdgeGate's extension points on the host: what installed distributions add through entry points.

Five groups (``edgegate.runner.entrypoints`` names them): runner backends and power sensors,
which the runner itself looks up on the device (they must be installed in the device's Python;
the host reads them too, to check profiles and to know what a backend needs), and transports,
recipes and report sections, which only the host uses. EdgeGate registers its own in
pyproject.toml the same way, but finds them in its built-in tables: on a device there is no
installed edgegate, and a name EdgeGate has built in always means EdgeGate's own.

A plugin that cannot be used is a ``PluginError``: one line naming the entry point and its
distribution, shown without a traceback like every EdgeGate error. Only the plugins a run asks
for are imported, so a broken one breaks only what names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from markupsafe import Markup

from .errors import EdgeGateError
from .runner import entrypoints
from .runner.entrypoints import BrokenPlugin, Plugin, is_callable, plugins

BUILTIN_TRANSPORTS = ("local", "ssh")
RECIPE_NEEDS = ("NAME", "PARENT", "TOOLS", "DEFAULTS", "build")  # what recipes/__init__.py says a recipe defines


class PluginError(EdgeGateError):
    """An installed plugin EdgeGate was asked to use cannot be used; names its entry point and distribution."""


def load(plugin: Plugin, check: Callable[[Any], str | None] | None = None) -> Any:
    """The plugin's object, or PluginError."""
    try:
        return plugin.load(check)
    except BrokenPlugin as exc:
        raise PluginError(str(exc)) from None


def extra(group: str, builtin: Mapping[str, Any] | tuple[str, ...]) -> dict[str, Plugin]:
    """The group's plugins whose names are not built in (a built-in name is always EdgeGate's own)."""
    return {name: plugin for name, plugin in plugins(group).items() if name not in builtin}


def kinds(group: str, builtin: tuple[str, ...]) -> tuple[str, ...]:
    """The built-in names, then the plugins' in order (what a profile may name)."""
    return (*builtin, *sorted(extra(group, builtin)))


def transport_kinds() -> tuple[str, ...]:
    return kinds(entrypoints.TRANSPORTS, BUILTIN_TRANSPORTS)


def sensor_kinds() -> tuple[str, ...]:
    from .runner.sensors import OPENERS

    return kinds(entrypoints.SENSORS, tuple(OPENERS))


def transport_factory(kind: str) -> Callable[..., Any]:
    """A plugin transport's factory: called as ``factory(profile, accept_new_host_key=...)``."""
    return load(extra(entrypoints.TRANSPORTS, BUILTIN_TRANSPORTS)[kind],
                is_callable("a callable taking (profile, accept_new_host_key=...)"))


def backend_class(name: str, builtin: Mapping[str, Any]) -> Any:
    """A plugin backend's class, on the host (to read what it needs on a device)."""
    found = extra(entrypoints.BACKENDS, builtin).get(name)
    if found is None:
        raise PluginError(f"runner backend {name!r} is not built in ({', '.join(builtin)}) and no distribution "
                          f"installed here registers it under {entrypoints.BACKENDS}: install its plugin on the host "
                          f"too (the host reads what the backend needs on a device)")
    return load(found, is_callable("a backend class (module:Class)"))


def recipe_names(builtin: Mapping[str, Any]) -> list[str]:
    return list(extra(entrypoints.RECIPES, builtin))


def load_recipe(name: str) -> ModuleType:
    """A plugin recipe's module, checked to define what a recipe defines and to be named ``name``."""
    plugin = plugins(entrypoints.RECIPES)[name]

    def check(loaded: Any) -> str | None:
        if not isinstance(loaded, ModuleType):
            return f"is a {type(loaded).__name__}, not a recipe module (name = \"package.module\")"
        missing = [attribute for attribute in RECIPE_NEEDS if not hasattr(loaded, attribute)]
        if missing:
            return f"the recipe module {loaded.__name__} lacks {', '.join(missing)}"
        return None if loaded.NAME == name else f"its NAME is {loaded.NAME!r}, not the entry point's name {name!r}"

    return load(plugin, check)  # type: ignore[no-any-return]


def report_sections(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Each report-section plugin's sections for this page: ``{"title", "html", "source"}``.

    A plugin is called with the report's data (what the template gets) and returns None, a section
    (a mapping with ``title`` and ``html``, inserted as it is, or ``text``, escaped) or a list of
    them. One that fails gets a section saying so, in one line: the rest of the page stands."""
    sections: list[dict[str, Any]] = []
    for plugin in plugins(entrypoints.REPORT_SECTIONS).values():
        try:
            made = load(plugin, is_callable("a callable taking the report's data"))(context)
            sections += [_section(plugin, part) for part in _parts(made)]
        except Exception as exc:  # noqa: BLE001 - someone else's section must not cost the report
            why = str(exc) if isinstance(exc, PluginError) else f"{plugin.describe()} failed: {entrypoints.one_line(exc)}"
            sections.append({"title": f"{plugin.name} (not shown)", "html": Markup('<p class="plugin-error">{}</p>')
                             .format(why), "source": plugin.distribution, "error": True})
    return sections


def _parts(made: Any) -> list[Any]:
    if made is None:
        return []
    return list(made) if isinstance(made, (list, tuple)) else [made]


def _section(plugin: Plugin, part: Any) -> dict[str, Any]:
    if not isinstance(part, Mapping) or "title" not in part or not ({"html", "text"} & set(part)):
        raise PluginError(f"{plugin.describe()} returned a {type(part).__name__}, not a section "
                          f"(a mapping with title and html or text)")
    body = Markup(str(part["html"])) if "html" in part else Markup("<p>{}</p>").format(part["text"])
    return {"title": str(part["title"]), "html": body, "source": plugin.distribution, "error": False}
