"""One recipe per file. A recipe turns its parent artifact (or the base model) into a variant.

Each module defines ``NAME``, ``PARENT`` (a recipe name, or None for one built from the base
model), ``TOOLS`` (packages whose versions enter the cache key), ``DEFAULTS``, optionally ``USES`` (helper modules whose source enters the key) and
``build(ctx) -> dict`` (facts for the manifest). Heavy imports stay inside ``build``.
"""

from __future__ import annotations

from types import ModuleType

from . import export_fp32, fp16, int4_weight_only, int8_dynamic

RECIPES: dict[str, ModuleType] = {
    module.NAME: module for module in (export_fp32, fp16, int8_dynamic, int4_weight_only)
}
