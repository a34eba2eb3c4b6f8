"""What each runner backend needs on a device, read from the backend's own module.

Every backend file in ``runner/backends`` declares ``REQUIRES`` (pip requirements, pinned) and
``PYTHON_MIN``; this module turns a suite's variants into the runtimes and packages a device
needs, and says in one sentence why a device cannot have one.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

from .suites import Suite

# backend registry name -> (the name users know, the module the device must import)
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ONNX Runtime", "onnxruntime"),
    "onnxruntime_kv_buffer": ("ONNX Runtime", "onnxruntime"),
    "onnxruntime_encoder": ("ONNX Runtime", "onnxruntime"),
    "onnxruntime_generic": ("ONNX Runtime", "onnxruntime"),
    "litert": ("LiteRT", "ai_edge_litert"),
    "litert_lm": ("LiteRT-LM", "litert_lm"),
    "executorch": ("ExecuTorch", "executorch"),
    "llama_cpp": ("llama.cpp", "llama_cpp"),
}
BASE_NEEDS = ("numpy", "psutil")  # the runner's own, whatever the runtime


@dataclass(frozen=True)
class RuntimeNeeds:
    backend: str
    label: str
    module: str  # imported on the device to check the runtime is there
    requires: tuple[str, ...]
    python_min: tuple[int, int]
    no_deps: tuple[str, ...] = ()  # packages installed without their declared dependencies

    def refusal(self, python_version: str) -> str | None:
        """Why a device with this Python cannot run this runtime, or None when it can."""
        have = tuple(int(part) for part in python_version.split(".")[:2])
        if have >= self.python_min:
            return None
        return (f"{self.label} needs Python {'.'.join(map(str, self.python_min))} or newer "
                f"({', '.join(self.requires)}); the device has Python {python_version}")


def needs(backend: str) -> RuntimeNeeds:
    """A backend's packages and oldest Python, from its module (which imports no runtime itself).

    A plugin's backend (entry point group ``edgegate.backends``) says the same in its module, and
    optionally ``LABEL`` (the name users know) and ``IMPORTS`` (the module the device must import;
    default: the plugin's top-level package) on its class."""
    from .runner import backends

    if backend not in backends._WHERE:
        return _plugin_needs(backend)
    module_name, _ = backends._WHERE[backend]
    module = importlib.import_module(f"{backends.__name__}.{module_name}")
    label, imported = RUNTIMES[backend]
    return RuntimeNeeds(backend, label, imported, tuple(getattr(module, "REQUIRES", ())),
                        tuple(getattr(module, "PYTHON_MIN", (3, 9))), tuple(getattr(module, "NO_DEPS", ())))


def _plugin_needs(backend: str) -> RuntimeNeeds:
    import sys

    from .plugins_registry import backend_class
    from .runner import backends

    found = backend_class(backend, backends._WHERE)
    module = sys.modules[found.__module__]
    label = str(getattr(found, "LABEL", backend))
    imported = str(getattr(found, "IMPORTS", found.__module__.split(".")[0]))
    return RuntimeNeeds(backend, label, imported, tuple(getattr(module, "REQUIRES", ())),
                        tuple(getattr(module, "PYTHON_MIN", (3, 9))), tuple(getattr(module, "NO_DEPS", ())))


def distributions() -> list[str]:
    """The pip distributions of every runtime (onnxruntime's GPU build too, plugins' too): their versions are probed."""
    from .plugins_registry import PluginError
    from .runner import backends

    names = {"onnxruntime", "onnxruntime-gpu"}
    for backend in backends.BACKENDS:
        try:
            names.update(requirement_name(r) for r in needs(backend).requires)
        except PluginError:  # a broken plugin fails the suites that use it, not every probe
            continue
    return sorted(names)


def pinned(backend: str) -> dict[str, str]:
    """The exact versions a backend's ``REQUIRES`` pins (distribution -> version)."""
    return {requirement_name(r): r.split("==", 1)[1] for r in needs(backend).requires if "==" in r}


def requirement_name(requirement: str) -> str:
    """The distribution a pip requirement names (``numpy<2`` -> ``numpy``)."""
    return requirement.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip()


def suite_backends(suites: Iterable[Suite]) -> list[str]:
    """The runtimes (one backend name each) the suites' variants run on, onnxruntime first."""
    from .variants.recipes import RECIPES

    found = {"onnxruntime"}
    for suite in suites:
        found.update(getattr(RECIPES[variant.recipe], "RUNTIME", "onnxruntime") for variant in suite.variants)
    return sorted(found, key=lambda name: (name != "onnxruntime", name))
