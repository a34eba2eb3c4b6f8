"""Runtimes behind small interfaces: a causal LM's forward step with a KV cache, a sentence
encoder's embedding of a batch."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np


class CausalLMBackend(Protocol):
    """A loaded decoder. ``step`` runs ``input_ids`` on top of ``past`` and returns new state."""

    def empty_past(self) -> Any: ...

    def step(self, input_ids: np.ndarray, past: Any, past_len: int) -> tuple[np.ndarray, Any, int]:
        """(logits, new past, nanoseconds spent in the runtime's own call)."""
        ...

    def settings(self) -> dict[str, Any]: ...


class OnnxRuntimeBackend:
    """onnxruntime with the graph layout that EdgeGate's exporter writes."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0) -> None:
        import onnxruntime as ort

        self.slowdown = slowdown  # fault injection for testing the gate: sleep this share of each call

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeError(f"execution providers {missing} not available; this onnxruntime has {available}")
        self.session = ort.InferenceSession(model_path, options, providers=providers)
        self._options = options
        self._past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self._present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        self._past_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self._past_dtype = _numpy_dtype(self.session.get_inputs()[2].type) if self._past_names else np.float32

    def empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for name in self._past_names:
            _, heads, _, head_dim = self._past_shapes[name]
            past[name] = np.zeros((1, int(heads), 0, int(head_dim)), dtype=self._past_dtype)
        return past

    def step(self, input_ids: np.ndarray, past: dict[str, np.ndarray], past_len: int
             ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        feeds = dict(past)
        feeds["input_ids"] = input_ids
        feeds["attention_mask"] = np.ones((1, past_len + input_ids.shape[1]), dtype=np.int64)
        names = ["logits", *self._present_names]
        start = time.perf_counter_ns()
        outputs = self.session.run(names, feeds)
        if self.slowdown:
            time.sleep((time.perf_counter_ns() - start) * self.slowdown / 1e9)
        elapsed_ns = time.perf_counter_ns() - start
        return outputs[0], dict(zip(self._past_names, outputs[1:])), elapsed_ns

    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": self.session.get_providers(),
            "intra_op_num_threads": self._options.intra_op_num_threads,
            "enable_cpu_mem_arena": self._options.enable_cpu_mem_arena,
            "graph_optimization_level": str(self._options.graph_optimization_level),
        }


class OnnxEncoderBackend(OnnxRuntimeBackend):
    """A sentence encoder exported by EdgeGate: token ids in, ``sentence_embedding`` out.

    It shares the session set-up and settings of the causal-LM backend; its graph has no KV cache.
    """

    OUTPUT = "sentence_embedding"

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0) -> None:
        super().__init__(model_path, providers, threads, slowdown)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, int]:
        """(one embedding per row, nanoseconds spent in the runtime's own call)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:  # single sentences: every token is of segment 0
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        start = time.perf_counter_ns()
        (embeddings,) = self.session.run([self.OUTPUT], feeds)
        if self.slowdown:
            time.sleep((time.perf_counter_ns() - start) * self.slowdown / 1e9)
        return embeddings, time.perf_counter_ns() - start


def _numpy_dtype(onnx_type: str) -> Any:
    return {"tensor(float16)": np.float16, "tensor(float)": np.float32}.get(onnx_type, np.float32)


BACKENDS = {"onnxruntime": OnnxRuntimeBackend, "onnxruntime_encoder": OnnxEncoderBackend}
