"""fp16 weights and compute; inputs/outputs stay fp32 and overflow-prone ops stay in fp32."""

from __future__ import annotations

from typing import Any

from .. import graph_passes
from ._context import BuildContext

NAME = "fp16"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime")
USES = (graph_passes,)  # modules whose code shapes the artifact
DEFAULTS: dict[str, Any] = {"keep_fp32_ops": ["Softmax"], "keep_fp32_rms_norm": True}


def build(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    from ..graph_passes import (
        drop_round_trip_casts,
        rms_norm_chains,
        sort_topologically,
    )

    model = onnx.load(str(ctx.parent_model))
    ops = list(DEFAULT_OP_BLOCK_LIST) + list(ctx.params["keep_fp32_ops"])
    nodes = rms_norm_chains(model) if ctx.params["keep_fp32_rms_norm"] else []
    ctx.log(f"converting to fp16, keeping {len(nodes)} RMS-norm nodes and {ctx.params['keep_fp32_ops']} in fp32")
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=ops, node_block_list=nodes)
    removed = drop_round_trip_casts(model, ops, nodes)
    sort_topologically(model)
    onnx.save_model(model, str(ctx.out_model))
    ctx.copy_tokenizer()
    return {"fp32_ops": sorted(set(ctx.params["keep_fp32_ops"])), "fp32_rms_norm_nodes": len(nodes),
            "round_trip_casts_removed": removed}
