"""LiteRT: a .tflite decoder (litert-torch's layout) through ai-edge-litert's Interpreter.

The file has fixed-shape signatures sharing one set of weights (recipes/litert_export.py):
``prefill_N`` (N tokens, the logits of one position named by ``logit_positions``), ``decode``
(one token) and ``score_W`` (W tokens, every position's logits). Each takes the KV cache of
fixed length C and returns it updated: per layer ``kv_cache_k_i`` [1, kv_heads, C, head_dim]
and ``kv_cache_v_i`` transposed [1, kv_heads, head_dim, C]. The past this backend carries
between calls is that dict of arrays.

The caller builds the additive mask [1, 1, tokens, C]: 0 where a query may look (cache slots at
or before its position), -inf elsewhere. A shorter input is padded up to the next signature;
the pads are written into the cache after the real tokens, where the mask hides them and the
next call overwrites them. The file writes a slice with tfl.dynamic_update_slice, which moves a
slice that would run past the end back inside the cache, so what does not fit is refused here.

The Python Interpreter applies the XNNPACK delegate by default; without ``num_threads`` it runs
one thread. XNNPACK packs the weights at the first call (about a second for SmolLM2), and the
resident memory then measured about (signatures + 1) x the file, as if each signature had its
own packed copy: 2.8 GB for SmolLM2's 0.54 GB fp32 file with four signatures, 0.8 GB in int8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import resolve_threads, timed

REQUIRES = ("ai-edge-litert==2.3.0",)
PYTHON_MIN = (3, 10)  # ai-edge-litert 2.3.0 publishes wheels for CPython 3.10 to 3.14


class LiteRTBackend:
    """A causal LM in one .tflite file with prefill_N, decode and (optionally) score_W signatures."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 spin: bool = True) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.slowdown = slowdown  # fault injection for testing the gate: stretch each call by this share
        self.threads = resolve_threads(threads)
        self.interpreter = Interpreter(model_path=model_path, num_threads=self.threads)
        names = list(self.interpreter.get_signature_list())
        if "decode" not in names:
            raise ValueError(f"{model_path} has no decode signature (signatures: {names})")
        self._decode = self.interpreter.get_signature_runner("decode")
        self._prefill = _by_length(self.interpreter, names, "prefill_")
        self._score = _by_length(self.interpreter, names, "score_")
        inputs = self._decode.get_input_details()
        self._kv_specs = {name: (tuple(int(n) for n in d["shape"]), d["dtype"])
                          for name, d in sorted(inputs.items()) if name.startswith("kv_cache_")}
        self.cache_length = int(inputs["mask"]["shape"][-1])
        causal = np.triu(np.ones((self.cache_length, self.cache_length), dtype=bool), k=1)
        self._mask = np.where(causal, -np.inf, 0.0).astype(np.float32)  # row p: what position p sees

    def empty_past(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in self._kv_specs.items()}

    def step(self, input_ids: np.ndarray, past: dict[str, np.ndarray], past_len: int
             ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """Logits [1, 1, vocab] of the last input position, the updated cache, the runtime's nanoseconds."""
        ids = np.asarray(input_ids, dtype=np.int32)[0]
        if len(ids) == 1:
            outputs, past, elapsed = self._run(self._decode, ids, past, past_len, 1)
            return outputs["logits"], past, elapsed
        total = 0
        longest = max(self._prefill, default=0)
        if not longest:
            raise ValueError("this model has no prefill signature; feed it one token at a time")
        for start in range(0, len(ids), longest):
            chunk = ids[start:start + longest]
            length = min(n for n in self._prefill if n >= len(chunk))
            outputs, past, elapsed = self._run(self._prefill[length], chunk, past, past_len + start, length,
                                               logit_positions=np.asarray([len(chunk) - 1], dtype=np.int32))
            total += elapsed
        return outputs["logits"], past, total

    def window_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [positions, vocab] of one window from an empty cache: score_W calls (in chunks
        of W on top of the cache when the window is longer), else one decode call per token."""
        ids = np.asarray(input_ids, dtype=np.int32)[0]
        past = self.empty_past()
        if not self._score:
            rows = []
            for position, token in enumerate(ids):
                logits, past, _ = self.step(np.asarray([[token]]), past, position)
                rows.append(logits[0, -1])
            return np.stack(rows)
        width = max(self._score)
        parts = []
        for start in range(0, len(ids), width):
            chunk = ids[start:start + width]
            length = min(n for n in self._score if n >= len(chunk))
            outputs, past, _ = self._run(self._score[length], chunk, past, start, length)
            parts.append(outputs["logits"][0, :len(chunk)])
        return np.concatenate(parts)

    def _run(self, runner: Any, ids: np.ndarray, past: dict[str, np.ndarray], start: int, length: int,
             **extra: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """One signature call on ``ids`` padded to ``length`` at cache position ``start``."""
        if start + length > self.cache_length:
            raise ValueError(f"positions {start}-{start + length - 1} do not fit the model's KV cache of "
                             f"{self.cache_length} positions (the recipe's cache_length)")
        tokens = np.zeros((1, length), dtype=np.int32)
        tokens[0, :len(ids)] = ids
        feeds = {**past, **extra, "tokens": tokens, "input_pos": np.arange(start, start + length, dtype=np.int32),
                 "mask": self._mask[None, None, start:start + length]}
        outputs, elapsed = timed(lambda: runner(**feeds), self.slowdown)
        return outputs, {name: outputs[name] for name in past}, elapsed

    def settings(self) -> dict[str, Any]:
        import importlib.metadata

        signatures = {f"prefill_{n}": n for n in sorted(self._prefill)}
        signatures |= {"decode": 1} | {f"score_{n}": n for n in sorted(self._score)}
        layers = sum(1 for name in self._kv_specs if name.startswith("kv_cache_k_"))
        key_shape = self._kv_specs.get("kv_cache_k_0", ((),))[0]
        value_shape = self._kv_specs.get("kv_cache_v_0", ((),))[0]
        return {
            "runtime": "LiteRT",
            "version": importlib.metadata.version("ai-edge-litert"),
            "threads": self.threads,
            "num_threads": self.threads,
            "delegate": "XNNPACK (applied by default: builtin op resolver)",
            "signatures": signatures,
            "cache_length": self.cache_length,
            "kv_cache": f"{layers} layers, K {list(key_shape)}, V transposed {list(value_shape)}, numpy arrays "
                        f"in and out of each call; additive float mask built by the caller",
            "window_logits": (f"score_{max(self._score)}: every position's logits in one call" if self._score else
                              "decode signature, one call per token (the file has no score signature)"),
            "quantized_weights": self._quantized_tensors(),
        }

    def _quantized_tensors(self) -> str:
        """The int8 tensors of the first signature (every signature shares the weights), read from the file."""
        details = self.interpreter.get_tensor_details(0)
        int8 = [d for d in details if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"])]
        per_channel = sum(1 for d in int8 if len(d["quantization_parameters"]["scales"]) > 1)
        return f"{len(int8)} int8 tensors ({per_channel} per-channel)" if int8 else "none (float weights)"


def _by_length(interpreter: Any, names: list[str], prefix: str) -> dict[int, Any]:
    """Signature runners named ``<prefix>N``, by N."""
    return {int(name[len(prefix):]): interpreter.get_signature_runner(name)
            for name in names if name.startswith(prefix) and name[len(prefix):].isdigit()}
