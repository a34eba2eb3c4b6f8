"""Runtimes behind one interface (``base.CausalLMBackend``), one file each.

``BACKENDS[name]`` imports a backend's module only when it is asked for, and that module
imports its runtime only when a model is opened. Other distributions add backends under the
entry point group ``edgegate.backends`` (``name = "module:Class"``); EdgeGate registers its own
there too, but resolves them from ``_WHERE``: the runner ships to a device without an installed
edgegate, and where one is installed its copy may be of another version than the shipped runner.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from ..entrypoints import BACKENDS as GROUP
from ..entrypoints import is_callable, plugins
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
    "onnxruntime_generic": ("onnxruntime_generic", "OnnxGenericBackend"),
    "litert": ("litert", "LiteRTBackend"),
    "litert_lm": ("litert_lm", "LiteRTLMBackend"),
    "executorch": ("executorch", "ExecuTorchBackend"),
    "llama_cpp": ("llama_cpp", "LlamaCppBackend"),
}


class _Registry(Mapping[str, Any]):
    """The built-in backends, then the entry points' (a broken one raises entrypoints.BrokenPlugin)."""

    def __getitem__(self, name: str) -> Any:
        if name in _WHERE:
            module, cls = _WHERE[name]
            return getattr(importlib.import_module(f".{module}", __name__), cls)
        if name in plugins(GROUP):
            return plugins(GROUP)[name].load(is_callable("a backend class (module:Class)"))
        raise KeyError(f"no runner backend {name!r}: the built-in ones are {', '.join(_WHERE)}; "
                       f"others come from an installed distribution's {GROUP} entry point, and this "
                       f"Python has {', '.join(self._extra()) or 'none'}")

    def __contains__(self, name: object) -> bool:  # by name: nothing is imported to answer
        return name in _WHERE or name in plugins(GROUP)

    def __iter__(self) -> Iterator[str]:
        return iter([*_WHERE, *self._extra()])

    def __len__(self) -> int:
        return len(_WHERE) + len(self._extra())

    @staticmethod
    def _extra() -> list[str]:
        return [name for name in plugins(GROUP) if name not in _WHERE]


BACKENDS: Mapping[str, Any] = _Registry()

__all__ = ["BACKENDS", "CausalLMBackend", "KvBuffer", "KvBufferBackend", "OnnxEncoderBackend", "OnnxRuntimeBackend",
           "ScoringBackend", "WindowLogits", "hold", "timed", "usable_providers"]
