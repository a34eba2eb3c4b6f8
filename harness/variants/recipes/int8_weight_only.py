"""8-bit weights in onnxruntime's MatMulNBits, block by block: the default int8 recipe.

Why not plain int8 dynamic? ``bench/int8_study.py`` measured SmolLM2 (perplexity 18.45 in fp32):
dynamic int8 quantizes each MatMul's *activations* with one scale per tensor, and the inputs of
the MLP's down projection carry outliers (max |x| is 6x their 99.9th percentile, against 1.4-2x
elsewhere), so most values collapse onto a few int8 levels. Quantizing only down_proj that way
costs 1.52x perplexity; everything but down_proj still 1.13x. Here each block of 32 weights has
its own scale, and with ``accuracy_level: 4`` the activations are quantized to int8 per block of
32 too (int8 dot products at run time): 1.008x perplexity, 0.998x with fp32 activations.
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
    if int(ctx.params["bits"]) != 8:
        raise ctx.config_error("bits", f"must be 8 for {NAME} (use int4_weight_only for 4 bits)")
    return int4_weight_only.build(ctx)
