"""What the benchmarks share: the prompt they decode after, and where the suite's variants are."""

from __future__ import annotations

import os
from pathlib import Path

PROMPT = list(range(100, 164))  # 64 token ids of SmolLM2's vocabulary: the decode depth of the default suite
DEFAULT_SUITE = Path("suites/suite_smollm2.yaml")


def cache_root() -> Path:
    return Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")


def suite_model(suite_path: Path = DEFAULT_SUITE, variant: str = "int8") -> Path:
    """The model file of a suite's variant, built into the cache first if it is not there."""
    from edgegate.suites import load_suite
    from edgegate.variants.factory import VariantFactory

    suite = load_suite(suite_path)
    return VariantFactory(suite, cache_root(), log=print).artifact(suite.variant(variant)).model


def runner_backend(folder: Path) -> str:
    """The runner backend the harness would pick for a built variant's folder."""
    from edgegate.session import decoder_backend
    from edgegate.variants.cache import read_manifest
    from edgegate.variants.factory import Artifact

    manifest = read_manifest(folder) or {}
    return decoder_backend(Artifact(manifest.get("recipe", ""), manifest.get("key", ""), folder, manifest))
