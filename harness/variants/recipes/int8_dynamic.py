"""int8 dynamic quantization: int8 weights, activations quantized per tensor at run time.

``quantize_embedding`` stores the token embedding (Gather) in int8 too; without it the fp32
embedding alone is 17% of SmolLM2's fp32 size.
"""

from __future__ import annotations

from typing import Any

from ._context import BuildContext

NAME = "int8_dynamic"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime")
DEFAULTS: dict[str, Any] = {"per_channel": False, "reduce_range": False, "quantize_embedding": True}


def build(ctx: BuildContext) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ctx.log(f"quantizing MatMul weights to int8 (per_channel={ctx.params['per_channel']})")
    quantize_dynamic(
        str(ctx.parent_model),
        str(ctx.out_model),
        weight_type=QuantType.QInt8,
        per_channel=bool(ctx.params["per_channel"]),
        reduce_range=bool(ctx.params["reduce_range"]),
        op_types_to_quantize=["MatMul", "Gather"] if ctx.params["quantize_embedding"] else ["MatMul"],
    )
    ctx.copy_tokenizer()
    return {"quantized_ops": _count_ops(ctx)}


def _count_ops(ctx: BuildContext) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(ctx.out_model), load_external_data=False).graph.node:
        if "Integer" in node.op_type or "Quant" in node.op_type:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
