"""onnxruntime for any ONNX model: the job's arrays in, every graph output out, one ``session.run``.

It shares the session set-up (providers, threads, spinning) and the settings of the causal-LM
backend; it has no KV cache and no fixed input names.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import hold
from .onnxruntime import PYTHON_MIN, REQUIRES, OnnxRuntimeBackend

__all__ = ["PYTHON_MIN", "REQUIRES", "OnnxGenericBackend"]


class OnnxGenericBackend(OnnxRuntimeBackend):
    """Feeds the inputs by name and returns every output of the graph, by name."""

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 spin: bool = True) -> None:
        super().__init__(model_path, providers, threads, slowdown, spin=spin)
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.output_names = [value.name for value in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """(outputs by name, nanoseconds spent in the runtime's own call)."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ValueError(f"the job gives no array for the model's input(s) {', '.join(missing)}")
        start = time.perf_counter_ns()
        outputs = self.session.run(self.output_names, feeds)
        if self.slowdown:
            hold(start, self.slowdown)
        return dict(zip(self.output_names, outputs)), time.perf_counter_ns() - start

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "inputs": self.input_names, "outputs": self.output_names}
