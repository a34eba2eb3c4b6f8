"""One recipe per file. A recipe turns its parent artifact (or the base model) into a variant.

Each module defines ``NAME``, ``PARENT`` (a recipe name, or None for one built from the base
model), ``TOOLS`` (packages whose versions enter the cache key), ``DEFAULTS``, optionally ``USES`` (helper modules whose source enters the key) and
``PATH_PARAMS`` (parameters naming a file or folder relative to the suite file: checked not to
escape its folder, their contents enter the key, ``ctx.path_param`` resolves them), and
``build(ctx) -> dict`` (facts for the manifest). Heavy imports stay inside ``build``.
A suite variant may name another variant as its ``parent:`` instead of the recipe's PARENT.
"""

from __future__ import annotations

from types import ModuleType

from . import (bring_your_own, distill, export_fp32, fp16, fused_decoder, import_student, int4_weight_only, int8_dynamic,
               int8_static, int8_weight_only, prune_magnitude)

RECIPES: dict[str, ModuleType] = {
    module.NAME: module for module in (
        export_fp32, fp16, int8_dynamic, int8_static, int8_weight_only, int4_weight_only,
        prune_magnitude, distill, import_student, bring_your_own, fused_decoder,
    )
}
