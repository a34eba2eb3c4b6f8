"""int8 static quantization in QDQ form, activation ranges calibrated on real text.

Calibration runs the parent model on ``calibration_windows`` windows of ``window_tokens`` tokens
taken from text disjoint from the evaluation windows (other topics of the same manual), and
``method`` turns the observed activations into ranges: ``MinMax``, ``Percentile`` (clips the
``percentile`` tail) or ``Entropy``. Activations are uint8 with a zero point, weights int8;
``reduce_range: auto`` keeps per-channel weights to 7 bits for the reason int8_dynamic gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ... import evaldata
from .. import graph_passes
from ._context import TOKENIZER_FILE, BuildContext
from .int8_dynamic import count_quantized_ops

NAME = "int8_static"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime", "tokenizers")
USES = (graph_passes, evaldata)
DEFAULTS: dict[str, Any] = {"method": "Percentile", "percentile": 99.99, "calibration_windows": 8,
                            "window_tokens": 256, "per_channel": True, "reduce_range": "auto", "keep_fp32": []}
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

    from .int8_dynamic import _excluded_nodes, _reduce_range

    method = ctx.params["method"]
    if method not in METHODS:
        raise ctx.config_error("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    feeds = calibration_feeds(ctx)
    ctx.log(f"calibrating int8 activations with {method} on {len(feeds)} windows of real text")
    quantize_static(
        str(ctx.parent_model), str(ctx.out_model), TextCalibration(feeds), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"], per_channel=bool(ctx.params["per_channel"]),
        reduce_range=_reduce_range(ctx), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=_excluded_nodes(ctx),
        extra_options={"CalibPercentile": float(ctx.params["percentile"])},
    )
    ctx.copy_tokenizer()
    return {"quantized_ops": count_quantized_ops(ctx), "calibration_windows": len(feeds)}


def calibration_feeds(ctx: BuildContext) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

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
