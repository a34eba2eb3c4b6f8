"""Build (or find in the cache) the artifact of each variant a suite declares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..suites import Suite, VariantSpec
from . import base_models, cache
from .recipes import RECIPES
from .recipes._context import MODEL_FILE, TOKENIZER_FILE, BuildContext


@dataclass(frozen=True)
class Artifact:
    """A finished variant on disk: its folder holds model.onnx, tokenizer.json, manifest.json."""

    recipe: str
    key: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def tokenizer(self) -> Path:
        return self.folder / TOKENIZER_FILE


class VariantFactory:
    """Builds variants from one suite's base model into ``cache_root``; memoizes within a run."""

    def __init__(self, suite: Suite, cache_root: Path, log: Callable[[str], None] = lambda _: None) -> None:
        self.suite = suite
        self.cache_root = cache_root
        self.log = log
        self._base: tuple[base_models.BaseModel, str] | None = None
        self._built: dict[str, Artifact] = {}

    def artifact(self, variant: VariantSpec) -> Artifact:
        return self._artifact(variant.recipe, variant.params)

    def _base_model(self) -> tuple[base_models.BaseModel, str]:
        if self._base is None:
            base = base_models.locate(self.suite.base_model)
            self._base = (base, base.content_hash())
        return self._base

    def _artifact(self, recipe_name: str, given: dict[str, Any]) -> Artifact:
        recipe = RECIPES[recipe_name]
        unknown = set(given) - set(recipe.DEFAULTS)
        if unknown:
            raise BuildError(f"recipe {recipe_name!r} has no parameter {sorted(unknown)[0]!r}; it takes {', '.join(recipe.DEFAULTS) or 'none'}")
        params = {**recipe.DEFAULTS, **given}
        parent = self._artifact(recipe.PARENT, {}) if recipe.PARENT else None
        base, base_hash = self._base_model()
        inputs = {
            "recipe": recipe_name,
            "params": params,
            "parent": parent.key if parent else None,
            "base_model": base_hash,
            "tools": cache.tool_versions(recipe.TOOLS),
            "code": cache.code_hash(recipe, *getattr(recipe, "USES", ())),
        }
        key = cache.cache_key(inputs)
        if key in self._built:
            return self._built[key]
        folder = self.cache_root / "variants" / f"{recipe_name}-{key[:16]}"
        manifest = cache.build_once(folder, lambda out: self._run_recipe(recipe, base, parent, out, params, inputs))
        artifact = Artifact(recipe_name, key, folder, manifest)
        self._built[key] = artifact
        return artifact

    def _run_recipe(self, recipe: Any, base: base_models.BaseModel, parent: Artifact | None, out: Path,
                    params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        self.log(f"building {recipe.NAME} {params}")
        started = time.perf_counter()
        context = BuildContext(base, parent.folder if parent else None, out, params,
                               lambda line: self.log(f"  {recipe.NAME}: {line}"))
        try:
            facts = recipe.build(context)
        except ImportError as exc:
            raise BuildError(f"recipe {recipe.NAME} needs {exc.name or exc}: pip install -e '.[build]'") from exc
        seconds = time.perf_counter() - started
        self.log(f"built {recipe.NAME} in {seconds:.1f} s")
        return {
            **inputs,
            "key": cache.cache_key(inputs),
            "base_model_files": [str(p) for p in base.files],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 2),
            "facts": facts,
        }
