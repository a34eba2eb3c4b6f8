"""int8 static quantization in QDQ form, activation ranges calibrated on real text.

Calibration runs the parent model on ``calibration_windows`` windows of ``window_tokens`` tokens
taken from text disjoint from the evaluation windows (other topics of the same manual), and
``method`` turns the observed activations into ranges: ``MinMax``, ``Percentile`` (clips the
``percentile`` tail) or ``Entropy``. Activations are uint8 with a zero point, weights int8;
``reduce_range: auto`` keeps per-channel weights to 7 bits for the reason int8_dynamic gives.

A generic ONNX model (``onnx_file``/``onnx_package``) quantizes its Conv, MatMul and Gemm nodes and
calibrates on ``calibration`` (an ``.npz`` beside the suite, one array per input name, fed as one
call), else on ``calibration_windows`` batches drawn like its declared inputs with seeds after the
suite's, so the calibration never sees the inputs the agreement is measured on (a suite that
ships ``inputs_npz`` and no calibration file calibrates on those inputs: say so in the suite).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ... import evaldata, generic_inputs
from .. import graph_passes
from . import int8_dynamic
from ._context import TOKENIZER_FILE, BuildContext
from .int8_dynamic import count_quantized_ops

NAME = "int8_static"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime", "tokenizers")
USES = (graph_passes, evaldata, generic_inputs, int8_dynamic)
DEFAULTS: dict[str, Any] = {"method": "Percentile", "percentile": 99.99, "calibration_windows": 8,
                            "window_tokens": 256, "per_channel": True, "reduce_range": "auto", "keep_fp32": [],
                            "calibration": None}
PATH_PARAMS = ("calibration",)  # generic models: an .npz of calibration inputs
SAMPLES_INPUTS = True  # generic models without a calibration file: the declared inputs enter the key
GENERIC_OPS = ("Conv", "MatMul", "Gemm")  # the weight-bearing ops of a generic graph
METHODS = ("MinMax", "Percentile", "Entropy")
CALIBRATION_TOPICS = ("import", "lambda", "lists", "numbers", "operator-summary", "pass", "raise",
                      "return", "slicings", "specialattrs", "string-methods", "typesseq")


class TextCalibration:
    """onnxruntime's CalibrationDataReader: one no-cache forward pass per window."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def build(ctx: BuildContext) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .int8_dynamic import _excluded_nodes, _reduce_range, prepared_for_quantization

    method = ctx.params["method"]
    if method not in METHODS:
        raise ctx.config_error("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    generic = ctx.base.task == "generic"
    feeds = generic_calibration_feeds(ctx) if generic else calibration_feeds(ctx)
    ctx.log(f"calibrating int8 activations with {method} on {len(feeds)} "
            f"{'batches of inputs' if generic else 'windows of real text'}")
    with prepared_for_quantization(ctx) as source:
        quantize_static(
            str(source), str(ctx.out_model), TextCalibration(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(GENERIC_OPS) if generic else ["MatMul"],
            per_channel=bool(ctx.params["per_channel"]), reduce_range=_reduce_range(ctx),
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=_excluded_nodes(ctx),
            extra_options={"CalibPercentile": float(ctx.params["percentile"])},
        )
    ctx.copy_tokenizer()
    return {"quantized_ops": count_quantized_ops(ctx), "calibration_windows": len(feeds)}


def generic_calibration_feeds(ctx: BuildContext) -> list[dict[str, np.ndarray]]:
    """A generic model's calibration calls: the ``calibration`` file, else batches drawn like its inputs."""
    import onnx

    graph = onnx.load(str(ctx.parent_model), load_external_data=False).graph
    if not any(node.op_type in GENERIC_OPS for node in graph.node):
        raise ctx.not_applicable(NAME, f"the graph has none of the ops it quantizes ({', '.join(GENERIC_OPS)})")
    assert ctx.suite_file is not None
    if ctx.params["calibration"] is not None:
        given = generic_inputs.GenericInputs(ctx.suite_file, npz=ctx.path_param("calibration"),
                                             field=ctx.params_field, npz_key="calibration")
        return [generic_inputs.arrays(given, ctx.parent_model)]
    declared = ctx.sample_inputs
    if declared is None:
        raise ctx.config_error("calibration", "is required: the suite declares no inputs to draw a calibration set from")
    if declared.npz is not None:
        return [generic_inputs.arrays(declared, ctx.parent_model)]
    count = int(ctx.params["calibration_windows"])
    return [generic_inputs.arrays(declared, ctx.parent_model, seed=declared.seed + 1 + index) for index in range(count)]


def calibration_feeds(ctx: BuildContext) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    if ctx.params["calibration"] is not None:
        raise ctx.config_error("calibration", "is for generic ONNX models; a language model calibrates on text windows")
    count, length = int(ctx.params["calibration_windows"]), int(ctx.params["window_tokens"])
    assert ctx.parent is not None
    text = evaldata.english_text(CALIBRATION_TOPICS)
    ids = Tokenizer.from_file(str(ctx.parent / TOKENIZER_FILE)).encode(text, add_special_tokens=False).ids
    windows = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:count]
    if len(windows) < count:
        raise ctx.config_error("calibration_windows", f"the calibration text holds {len(windows)} windows of "
                                                      f"{length} tokens, fewer than {count}")
    inputs = ort.InferenceSession(str(ctx.parent_model), providers=["CPUExecutionProvider"]).get_inputs()
    past = {i.name: (int(i.shape[1]), int(i.shape[3])) for i in inputs if i.name.startswith("past_key_values.")}
    return [_feed(window, past) for window in windows]


def _feed(window: list[int], past: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    ids = np.asarray([window], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for name, (heads, dim) in past.items():
        feed[name] = np.zeros((1, heads, 0, dim), dtype=np.float32)
    return feed
