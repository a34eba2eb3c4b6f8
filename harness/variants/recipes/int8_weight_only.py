"""8-bit weights in onnxruntime's MatMulNBits, block by block: the default int8 recipe.

Why not plain int8 dynamic? ``bench/int8_study.py`` measured SmolLM2 (perplexity 18.45 in fp32):
dynamic int8 quantizes each MatMul's *activations* with one scale per tensor, and the inputs of
the MLP's down projection carry outliers (max |x| is 6x their 99.9th percentile, against 1.4-2x
elsewhere), so most values collapse onto a few int8 levels. Quantizing only down_proj that way
costs 1.52x perplexity; everything, 1.78x. Here each block of 32 weights has its own scale, and
with ``accuracy_level: 4`` the activations are quantized to int8 per block of 32 too (int8 dot
products at run time): 1.002x perplexity, 0.996x with fp32 activations.

onnxruntime's block quantizer writes Gather (the token embedding) only in 4 bits, so
``quantize_embedding`` stores it as uint8 with one scale (a lookup: no activations involved).
"""

from __future__ import annotations

from typing import Any

from . import int4_weight_only
from ._context import BuildContext

NAME = "int8_weight_only"
PARENT = "export_fp32"
TOOLS = int4_weight_only.TOOLS
USES = (int4_weight_only,)
DEFAULTS: dict[str, Any] = {**int4_weight_only.DEFAULTS, "bits": 8, "symmetric": True, "accuracy_level": 4}


def build(ctx: BuildContext) -> dict[str, Any]:
    from dataclasses import replace

    if int(ctx.params["bits"]) != 8:
        raise ctx.config_error("bits", f"must be 8 for {NAME} (use int4_weight_only for 4 bits)")
    facts = int4_weight_only.build(replace(ctx, params={**ctx.params, "quantize_embedding": False}))
    if ctx.params["quantize_embedding"]:
        facts["quantized_ops"].update(quantize_embedding(ctx))
    return facts


def quantize_embedding(ctx: BuildContext) -> dict[str, int]:
    """Store ``ctx.out_model``'s token embedding (Gather) as uint8 with one scale, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights_only = ctx.out_model.with_name("matmuls.onnx")
    ctx.out_model.rename(weights_only)
    ctx.log("storing the token embedding as uint8")
    quantize_dynamic(str(weights_only), str(ctx.out_model), weight_type=QuantType.QUInt8, op_types_to_quantize=["Gather"])
    weights_only.unlink()
    import onnx

    nodes = onnx.load(str(ctx.out_model), load_external_data=False).graph.node
    return {"Gather (uint8)": sum(1 for n in nodes if n.op_type == "Gather" and "_quantized" in "".join(n.input))}
