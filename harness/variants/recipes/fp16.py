"""fp16 weights and compute, with inputs/outputs kept fp32 and sensitive ops left in fp32."""

from __future__ import annotations

from typing import Any

from ._context import BuildContext

NAME = "fp16"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime")
# Reductions over the vocabulary and the RMS norm's mean of squares overflow or lose precision in fp16.
DEFAULTS: dict[str, Any] = {"keep_fp32_ops": ["ReduceMean", "Pow", "Softmax", "SimplifiedLayerNormalization"]}


def build(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(ctx.params["keep_fp32_ops"])
    ctx.log("converting weights and compute to fp16")
    model = convert_float_to_float16(onnx.load(str(ctx.parent_model)), keep_io_types=True, op_block_list=blocked)
    onnx.save_model(model, str(ctx.out_model))
    ctx.copy_tokenizer()
    return {"kept_fp32_ops": sorted(set(ctx.params["keep_fp32_ops"]))}
