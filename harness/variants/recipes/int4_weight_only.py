"""4-bit weight-only quantization to onnxruntime's MatMulNBits, block by block.

``algorithm: rtn`` is plain round-to-nearest min-max per block; ``hqq`` (Half-Quadratic
Quantization) refines each block's scale and zero point to minimize the weight error, at the
same size and speed. ``quantize_embedding`` also stores the token embedding (the largest single
tensor of a small LLM) in 4 bits, as GatherBlockQuantized, always round-to-nearest (onnxruntime's
HQQ does not handle Gather).
"""

from __future__ import annotations

from typing import Any

from . import int8_dynamic
from ._context import BuildContext

NAME = "int4_weight_only"
PARENT = "export_fp32"
TOOLS = ("onnx", "onnxruntime", "torch")
USES = (int8_dynamic,)  # its preparation of a generic graph
# rtn by default: onnxruntime 1.32's HQQ output (float zero points) decodes SmolLM2 ~8x slower on
# x86 CPUs (245 vs 32 ms/token) for better perplexity (20.9 vs 24.5); a suite can choose.
DEFAULTS: dict[str, Any] = {"block_size": 32, "symmetric": False, "bits": 4, "algorithm": "rtn",
                            "quantize_embedding": True, "accuracy_level": None}
ALGORITHMS = ("rtn", "hqq")


def build(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    params = ctx.params
    if params["algorithm"] not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {params['algorithm']!r}")
    ctx.log(f"quantizing weights to {params['bits']}-bit blocks of {params['block_size']} with {params['algorithm']}"
            f"{' (embedding too)' if params['quantize_embedding'] else ''}")
    with int8_dynamic.prepared_for_quantization(ctx) as source:  # a generic graph's Constant weights become initializers
        model = onnx.load(str(source))
    if not has_constant_matmul_weights(model):
        raise ctx.not_applicable(NAME, "the graph has no MatMul with a constant 2-D weight for MatMulNBits to quantize")
    for config in _configs(params):  # HQQ has no Gather support: the embedding then takes a second, RTN pass
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    onnx.save_model(model, str(ctx.out_model))
    ctx.copy_tokenizer()
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"quantized_ops": counts}


def has_constant_matmul_weights(model: Any) -> bool:
    """Whether any MatMul multiplies by an initializer of rank 2: the only weights MatMulNBits takes."""
    constants = {init.name: init for init in model.graph.initializer}
    return any(node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants
               and len(constants[node.input[1]].dims) == 2 for node in model.graph.node)


def _configs(params: dict[str, Any]) -> list[Any]:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
    )

    block, bits = int(params["block_size"]), int(params["bits"])
    embedding = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)}

    def rtn(**ops: Any) -> Any:
        return DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=bool(params["symmetric"]),
                                            accuracy_level=params["accuracy_level"], bits=bits, **ops)

    if params["algorithm"] == "rtn":
        ops = {"op_types_to_quantize": ("MatMul", "Gather"), "quant_axes": (("MatMul", 0), ("Gather", 1))}
        return [rtn(**ops) if params["quantize_embedding"] else rtn()]
    configs = [HQQWeightOnlyQuantConfig(block_size=block, bits=bits)]
    if params["quantize_embedding"]:
        configs.append(rtn(**embedding))
    return configs
