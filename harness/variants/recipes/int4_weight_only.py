"""4-bit weight-only quantization to onnxruntime's MatMulNBits (block-wise min-max)."""

from __future__ import annotations

from typing import Any

from ._context import BuildContext

NAME = "int4_weight_only"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime")
DEFAULTS: dict[str, Any] = {"block_size": 32, "symmetric": True, "bits": 4, "accuracy_level": None}


def build(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    params = ctx.params
    ctx.log(f"quantizing MatMul weights to {params['bits']}-bit blocks of {params['block_size']}")
    config = DefaultWeightOnlyQuantConfig(
        block_size=int(params["block_size"]),
        is_symmetric=bool(params["symmetric"]),
        accuracy_level=params["accuracy_level"],
        bits=int(params["bits"]),
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(ctx.parent_model)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(ctx.out_model), use_external_data_format=False)
    ctx.copy_tokenizer()
    nbits = sum(1 for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")
    return {"quantized_ops": {"MatMulNBits": nbits}}
