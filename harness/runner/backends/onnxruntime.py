"""onnxruntime: a causal LM's forward step with a KV cache (plain, or in place for fused graphs),
a sentence encoder's embedding of a batch."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import hold as _hold

REQUIRES = ("onnxruntime",)  # the device's own build (CPU, CUDA, TensorRT) is its choice
PYTHON_MIN = (3, 9)


def usable_providers(wanted: list[str]) -> list[str]:
    """The profile's providers this onnxruntime has, in the profile's order (its preference).

    A profile written for a board with a GPU (Jetson: CUDA first, CPU last) still measures on a
    copy of that board without one; the providers skipped are in the settings the report shows.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    usable = [provider for provider in wanted if provider in available]
    if not usable:
        raise RuntimeError(f"none of the execution providers {wanted} is available; this onnxruntime has {available}")
    return usable


class OnnxRuntimeBackend:
    """onnxruntime with the graph layout that EdgeGate's exporter writes."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 profile_prefix: str | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        self.slowdown = slowdown  # fault injection for testing the gate: sleep this share of each call

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # two sessions side by side: one's spinning workers would steal the other's cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if profile_prefix:  # onnxruntime's own per-kernel profile (bench/profile_decode.py)
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.skipped_providers = [p for p in providers if p not in ort.get_available_providers()]
        self.session = ort.InferenceSession(model_path, options, providers=usable_providers(providers))
        self._options = options
        self._past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self._present_names = [name.replace("past_key_values.", "present.", 1) for name in self._past_names]
        self._past_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        types = {i.name: i.type for i in self.session.get_inputs()}
        self._past_dtype = _numpy_dtype(types[self._past_names[0]]) if self._past_names else np.float32

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
            _hold(start, self.slowdown)
        elapsed_ns = time.perf_counter_ns() - start
        return outputs[0], dict(zip(self._past_names, outputs[1:])), elapsed_ns

    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": self.session.get_providers(),
            "providers_skipped": self.skipped_providers,  # named in the profile, absent from this onnxruntime
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
            _hold(start, self.slowdown)
        return embeddings, time.perf_counter_ns() - start


class KvBuffer:
    """One decode's KV cache for ``KvBufferBackend``: a buffer of ``capacity`` positions per
    past input, each wrapped once in an OrtValue that shares the array's memory."""

    def __init__(self, shapes: dict[str, tuple[int, int]], capacity: int, dtype: Any) -> None:
        import onnxruntime as ort

        self.capacity = capacity
        self.arrays = {name: np.zeros((1, heads, capacity, dim), dtype=dtype) for name, (heads, dim) in shapes.items()}
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in self.arrays.items()}

    def grown(self, needed: int) -> KvBuffer:
        """A copy with room for ``needed`` positions (capacity doubled until it fits)."""
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        shapes = {name: (a.shape[1], a.shape[3]) for name, a in self.arrays.items()}
        bigger = KvBuffer(shapes, capacity, next(iter(self.arrays.values())).dtype)
        for name, array in self.arrays.items():
            bigger.arrays[name][:, :, : self.capacity] = array
        return bigger


class KvBufferBackend(OnnxRuntimeBackend):
    """A decoder whose attention is onnxruntime's GroupQueryAttention (the fused_decoder recipe),
    driven without copies.

    Each layer's past key and value live in one buffer of ``capacity`` positions, bound through
    IO binding as both the op's past input and its present output: GroupQueryAttention sees the
    same memory on both sides and appends the new positions in place, so a decode step copies
    nothing but the token id. A one-token step writes its logits into a pre-allocated array,
    which stays valid until the next step of this backend.
    """

    CAPACITY = 512  # positions per buffer at first; a longer sequence doubles it once (one copy)

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 profile_prefix: str | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        super().__init__(model_path, providers, threads, slowdown, profile_prefix, spin)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._kv_shapes = {n: _heads_and_dim(inputs[n].shape, model_path) for n in self._past_names}
        self._takes_positions = "position_ids" in inputs
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        self._logits = np.empty((1, 1, int(logits.shape[-1])), dtype=_numpy_dtype(logits.type))
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        self._mask = np.ones((1, self.CAPACITY), dtype=np.int64)
        self._binding = self.session.io_binding()
        self._bound_kv: KvBuffer | None = None

    def empty_past(self) -> KvBuffer:
        """The buffer of this backend's last decode, to be written from position 0 again (the op
        reads only the positions before the total length it is given), or a new one for the
        first. A past from before is no longer valid, as with llama.cpp's context; a new buffer
        each decode would live beside the bound old one (24 MB each for SmolLM2)."""
        if self._bound_kv is not None:
            return self._bound_kv
        return KvBuffer(self._kv_shapes, self.CAPACITY, self._past_dtype)

    def step(self, input_ids: np.ndarray, past: KvBuffer, past_len: int) -> tuple[np.ndarray, KvBuffer, int]:
        total = past_len + input_ids.shape[1]
        if total > past.capacity:
            past = past.grown(total)
        if total > self._mask.shape[1]:
            self._mask = np.ones((1, past.capacity), dtype=np.int64)
        self._bind(input_ids, past, past_len, total)
        start = time.perf_counter_ns()
        self.session.run_with_iobinding(self._binding)
        if self.slowdown:
            _hold(start, self.slowdown)
        elapsed_ns = time.perf_counter_ns() - start
        logits = self._logits if input_ids.shape[1] == 1 else self._binding.get_outputs()[0].numpy()
        return logits, past, elapsed_ns

    def _bind(self, input_ids: np.ndarray, past: KvBuffer, past_len: int, total: int) -> None:
        binding = self._binding
        fed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64), "attention_mask": self._mask[:, :total]}
        if self._takes_positions:
            fed["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        for name, array in fed.items():
            binding.bind_cpu_input(name, array)
        self._fed = fed  # alive until the run has read them
        if input_ids.shape[1] == 1:  # logits first: get_outputs() lists outputs in binding order
            binding.bind_ortvalue_output("logits", self._logits_value)
        else:
            binding.bind_output("logits", "cpu")
        if self._bound_kv is not past:  # the same buffers step after step: bind them once per decode
            for past_name, present_name in zip(self._past_names, self._present_names):
                binding.bind_ortvalue_input(past_name, past.values[past_name])
                binding.bind_ortvalue_output(present_name, past.values[past_name])
            self._bound_kv = past

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "kv_cache": f"in place: GroupQueryAttention past = present buffer, "
                                                  f"{self.CAPACITY} positions to start, IO binding"}


def _heads_and_dim(shape: list[Any], model_path: str) -> tuple[int, int]:
    """KV heads and head size of a past input [batch, heads, past, head_size]; the model builder
    leaves head_size symbolic in the graph and writes it to genai_config.json beside it."""
    heads, dim = shape[1], shape[3]
    if not isinstance(dim, int):
        import json
        import os

        config = os.path.join(os.path.dirname(model_path), "genai_config.json")
        with open(config, encoding="utf-8") as file:
            dim = json.load(file)["model"]["decoder"]["head_size"]
    return int(heads), int(dim)


def _numpy_dtype(onnx_type: str) -> Any:
    return {"tensor(float16)": np.float16, "tensor(float)": np.float32}.get(onnx_type, np.float32)

