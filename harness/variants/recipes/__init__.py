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
one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
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


RECIPES: dict[str, ModuleType] = _discover()
