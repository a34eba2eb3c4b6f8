"""The fp32 reference: the base model exported to ONNX (a causal LM with an explicit KV cache,
or a sentence encoder with its pooling in the graph); a generic ONNX model is the file itself,
checked by onnx's checker and copied (with its external data, if any)."""

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
    if ctx.base.task == "generic":
        return _copy_onnx_model(ctx)
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


def _copy_onnx_model(ctx: BuildContext) -> dict[str, Any]:
    import shutil

    import onnx

    from ...errors import BuildError

    source = ctx.base.folder / (ctx.base.onnx_file or "")
    try:
        onnx.checker.check_model(str(source))  # by path: a model over 2 GB or with external data too
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"{source} is not a valid ONNX model: {str(exc).splitlines()[0]}") from None
    if len(ctx.base.files) > 1:  # external data: saved again under the artifact's own names
        onnx.save_model(onnx.load(str(source)), str(ctx.out_model), save_as_external_data=True,
                        location=f"{ctx.out_model.name}.data")
    else:
        shutil.copy2(source, ctx.out_model)
    ctx.log(f"copied {source.name} ({source.stat().st_size / 1e6:.1f} MB), checked by onnx.checker")
    graph = onnx.load(str(ctx.out_model), load_external_data=False)
    constants = {init.name for init in graph.graph.initializer}
    return {
        "source": source.name,
        "opsets": {entry.domain or "ai.onnx": entry.version for entry in graph.opset_import},
        "inputs": [value.name for value in graph.graph.input if value.name not in constants],
        "outputs": [value.name for value in graph.graph.output],
        "parameters": int(sum(_elements(init.dims) for init in graph.graph.initializer)),
    }


def _elements(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def _keep_only_the_fast_tokenizer(ctx: BuildContext, tokenizer: Any) -> None:
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in ctx.out_dir.iterdir():
        if extra.name not in (TOKENIZER_FILE, ctx.out_model.name):
            extra.unlink()
