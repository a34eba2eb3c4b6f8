"""ExecuTorch: a ``.pte`` program (XNNPACK delegate) whose KV cache is the program's own state.

The ``executorch_export`` recipe writes one method, ``forward(input_ids [1, n], cache_position [n])
-> logits [1, n, vocab]``, around transformers' static cache: the keys and values are mutable
buffers of ``max_cache_len`` positions inside the loaded program, written in place at
``cache_position``. So the "past" this backend hands the runner is only a marker of how many
positions the cache holds; a step writes positions ``past_len .. past_len + n - 1`` and attends
to what lies before them. Nothing needs clearing for a new sequence: a prefill from position 0
overwrites the positions it uses, and the static cache's causal mask hides every position after
the query's, so what an earlier, longer sequence left there cannot leak in
(tests/test_backend_executorch.py runs a second prefill after a decode). The .pte stores no initial
cache (ExecuTorch serializes only the shape of a mutated buffer); ExecuTorch's Module allocates
planned memory as zeroed vectors, and zeros under the mask are harmless. Because the cache is the
program's, a marker is valid only while it is the newest one this backend returned (or
position 0): stepping from an older one would attend to another sequence's keys, and is refused.

Each instance loads its own program, and so its own memory-planned buffers: two instances in one
process (the paired decode) never share a cache.

Runtimes: ``executorch-numpy-runtime`` (numpy in and out, no torch; Python 3.12+, CPU only) when
it is installed, else the ``executorch`` wheel's own runtime, whose pybindings import torch to
load libtorch and take only torch tensors (made from numpy without a copy, outside the timed
call). The wheel does not declare torch as a dependency, hence the explicit pin in ``REQUIRES``;
it must be the torch the wheel was built against.

Threads: XNNPACK runs on ExecuTorch's process-wide pthreadpool; with the executorch runtime a
nonzero ``threads`` resets that pool's size (``_unsafe_reset_threadpool``, between calls only);
the numpy runtime offers no setting and keeps its default (reported as such). ``spin`` has no
counterpart: pthreadpool's workers spin briefly and then sleep on their own.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import hold as _hold
from .base import resolve_threads

# The executorch wheel's runtime imports torch and needs the one it was built against; a device
# on Python 3.12+ can run without torch by installing executorch-numpy-runtime==1.4.0 instead.
# executorch itself is installed without its declared dependencies: they are its export tooling
# (hydra-core, omegaconf, whose antlr4 runtime publishes no wheel, coremltools, scikit-learn, ...);
# its runtime imports only these (checked by importing it and running a .pte in a bare venv).
REQUIRES: tuple[str, ...] = ("executorch==1.5.1", "torch==2.13.0", "ruamel.yaml", "flatbuffers", "tabulate")
NO_DEPS: tuple[str, ...] = ("executorch",)
PYTHON_MIN: tuple[int, int] = (3, 10)  # executorch 1.5.1 and torch 2.13.0 wheels: CPython 3.10-3.14

METHOD = "forward"
CONTEXT_LENGTH = "get_max_context_len"  # a constant method the recipe writes: the static cache's length


@dataclass(frozen=True)
class CachePosition:
    """How many positions of the program's static KV cache hold the current sequence."""

    length: int


