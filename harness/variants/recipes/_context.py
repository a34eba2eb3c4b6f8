"""What a recipe's build receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
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

    def path_param(self, key: str) -> Path:
        """A parameter naming a file or folder, resolved (and checked) by the factory."""
        if key not in self.paths:
            raise self.config_error(key, "is required: a path relative to the suite file")
        return self.paths[key]

    def config_error(self, key: str, problem: str) -> ConfigError:
        """An error in parameter ``key``, naming the suite file and the field."""
        return ConfigError(self.suite_file or Path("<suite>"), f"{self.params_field}.{key}", problem)

    @property
    def parent_model(self) -> Path:
        assert self.parent is not None
        return self.parent / MODEL_FILE

    @property
    def out_model(self) -> Path:
        return self.out_dir / MODEL_FILE

    def copy_tokenizer(self) -> None:
        import shutil

        assert self.parent is not None
        shutil.copy2(self.parent / TOKENIZER_FILE, self.out_dir / TOKENIZER_FILE)
