"""llama.cpp through llama-cpp-python's C API: a GGUF decoder fed token ids (the host tokenized
with tokenizer.json), its KV cache the llama.cpp context's own.

The low-level batch API, not ``Llama``: each token of a batch carries its own logits flag, so a
multi-token step (prefill, a 257-token accuracy window) returns every position's logits while a
one-token decode step computes one row; ``Llama(logits_all=True)`` would also keep an n_ctx x
vocabulary score array and copy into it every call.

The cache lives in the context, so ``past`` is only a marker of the position the cache has
reached: ``empty_past()`` clears the cache and ``step`` continues only from the latest marker of
its own backend (an older one would silently attend to tokens the cache has since taken in).

Threads: 0 means one per physical core (``base.resolve_threads``, as for every runtime), not
llama-cpp-python's own default (half the logical CPUs) nor the C library's fixed 4. llama-cpp-python builds ggml with OpenMP,
whose idle workers spin for a while after each call; ``spin=False`` sets ``OMP_WAIT_POLICY=PASSIVE``
when this process has not loaded the library yet (libgomp reads it once, when it loads; in a
process that imported torch first, torch's libgomp is already loaded and the policy stays), and
``settings()`` records the policy in force.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any

import numpy as np

from .base import resolve_threads, timed

REQUIRES = ("llama-cpp-python==0.3.36",)
PYTHON_MIN = (3, 8)  # llama-cpp-python 0.3.36: Requires-Python >=3.8
# Positions one context holds: the longest single step is an accuracy window (256 + 1 tokens by
# default) from an empty cache, and a decode (64 + 32 by default) restarts at 0 every round; 1024
# leaves room for a suite's longer windows for ~24 MB of f16 KV cache with SmolLM2-135M.
N_CTX = 1024
_POLICY_AT_LOAD: dict[str, str] = {}  # OMP_WAIT_POLICY when this process first loaded llama.cpp


class Position:
    """A past for ``LlamaCppBackend.step``: how many tokens the context's cache holds."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length


class LlamaCppBackend:
    """A GGUF causal LM in one llama.cpp context (one sequence, f16 KV cache, flash attention)."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 spin: bool = True) -> None:
        llama_cpp = _load_library(spin)
        self._lib = llama_cpp
        self.slowdown = slowdown  # fault injection for testing the gate
        self.spin = spin
        model_params = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(os.fsencode(model_path), model_params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {model_path} (not a GGUF it supports?)")
        self._threads = resolve_threads(threads)
        context = llama_cpp.llama_init_from_model(model, self._context_params())
        if not context:
            llama_cpp.llama_model_free(model)
            raise RuntimeError(f"llama.cpp could not create a context of {N_CTX} positions for {model_path}")
        self._model, self._context = model, context
        self._batch = llama_cpp.llama_batch_init(N_CTX, 0, 1)
        self._finalizer = weakref.finalize(self, _free, llama_cpp, model, context, self._batch)
        self._memory = llama_cpp.llama_get_memory(context)
        self._vocab_size = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        self._tokens, self._positions, self._wants_logits = self._batch_views()
        self._current: Position | None = None

    def _context_params(self) -> Any:
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = N_CTX  # a whole window in one llama_decode
        params.n_threads = params.n_threads_batch = self._threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED  # what "auto" resolves to on CPU
        return params

    def _batch_views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views of the batch's token, position and logits-flag arrays; one sequence, id 0."""
        batch = self._batch
        for i in range(N_CTX):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
        return (np.ctypeslib.as_array(batch.token, shape=(N_CTX,)), np.ctypeslib.as_array(batch.pos, shape=(N_CTX,)),
                np.ctypeslib.as_array(batch.logits, shape=(N_CTX,)))

    def empty_past(self) -> Position:
        self._lib.llama_memory_clear(self._memory, False)  # the cells' metadata: stale K/V are masked out
        self._current = Position(0)
        return self._current

    def step(self, input_ids: np.ndarray, past: Position, past_len: int) -> tuple[np.ndarray, Position, int]:
        count = int(input_ids.shape[1])
        self._check(past, past_len, count)
        self._tokens[:count] = input_ids[0]
        self._positions[:count] = np.arange(past_len, past_len + count)
        self._wants_logits[:count] = 1
        self._batch.n_tokens = count
        code, elapsed_ns = timed(lambda: self._lib.llama_decode(self._context, self._batch), self.slowdown)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for {count} tokens at position {past_len}")
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits(self._context), shape=(count, self._vocab_size))
        self._current = Position(past_len + count)
        return logits[None].copy(), self._current, elapsed_ns

    def _check(self, past: Position, past_len: int, count: int) -> None:
        if past is not self._current or past.length != past_len:
            raise ValueError(f"llama.cpp keeps one KV cache per context: step continues only from this backend's "
                             f"latest past (at {getattr(self._current, 'length', None)}), not from "
                             f"{getattr(past, 'length', past)!r} with past_len {past_len}")
        if not 0 < count <= N_CTX - past_len:
            raise ValueError(f"{count} tokens at position {past_len} do not fit the context of {N_CTX} positions "
                             f"(N_CTX in {__name__})")

    def settings(self) -> dict[str, Any]:
        lib = self._lib
        description = bytes(256)
        lib.llama_model_desc(self._model, description, len(description))
        return {
            "runtime": "llama.cpp",
            "version": lib.__version__,  # llama-cpp-python, which pins its llama.cpp
            "threads": int(lib.llama_n_threads(self._context)),
            "threads_batch": int(lib.llama_n_threads_batch(self._context)),
            "n_ctx": int(lib.llama_n_ctx(self._context)),
            "file_type": (lib.llama_ftype_name(lib.llama_model_ftype(self._model)) or b"?").decode(),
            "model": description.split(b"\0", 1)[0].decode(errors="replace"),
            "kv_cache": "the context's own, f16 K and V, one sequence; cleared for each prefill",
            "flash_attn": "enabled",
            "cpu_features": cpu_features(lib.llama_print_system_info().decode(errors="replace")),
            "omp_wait_policy": _POLICY_AT_LOAD.get("policy", "unknown: llama_cpp was imported before this backend"),
            "spin": self.spin,
        }

    def close(self) -> None:
        """Free the context and the model now (otherwise when the backend is collected)."""
        self._finalizer()


def _load_library(spin: bool) -> Any:
    """llama_cpp, imported with OpenMP's wait policy set first when ``spin`` is off and it can still apply."""
    if "llama_cpp" not in sys.modules:
        if _libgomp_loaded():
            _POLICY_AT_LOAD["policy"] = "as set when another library (torch?) loaded libgomp first"
        else:
            if not spin and "OMP_WAIT_POLICY" not in os.environ:
                os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            _POLICY_AT_LOAD["policy"] = os.environ.get("OMP_WAIT_POLICY", "default (spin a while, then sleep)")
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load log: errors only
    llama_cpp.llama_backend_init()
    return llama_cpp


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return "libgomp" in maps.read()
    except OSError:  # not Linux: assume not
        return False


def cpu_features(system_info: str) -> list[str]:
    """The features ggml reports as built in ("CPU : SSE3 = 1 | AVX = 1 | ..." -> ["SSE3", "AVX"])."""
    features = []
    for part in system_info.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            features.append(name.strip())
    return features


def _free(lib: Any, model: Any, context: Any, batch: Any) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(context)
    lib.llama_model_free(model)
