"""What a recipe's build receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
