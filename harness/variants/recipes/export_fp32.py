"""The fp32 reference: the base model exported to ONNX (a causal LM with an explicit KV cache,
or a sentence encoder with its pooling in the graph)."""

from __future__ import annotations

from typing import Any

from .. import export, graph_passes
from ._context import TOKENIZER_FILE, BuildContext

NAME = "export_fp32"
PARENT = None
TOOLS = ("torch", "transformers", "gguf", "onnx", "onnxscript")
USES = (export, graph_passes)  # modules whose code shapes the artifact
DEFAULTS: dict[str, Any] = {"opset": 21}  # 21: int4 tensors, for embeddings quantized to 4 bits


def build(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_for_export

    if ctx.base.task == "sentence_embedding":
        return _build_sentence_encoder(ctx)
    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    model, tokenizer = load_for_export(ctx.base)
    export.untie_lm_head(model)
    ctx.log("exporting to ONNX with torch.onnx (dynamo); this takes minutes for a real model")
    export.export_causal_lm(model, ctx.out_model, opset=int(ctx.params["opset"]))
    _keep_only_the_fast_tokenizer(ctx, tokenizer)
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "architecture": type(model).__name__,
    }


def _build_sentence_encoder(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_encoder_for_export

    ctx.log("loading the sentence encoder with transformers")
    encoder = load_encoder_for_export(ctx.base)
    ctx.log(f"exporting to ONNX with torch.onnx (dynamo), {encoder.pooling} pooling"
            f"{' and L2 normalization' if encoder.normalize else ''} in the graph")
    export.export_sentence_encoder(encoder.model, encoder.pooling, encoder.normalize, ctx.out_model,
                                   opset=int(ctx.params["opset"]))
    _keep_only_the_fast_tokenizer(ctx, encoder.tokenizer)
    return {
        "parameters": int(sum(p.numel() for p in encoder.model.parameters())),
        "architecture": type(encoder.model).__name__,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
    }


def _keep_only_the_fast_tokenizer(ctx: BuildContext, tokenizer: Any) -> None:
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in ctx.out_dir.iterdir():
        if extra.name not in (TOKENIZER_FILE, ctx.out_model.name):
            extra.unlink()
