"""Build (or find in the cache) the artifact of each variant a suite declares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import generic_inputs, progress
from ..config import contained_path
from ..errors import BuildError, ConfigError
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
        """The model file; a recipe for another runtime names its own (``model_file`` in the manifest)."""
        return self.folder / self.manifest.get("model_file", MODEL_FILE)

    @property
    def runtime(self) -> str:
        """The runner backend that runs this artifact (onnxruntime unless the recipe says otherwise)."""
        return str(self.manifest.get("runtime", "onnxruntime"))

    @property
    def tokenizer(self) -> Path:
        return self.folder / TOKENIZER_FILE


@dataclass(frozen=True)
class _Plan:
    recipe: Any
    params: dict[str, Any]
    inputs: dict[str, Any]
    key: str
    folder: Path
    paths: dict[str, Path]
    params_field: str


class VariantFactory:
    """Builds variants from one suite's base model into ``cache_root``; memoizes within a run."""

    def __init__(self, suite: Suite, cache_root: Path, log: Callable[[str], None] = lambda _: None) -> None:
        self.suite = suite
        self.cache_root = cache_root
        self.log = log
        self._base: tuple[base_models.BaseModel, str] | None = None
        self._built: dict[str, Artifact] = {}

    def artifact(self, variant: VariantSpec) -> Artifact:
        """The variant's artifact; a ``parent:`` variant is built first and replaces the recipe's PARENT."""
        parent = self.artifact(self.suite.variant(variant.parent)) if variant.parent else None
        try:
            artifact = self._artifact(variant.recipe, variant.params, parent, f"variants.{variant.name}.params")
        except BuildError as exc:  # a file its runtime cannot load, a tool that failed: say which variant
            if str(exc).startswith(f"variant {variant.name} "):
                raise
            raise BuildError(f"variant {variant.name} ({variant.recipe}): {exc}") from exc
        progress.name_folder(artifact.folder, variant.name)  # uploads and measurements say "int8", not the key
        return artifact

    def _base_model(self) -> tuple[base_models.BaseModel, str]:
        if self._base is None:
            base = base_models.locate(self.suite.base_model)
            self._base = (base, base.content_hash())
        return self._base

    def planned(self, variant: VariantSpec) -> tuple[str, Path]:
        """The cache key and folder the variant's artifact has or will have, building nothing."""
        parent = self.planned(self.suite.variant(variant.parent))[0] if variant.parent else None
        plan = self._plan(variant.recipe, variant.params, parent, f"variants.{variant.name}.params")
        return plan.key, plan.folder

    def _plan(self, recipe_name: str, given: dict[str, Any], parent_key: str | None = None,
              params_field: str = "params") -> _Plan:
        """What a build takes (recipe, params, parent key, base model, tool versions, code) and its key."""
        recipe = RECIPES[recipe_name]
        unknown = set(given) - set(recipe.DEFAULTS)
        if unknown:
            raise BuildError(f"recipe {recipe_name!r} has no parameter {sorted(unknown)[0]!r}; it takes {', '.join(recipe.DEFAULTS) or 'none'}")
        _check_param_types(self.suite.path, params_field, recipe.DEFAULTS, given)
        params = {**recipe.DEFAULTS, **given}
        if parent_key is not None and recipe.PARENT is None:
            raise BuildError(f"recipe {recipe_name!r} builds from the base model and takes no parent")
        if parent_key is None and recipe.PARENT:
            parent_key = self._plan(recipe.PARENT, {}).key
        files = self._param_files(recipe, params, params_field)
        inputs = {
            "recipe": recipe_name,
            "params": params,
            "parent": parent_key,
            "base_model": self._base_model()[1],
            "tools": cache.tool_versions(recipe.TOOLS),
            # base_models too: how the base is loaded (weights, tokenizer) shapes every artifact
            "code": cache.code_hash(recipe, base_models, *getattr(recipe, "USES", ())),
            **({"param_files": {name: digest for name, (_, digest) in files.items()}} if files else {}),
            **({"sample_inputs": generic_inputs.digest(self.suite.infer.inputs)} if self._samples_inputs(recipe) else {}),
        }
        key = cache.cache_key(inputs)
        folder = self.cache_root / "variants" / f"{recipe_name}-{key[:16]}"
        return _Plan(recipe, params, inputs, key, folder, {name: path for name, (path, _) in files.items()}, params_field)

    def _artifact(self, recipe_name: str, given: dict[str, Any], parent_override: Artifact | None = None,
                  params_field: str = "params") -> Artifact:
        plan = self._plan(recipe_name, given, parent_override.key if parent_override else None, params_field)
        if plan.key in self._built:
            return self._built[plan.key]
        recipe = plan.recipe
        parent = parent_override or (self._artifact(recipe.PARENT, {}) if recipe.PARENT else None)
        base = self._base_model()[0]
        source = (self.suite.path, plan.params_field, plan.paths)
        manifest = cache.build_once(plan.folder, lambda out: self._run_recipe(recipe, base, parent, out, plan.params,
                                                                               plan.inputs, source))
        artifact = Artifact(recipe_name, plan.key, plan.folder, manifest)
        self._built[plan.key] = artifact
        return artifact

    def _samples_inputs(self, recipe: Any) -> bool:
        """A recipe that may draw a generic model's declared inputs (calibration): they enter its key."""
        return bool(getattr(recipe, "SAMPLES_INPUTS", False)) and self.suite.base_model.task == "generic"

    def _param_files(self, recipe: Any, params: dict[str, Any], params_field: str) -> dict[str, tuple[Path, str]]:
        """(resolved path, content hash) of each parameter naming a file relative to the suite file."""
        files = {}
        for name in getattr(recipe, "PATH_PARAMS", ()):
            if params.get(name) is None:
                continue
            path = contained_path(self.suite.path, f"{params_field}.{name}", params[name])
            if not path.exists():
                raise ConfigError(self.suite.path, f"{params_field}.{name}", f"{params[name]!r} does not exist ({path})")
            files[name] = (path, cache.path_sha256(path))
        return files

    def _run_recipe(self, recipe: Any, base: base_models.BaseModel, parent: Artifact | None, out: Path,
                    params: dict[str, Any], inputs: dict[str, Any],
                    source: tuple[Path, str, dict[str, Path]]) -> dict[str, Any]:
        self.log(f"building {recipe.NAME} {params}")
        started = time.perf_counter()
        suite_file, params_field, paths = source
        # a bar (or a result line), and the tools' own output into the run's build log
        with progress.task("build", _build_label(recipe.NAME, params_field), log=self.log) as step:
            context = BuildContext(base, parent.folder if parent else None, out, params, step.detail,
                                   suite_file=suite_file, params_field=params_field, paths=paths,
                                   sample_inputs=self.suite.infer.inputs)
            try:
                facts = recipe.build(context)
            except ImportError as exc:
                raise BuildError(f"recipe {recipe.NAME} needs {exc.name or exc}: pip install -e '.[build]'") from exc
            seconds = time.perf_counter() - started
            step.finish(f"built {step.label} in {seconds:.1f} s")
        return {
            **inputs,
            "key": cache.cache_key(inputs),
            "base_model_files": [str(p) for p in base.files],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 2),
            "facts": facts,
            "runtime": getattr(recipe, "RUNTIME", "onnxruntime"),
            "model_file": getattr(recipe, "MODEL_FILE", MODEL_FILE),
        }