class ExecuTorchBackend:
    """A ``.pte`` from the ``executorch_export`` recipe: ``forward(input_ids, cache_position)``."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 spin: bool = True) -> None:
        self.slowdown = slowdown  # fault injection for testing the gate
        self._runtime = _open_numpy_runtime(model_path) or _TorchRuntime(model_path, threads)
        self.max_cache_len = self._runtime.max_positions
        self._head = CachePosition(0)

    def empty_past(self) -> CachePosition:
        return CachePosition(0)

    def step(self, input_ids: np.ndarray, past: CachePosition, past_len: int
             ) -> tuple[np.ndarray, CachePosition, int]:
        total = past_len + input_ids.shape[1]
        self._check(past, past_len, total)
        feeds = self._runtime.feeds(np.ascontiguousarray(input_ids, dtype=np.int64),
                                    np.arange(past_len, total, dtype=np.int64))
        start = time.perf_counter_ns()
        output = self._runtime.run(feeds)
        if self.slowdown:
            _hold(start, self.slowdown)
        elapsed_ns = time.perf_counter_ns() - start
        self._head = CachePosition(total)
        return self._runtime.logits(output), self._head, elapsed_ns

    def _check(self, past: CachePosition, past_len: int, total: int) -> None:
        if past.length != past_len:
            raise ValueError(f"past_len {past_len} differs from the cache position {past.length} it was given")
        if past.length and past != self._head:
            raise RuntimeError(f"the KV cache is the program's state and now holds {self._head.length} positions of "
                               f"another sequence; a step can only continue from the newest position or start at 0")
        if total > self.max_cache_len:
            raise ValueError(f"{total} positions exceed the program's static KV cache of {self.max_cache_len} "
                             f"(the executorch_export recipe's max_cache_len)")

    def settings(self) -> dict[str, Any]:
        return {**self._runtime.settings(), "delegate": "XNNPACK",
                "kv_cache": f"static, {self.max_cache_len} positions, the program's mutable buffers (in place)",
                "max_sequence_length": self.max_cache_len}


class _TorchRuntime:
    """The executorch wheel's runtime (pybindings): torch tensors in and out."""

    def __init__(self, model_path: str, threads: int) -> None:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        # process-wide; between calls, as here, it is safe. 0: one per physical core, as everywhere
        portable_lib._unsafe_reset_threadpool(resolve_threads(int(threads)))
        self._torch = torch
        self._portable_lib = portable_lib
        self._program = Runtime.get().load_program(model_path)  # kept: the method lives in it
        self._method = self._program.load_method(METHOD)
        self.max_positions = _as_int(self._program.load_method(CONTEXT_LENGTH).execute([])[0])
        self._threads_asked = int(threads)

    def feeds(self, input_ids: np.ndarray, positions: np.ndarray) -> tuple[Any, Any]:
        return self._torch.from_numpy(input_ids), self._torch.from_numpy(positions)

    def run(self, feeds: tuple[Any, Any]) -> Any:
        return self._method.execute(feeds)[0]  # a copy of the output, not a view into the arena

    def logits(self, output: Any) -> np.ndarray:
        return output.numpy()

    def settings(self) -> dict[str, Any]:
        from executorch.version import __version__

        return {"runtime": "ExecuTorch", "version": __version__,
                "threads": self._portable_lib._threadpool_get_thread_count(),
                "threads_asked": self._threads_asked or "default",
                "python_runtime": "executorch.runtime (pybindings, torch tensors)"}


class _NumpyRuntime:
    """executorch-numpy-runtime: the same C++ runtime and XNNPACK delegate without torch."""

    def __init__(self, module: Any, model_path: str) -> None:
        self._module = module
        self._program = module.Runtime.get().load_program(model_path)
        self._method = self._program.load_method(METHOD)
        self.max_positions = _as_int(self._program.load_method(CONTEXT_LENGTH)([])[0])

    def feeds(self, input_ids: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        return [input_ids, positions]

    def run(self, feeds: list[np.ndarray]) -> Any:
        return self._method(feeds)[0]  # the runtime always returns fresh copies

    def logits(self, output: Any) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def settings(self) -> dict[str, Any]:
        return {"runtime": "ExecuTorch", "version": self._module.__et_version__,
                "threads": "runtime default (executorch-numpy-runtime has no setting)",
                "python_runtime": f"executorch-numpy-runtime {self._module.__version__} (numpy, no torch)"}


def _open_numpy_runtime(model_path: str) -> _NumpyRuntime | None:
    """The torch-free runtime when it is installed and reads this program, else None."""
    try:
        import executorch_numpy_runtime as module
    except ImportError:
        return None
    try:
        return _NumpyRuntime(module, model_path)
    except module.ExecuTorchError:
        if importlib.util.find_spec("executorch") is None:
            raise
        return None  # e.g. a .pte newer than its ExecuTorch 1.3.1: the wheel's runtime may read it


def _as_int(value: Any) -> int:
    """A constant method's result: a Python int, or a one-element tensor or array."""
    return int(np.asarray(value).reshape(-1)[0])
