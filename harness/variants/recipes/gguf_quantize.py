"""A GGUF for llama.cpp at a quantization type of llama.cpp's own quantizer (``type``: F32, F16,
Q8_0, Q4_K_M, ... as in ``_gguf.TYPES``).

First an F32 GGUF of the base model's fp32 weights (a GGUF base dequantized tensor by tensor with
every metadata key kept; a transformers Llama folder written as llama.cpp's converter does), then
``llama_model_quantize`` to the type unless it is F32. llama.cpp picks each tensor's type by its
own rules: a k-quant needs rows that are a multiple of 256, so a model 576 wide (SmolLM2-135M)
gets its fallback types for those tensors; ``tensor_types`` in the facts says what it chose.
The build opens the runner's llama.cpp backend on the file: F32 must give the fp32 torch model's
logits near exactly, a quantized type only a sane top-1 agreement, and llama.cpp's tokenizer must
give tokenizer.json's ids.
"""

from __future__ import annotations

from typing import Any

from . import _gguf
from ._context import BuildContext

NAME = "gguf_quantize"
PARENT = None
TOOLS = ("llama-cpp-python", "gguf", "torch", "transformers", "tokenizers")
USES = (_gguf,)
DEFAULTS: dict[str, Any] = {"type": "Q8_0"}
RUNTIME = "llama_cpp"
MODEL_FILE = "model.gguf"


def build(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_for_export

    name = _gguf.type_name(ctx)
    if ctx.base.task != "causal_lm":
        raise ctx.not_applicable(NAME, f"it builds decoder LLMs; this base model is a {ctx.base.task}")
    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    model, tokenizer = load_for_export(ctx.base)
    tokenizer_json = _gguf.keep_tokenizer(ctx, tokenizer)
    out = ctx.out_dir / MODEL_FILE
    f32 = out if name == "F32" else ctx.out_dir / "model-f32.gguf"
    ctx.log("writing an F32 GGUF of the fp32 weights")
    if ctx.base.gguf_file:
        _gguf.dequantized_copy(ctx.base.folder / ctx.base.gguf_file, f32)
    else:
        _gguf.llama_folder_copy(model, tokenizer_json, f32)
    if name != "F32":
        ctx.log(f"quantizing to {name} with llama.cpp's quantizer")
        _gguf.quantize(f32, out, name)
        f32.unlink()
    facts = _gguf.file_facts(out)
    ctx.log("checking the file with the runner's llama.cpp backend")
    return {
        "precision": facts.pop("precision"),
        "scheme": _gguf.TYPES[name][1],
        **facts,
        "load_check": _gguf.check_logits(out, model, tokenizer_json, exact=name == "F32"),
        "tokenizer_check": _gguf.check_tokenizer(out, tokenizer_json),
    }