def _build_label(recipe_name: str, params_field: str) -> str:
    """What a build is called: "int8 (fused_decoder)" for a suite's variant (its params field is
    variants.<name>.params), the recipe's name alone for a recipe's implicit parent."""
    parts = params_field.split(".")
    named = len(parts) == 3 and parts[0] == "variants" and parts[1] != recipe_name
    return f"{parts[1]} ({recipe_name})" if named else recipe_name


def _check_param_types(suite_file: Path, params_field: str, defaults: dict[str, Any], given: dict[str, Any]) -> None:
    """A parameter whose default is a number or a flag must be one too (and positive when its
    default is): caught here with file and field, not deep in a quantizer as a traceback."""
    for key, value in given.items():
        default = defaults[key]
        if isinstance(default, bool):
            wrong = not isinstance(value, bool)
            wanted = "true or false"
        elif isinstance(default, (int, float)):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            wrong = not numeric or (isinstance(default, int) and not isinstance(value, int)) or (default > 0 and value <= 0)
            wanted = f"a{' positive' if default > 0 else ''} {'whole number' if isinstance(default, int) else 'number'}"
        else:
            continue
        if wrong:
            raise ConfigError(suite_file, f"{params_field}.{key}", f"must be {wanted} (default {default!r}), got {value!r}")
