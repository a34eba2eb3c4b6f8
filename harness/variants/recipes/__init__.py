"""One recipe per file. A recipe turns its parent artifact (or the base model) into a variant.

Each module defines ``NAME``, ``PARENT`` (a recipe name, or None for one built from the base
model), ``TOOLS`` (packages whose versions enter the cache key), ``DEFAULTS``, optionally ``USES``
(helper modules whose source enters the key), ``PATH_PARAMS`` (parameters naming a file or folder
relative to the suite file: checked not to escape its folder, their contents enter the key,
``ctx.path_param`` resolves them), ``RUNTIME`` (the runner backend that runs the artifact;
onnxruntime when absent) and ``MODEL_FILE`` (the artifact's model file, ``model.onnx`` when
absent), and ``build(ctx) -> dict`` (facts for the manifest). Heavy imports stay inside ``build``.
A suite variant may name another variant as its ``parent:`` instead of the recipe's PARENT.

Every module of this package whose name does not start with ``_`` is a recipe: a new recipe is
one new file. Other distributions add recipes under the entry point group ``edgegate.recipes``
(``name = "package.module"``, the module as above, its NAME the entry point's name); a built-in
name is always the built-in recipe. A plugin recipe is imported when a suite names it, so a broken
one fails only the suites that use it (plugins_registry.PluginError: one line, its distribution).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from types import ModuleType


def _discover() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f".{info.name}", __name__)
        if hasattr(module, "build") and hasattr(module, "NAME"):
            found[module.NAME] = module
    return found


class _Recipes(Mapping[str, ModuleType]):
    """The built-in recipes, then the plugins' (looked up by name; imported when asked for)."""

    def __init__(self, builtin: dict[str, ModuleType]) -> None:
        self.builtin = builtin

    def __getitem__(self, name: str) -> ModuleType:
        if name in self.builtin:
            return self.builtin[name]
        if name in self._extra():
            from ...plugins_registry import load_recipe

            return load_recipe(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:  # by name: a plugin is not imported to answer
        return name in self.builtin or name in self._extra()

    def __iter__(self) -> Iterator[str]:
        return iter([*self.builtin, *self._extra()])

    def __len__(self) -> int:
        return len(self.builtin) + len(self._extra())

    def _extra(self) -> list[str]:
        from ...plugins_registry import recipe_names

        return recipe_names(self.builtin)


RECIPES: Mapping[str, ModuleType] = _Recipes(_discover())
