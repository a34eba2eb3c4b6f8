"""Where a suite's base model comes from, and which task (what is measured) that makes it.

Its own module so that the model loaders and recipes, which need only this, do not import the
suite parser (which imports the recipes to check a suite's variants).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE_MODEL_KINDS = ("gguf_package", "gguf_file", "hf_dir", "sentence_transformers_package", "sentence_transformers_dir",
                    "onnx_file", "onnx_package")
SENTENCE_EMBEDDING_KINDS = ("sentence_transformers_package", "sentence_transformers_dir")
GENERIC_KINDS = ("onnx_file", "onnx_package")  # any ONNX model, fed the inputs the suite declares


@dataclass(frozen=True)
class BaseModelSpec:
    """Where the base model's weights come from. Paths are resolved against the suite file."""

    kind: str
    package: str | None = None
    file: str | None = None
    path: Path | None = None
    note: str = ""
    folder: str | None = None  # sentence_transformers_package: the model folder inside the package

    @property
    def task(self) -> str:
        """``causal_lm`` (measured by prefill, decode, perplexity), ``sentence_embedding``, or
        ``generic`` (any ONNX model: one run of its declared inputs, agreement with the reference)."""
        if self.kind in GENERIC_KINDS:
            return "generic"
        return "sentence_embedding" if self.kind in SENTENCE_EMBEDDING_KINDS else "causal_lm"
