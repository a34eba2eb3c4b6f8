"""int8 dynamic quantization: int8 weights, activations quantized per tensor at run time.

``quantize_embedding`` stores the token embedding (Gather) in int8 too; without it the fp32
embedding alone is 17% of SmolLM2's fp32 size. ``keep_fp32: [mlp_down]`` leaves the MLP's down
projections unquantized: their inputs carry the outliers that per-tensor activation scales
cannot hold (see int8_weight_only for the numbers).

``reduce_range: auto`` stores 7-bit weights when ``per_channel`` is on. onnxruntime's u8 x s8
kernel on x86 CPUs without VNNI (AVX2) adds pairs of products in int16 and saturates; per-channel
scales push every column to the full int8 range, and SmolLM2's perplexity went from 18.5 to
3.9 million that way on this project's CI machine. ARM's dot-product instructions do not saturate.

A generic ONNX model (``onnx_file``/``onnx_package``) is first put through onnxruntime's own
quantization pre-processing (``prepared_for_quantization``) and its Conv and MatMul nodes are
quantized; a graph with none of them to quantize makes the recipe say it does not apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import graph_passes
from ._context import BuildContext

NAME = "int8_dynamic"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime")
USES = (graph_passes,)
DEFAULTS: dict[str, Any] = {"per_channel": False, "reduce_range": "auto", "quantize_embedding": True, "keep_fp32": []}
KEEPABLE = ("mlp_down",)
GENERIC_OPS = ("Conv", "MatMul")  # what dynamic quantization handles in a generic graph (ConvInteger, MatMulInteger)
PER_CHANNEL_OPSET = 13  # per-channel scales need DequantizeLinear's axis attribute (opset 13)


def build(ctx: BuildContext) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel, reduce_range = bool(ctx.params["per_channel"]), _reduce_range(ctx)
    excluded = _excluded_nodes(ctx)
    ops = list(GENERIC_OPS) if ctx.base.task == "generic" else (
        ["MatMul", "Gather"] if ctx.params["quantize_embedding"] else ["MatMul"])
    ctx.log(f"quantizing {'/'.join(ops)} weights to int8 (per_channel={per_channel}, reduce_range={reduce_range}, "
            f"{len(excluded)} MatMuls kept in fp32)")
    with prepared_for_quantization(ctx) as source:
        quantize_dynamic(
            str(source), str(ctx.out_model), weight_type=QuantType.QInt8,
            per_channel=per_channel, reduce_range=reduce_range, nodes_to_exclude=excluded, op_types_to_quantize=ops,
        )
    quantized = count_quantized_ops(ctx)
    if not quantized:
        raise ctx.not_applicable(NAME, f"the graph has no {' or '.join(ops)} with constant weights to quantize")
    ctx.copy_tokenizer()
    return {"quantized_ops": quantized, "reduce_range": reduce_range, "kept_fp32": len(excluded)}


@contextmanager
def prepared_for_quantization(ctx: BuildContext) -> Iterator[Path]:
    """The parent graph as onnxruntime's quantizers take it. EdgeGate's own exports already are; a
    generic model goes through onnxruntime's pre-processing (constants folded into initializers,
    BatchNormalization into Conv: a graph whose weights are Constant nodes, as paddle2onnx writes
    them, has nothing a quantizer sees as a weight otherwise), raised to opset 13 for per-channel scales."""
    if ctx.base.task != "generic":
        yield ctx.parent_model
        return
    import tempfile

    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgegate-prepared-") as folder:
        prepared = Path(folder) / "model.onnx"
        # symbolic shape inference is for transformer graphs (and fails on some CNNs); onnx's own runs
        quant_pre_process(str(ctx.parent_model), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
        if opset < PER_CHANNEL_OPSET:
            onnx.save_model(version_converter.convert_version(model, PER_CHANNEL_OPSET), str(prepared))
        yield prepared


def _reduce_range(ctx: BuildContext) -> bool:
    value = ctx.params["reduce_range"]
    if value == "auto":
        return bool(ctx.params["per_channel"])
    if not isinstance(value, bool):
        raise ctx.config_error("reduce_range", f"must be true, false or auto, got {value!r}")
    return value


def _excluded_nodes(ctx: BuildContext) -> list[str]:
    import onnx

    kinds = ctx.params["keep_fp32"]
    unknown = [k for k in kinds if k not in KEEPABLE]
    if unknown:
        raise ctx.config_error("keep_fp32", f"unknown {unknown}; known: {', '.join(KEEPABLE)}")
    if not kinds:
        return []
    return graph_passes.mlp_down_projections(onnx.load(str(ctx.parent_model), load_external_data=False))


def count_quantized_ops(ctx: BuildContext) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(ctx.out_model), load_external_data=False).graph.node:
        if "Integer" in node.op_type or "quant" in node.op_type.lower():
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
