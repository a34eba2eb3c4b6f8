"""What a recipe's build receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...generic_inputs import GenericInputs
from ..base_models import BaseModel

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class BuildContext:
    base: BaseModel
    parent: Path | None  # the parent artifact's folder; None for a build from the base model
    out_dir: Path
    params: dict[str, Any]
    log: Callable[[str], None]
    suite_file: Path | None = None  # the suite that declared the variant: where errors point
    params_field: str = "params"  # the suite field holding the params, e.g. variants.byo.params
    paths: dict[str, Path] = field(default_factory=dict)  # PATH_PARAMS resolved against the suite file
    sample_inputs: GenericInputs | None = None  # a generic model's declared inputs (calibration may draw them)

    def path_param(self, key: str) -> Path:
        """A parameter naming a file or folder, resolved (and checked) by the factory."""
        if key not in self.paths:
            raise self.config_error(key, "is required: a path relative to the suite file")
        return self.paths[key]

    def config_error(self, key: str, problem: str) -> ConfigError:
        """An error in parameter ``key``, naming the suite file and the field."""
        return ConfigError(self.suite_file or Path("<suite>"), f"{self.params_field}.{key}", problem)

    def not_applicable(self, recipe: str, why: str) -> ConfigError:
        """The one sentence for a recipe that cannot build this base model, naming the variant's
        ``recipe`` field: e.g. ``int4_weight_only does not apply to this base model: <why>``."""
        variant = self.params_field.removesuffix(".params") if self.params_field != "params" else ""
        return ConfigError(self.suite_file or Path("<suite>"), f"{variant}.recipe" if variant else "recipe",
                           f"{recipe} does not apply to this base model: {why}")

    @property
    def parent_model(self) -> Path:
        assert self.parent is not None
        return self.parent / MODEL_FILE

    @property
    def out_model(self) -> Path:
        return self.out_dir / MODEL_FILE

    def copy_tokenizer(self) -> None:
        """The parent's tokenizer.json beside the new model (a generic ONNX model has none)."""
        import shutil

        assert self.parent is not None
        if (self.parent / TOKENIZER_FILE).exists() or self.base.task != "generic":
            shutil.copy2(self.parent / TOKENIZER_FILE, self.out_dir / TOKENIZER_FILE)
