"""Runtimes behind one interface (``base.CausalLMBackend``), one file each.

``BACKENDS[name]`` imports a backend's module only when it is asked for, and that module
imports its runtime only when a model is opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from .base import CausalLMBackend, ScoringBackend, WindowLogits, hold, timed
from .onnxruntime import (
    KvBuffer,
    KvBufferBackend,
    OnnxEncoderBackend,
    OnnxRuntimeBackend,
    usable_providers,
)

# backend name -> (module in this package, class)
_WHERE = {
    "onnxruntime": ("onnxruntime", "OnnxRuntimeBackend"),
    "onnxruntime_kv_buffer": ("onnxruntime", "KvBufferBackend"),
    "onnxruntime_encoder": ("onnxruntime", "OnnxEncoderBackend"),
    "litert": ("litert", "LiteRTBackend"),
    "litert_lm": ("litert_lm", "LiteRTLMBackend"),
    "executorch": ("executorch", "ExecuTorchBackend"),
    "llama_cpp": ("llama_cpp", "LlamaCppBackend"),
}


class _Registry(Mapping[str, Any]):
    def __getitem__(self, name: str) -> Any:
        module, cls = _WHERE[name]
        return getattr(importlib.import_module(f".{module}", __name__), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


BACKENDS: Mapping[str, Any] = _Registry()

__all__ = ["BACKENDS", "CausalLMBackend", "KvBuffer", "KvBufferBackend", "OnnxEncoderBackend", "OnnxRuntimeBackend",
           "ScoringBackend", "WindowLogits", "hold", "timed", "usable_providers"]
