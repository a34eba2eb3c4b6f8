"""What the benchmarks share: the prompt they decode after, and where the suite's variants are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROMPT = list(range(100, 164))  # 64 token ids of SmolLM2's vocabulary: the decode depth of the default suite
DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "suites" / "suite_smollm2.yaml"  # from any working directory


def cache_root() -> Path:
    return Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")


def suite_model(suite_path: Path = DEFAULT_SUITE, variant: str = "int8") -> Path:
    """The model file of a suite's variant, built into the cache first if it is not there."""
    from edgegate.suites import load_suite
    from edgegate.variants.factory import VariantFactory

    suite = load_suite(suite_path)
    return VariantFactory(suite, cache_root(), log=print).artifact(suite.variant(variant)).model


def cached_suite_model(variant: str, suite_path: Path = DEFAULT_SUITE) -> Path:
    """The model file of a suite's variant already in the cache, building nothing; exits with one
    line naming the command that builds it when there is none.

    The build the current code would make (its cache key) comes first; else the newest build whose
    manifest has the same recipe, parameters and base model (an older code version's build of the
    same variant: the same kind of graph of the same model, e.g. SmolLM2, never another suite's
    model whose folder merely carries the same recipe name).
    """
    from edgegate.errors import BuildError, ConfigError
    from edgegate.suites import load_suite
    from edgegate.variants import base_models
    from edgegate.variants.cache import read_manifest
    from edgegate.variants.factory import Artifact, VariantFactory
    from edgegate.variants.recipes import RECIPES

    try:
        suite = load_suite(suite_path)
        spec = suite.variant(variant)
        planned = VariantFactory(suite, cache_root()).planned(spec)[1]
        wanted = (spec.recipe, {**RECIPES[spec.recipe].DEFAULTS, **spec.params},
                  base_models.locate(suite.base_model).content_hash())
    except (BuildError, ConfigError) as exc:  # the suite file, or its base model package, is missing
        sys.exit(f"cannot look up {suite_path.name}'s {variant} in the cache: {exc}; or pass --model PATH/model.onnx")
    found = []
    for folder in (cache_root() / "variants").glob(f"{spec.recipe}-*"):
        manifest = read_manifest(folder)
        if manifest is None or not folder.is_dir() or ".tmp-" in folder.name:  # .lock files, builds in progress
            continue
        artifact = Artifact(spec.recipe, manifest.get("key", ""), folder, manifest)
        same = (manifest.get("recipe"), manifest.get("params"), manifest.get("base_model")) == wanted
        if (folder == planned or same) and artifact.model.is_file():
            found.append((folder == planned, str(manifest.get("built_at", "")), artifact.model))
    if not found:
        try:
            shown = suite_path.resolve().relative_to(Path.cwd())
        except ValueError:
            shown = suite_path
        sys.exit(f"no {suite.name} {variant} variant built in {cache_root() / 'variants'}: build it first with "
                 f"`edgegate variants build {shown} --only {variant}` (`make nightly` builds and gates all of "
                 f"the default suite's variants), or pass --model PATH/model.onnx")
    return max(found)[2]


def runner_backend(folder: Path) -> str:
    """The runner backend the harness would pick for a built variant's folder."""
    from edgegate.session import decoder_backend
    from edgegate.variants.cache import read_manifest
    from edgegate.variants.factory import Artifact

    manifest = read_manifest(folder) or {}
    return decoder_backend(Artifact(manifest.get("recipe", ""), manifest.get("key", ""), folder, manifest))
