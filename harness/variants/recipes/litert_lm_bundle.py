"""A ``.litertlm`` bundle for the LiteRT-LM engine, by litert-torch's Hugging Face exporter.

The base model is loaded with transformers (a GGUF dequantized to fp32), saved as a Hugging Face
folder and exported with ``litert_torch.generative.export_hf.export``: one TFLite graph with a
prefill signature per ``prefill_lengths`` entry and a one-token decode signature over a KV cache
of ``cache_length`` positions, quantized by ai-edge-quantizer (``int8``: ``dynamic_wi8_afp32``,
int8 weights per output channel and activations quantized on the fly in the matmuls), bundled
with the tokenizer and the engine's metadata.

The metadata is written here instead of by the exporter, which would declare the tokenizer's BOS
as the start token whenever the chat template begins with it (SmolLM2's does): the engine then
prepends it to every prefill, while the reference and every other variant read the token ids
as they are. It names the EOS as the only stop token: with the exporter's punctuation-prefixed
stop sequences the engine holds back a sampled "." as possibly the start of one, and a decode
step returns no text.

The exporter imports ``tensorflow.lite.python.schema_py_generated`` (LoRA support) without
declaring tensorflow; ai-edge-litert ships the same module, so it is aliased for that import.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from . import litert_export
from ._context import TOKENIZER_FILE, BuildContext

NAME = "litert_lm_bundle"
PARENT = None
USES = (litert_export,)  # its tensorflow stand-in shapes the export
TOOLS = ("litert-torch", "litert-lm-api", "litert-lm-builder", "ai-edge-litert", "ai-edge-quantizer", "torch",
         "transformers", "gguf")
DEFAULTS: dict[str, Any] = {"quantization": "int8", "prefill_lengths": [8, 128], "cache_length": 512}
RUNTIME = "litert_lm"
MODEL_FILE = "model.litertlm"
RECIPES = {"fp32": "none", "int8": "dynamic_wi8_afp32"}  # quantization -> ai-edge-quantizer recipe
SCHEMES = {"fp32": "fp32 weights and activations (no quantization)",
           "int8": "dynamic_wi8_afp32: int8 weights per output channel (ai-edge-quantizer), activations "
                   "quantized to int8 on the fly in the matmuls, fp32 elsewhere"}
MIN_CACHE = 257 + 64 + 32  # an accuracy window, and a decode of 64 after a prompt with room to spare
CHECK_TOKENS = 64  # predictions in the build's perplexity check
MAX_RATIO = {"fp32": 1.01, "int8": 1.25}  # perplexity over torch's on the check window


def build(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_for_export, save_hf_folder

    _check(ctx)
    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    model, tokenizer = load_for_export(ctx.base)
    hf_folder = ctx.out_dir / "hf_fp32"
    save_hf_folder(model, tokenizer, hf_folder)
    quantization = ctx.params["quantization"]
    ctx.log(f"exporting with litert-torch ({quantization}: recipe {RECIPES[quantization]}); minutes for a real model")
    _export(ctx, hf_folder, _metadata(tokenizer, int(ctx.params["cache_length"])))
    _keep_only_the_artifact(ctx, tokenizer, hf_folder)
    backend = _opened(ctx)
    return {
        "precision": ctx.params["quantization"],
        "scheme": SCHEMES[ctx.params["quantization"]],
        **weight_facts(ctx.out_dir / MODEL_FILE),
        "tokenizer_check": _check_tokenizer(backend, ctx.out_dir / TOKENIZER_FILE, ctx.params_field),
        "load_check": _check_perplexity(ctx, backend, model),
        "prefill_lengths": [int(n) for n in ctx.params["prefill_lengths"]],
        "cache_length": int(ctx.params["cache_length"]),
    }


def _opened(ctx: BuildContext) -> Any:
    """The runner's own backend on the written bundle: a file the engine refuses fails the build."""
    from ...errors import BuildError
    from ...runner.backends.litert_lm import LiteRTLMBackend

    try:
        return LiteRTLMBackend(str(ctx.out_dir / MODEL_FILE), [], 0)
    except Exception as exc:  # the engine reports a bad file as a bare RuntimeError
        raise BuildError(f"{ctx.params_field}: the LiteRT-LM engine cannot load the bundle: {str(exc)[:300]}") from exc


def _check(ctx: BuildContext) -> None:
    if ctx.base.task != "causal_lm":
        raise ctx.not_applicable(NAME, f"it builds decoder LLMs; this base model is a {ctx.base.task}")
    if ctx.params["quantization"] not in RECIPES:
        raise ctx.config_error("quantization", f"must be one of {', '.join(RECIPES)}, got {ctx.params['quantization']!r}")
    lengths = ctx.params["prefill_lengths"]
    if not isinstance(lengths, list) or not lengths or not all(isinstance(n, int) and n > 0 for n in lengths):
        raise ctx.config_error("prefill_lengths", f"must be a list of positive token counts, got {lengths!r}")
    if not isinstance(ctx.params["cache_length"], int) or ctx.params["cache_length"] < MIN_CACHE:
        raise ctx.config_error("cache_length", f"must be at least {MIN_CACHE} (a window of 257 tokens and a "
                                               f"decode of 64 after a prompt), got {ctx.params['cache_length']!r}")




def _metadata(tokenizer: Any, cache_length: int) -> str:
    """The engine's LlmMetadata (text proto): no start token, the EOS as the only stop token."""
    stop = f"stop_tokens {{ token_ids {{ ids: {tokenizer.eos_token_id} }} }}\n" if tokenizer.eos_token_id is not None else ""
    return f"{stop}max_num_tokens: {cache_length}\nllm_model_type {{ generic_model {{ }} }}\n"


def _export(ctx: BuildContext, hf_folder: Path, metadata: str) -> None:
    """The export runs in a process of its own: importing litert-torch swaps transformers' RMSNorm
    process-wide, which would change what a later recipe of the same run exports."""
    import json
    import subprocess

    from ...errors import BuildError

    work = ctx.out_dir / "export"
    settings = {"hf_folder": str(hf_folder), "work": str(work), "metadata": metadata,
                "prefill_lengths": [int(n) for n in ctx.params["prefill_lengths"]],
                "cache_length": int(ctx.params["cache_length"]), "recipe": RECIPES[ctx.params["quantization"]]}
    code = f"import sys; from {__name__} import export_here; export_here(sys.stdin.read())"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(settings), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:  # the exporter raises whatever torch.export or the converter raise
        raise BuildError(f"{ctx.params_field}: litert-torch could not export the model: {done.stderr.strip()[-600:]}")
    bundle = work / MODEL_FILE
    if not bundle.is_file():
        raise BuildError(f"{ctx.params_field}: litert-torch wrote no {MODEL_FILE} (found {sorted(p.name for p in work.iterdir())})")
    bundle.rename(ctx.out_dir / MODEL_FILE)


def export_here(settings_json: str) -> None:
    """litert-torch's export with the bundle (in the child process)."""
    import json

    settings = json.loads(settings_json)
    _exporter()(settings["hf_folder"], settings["work"], prefill_lengths=settings["prefill_lengths"],
                cache_length=settings["cache_length"], quantization_recipe=settings["recipe"],
                bundle_litert_lm=True, litert_lm_llm_metadata_override=settings["metadata"])


def _exporter() -> Any:
    """``export_hf.export``, importable without tensorflow (the stand-in of litert_export)."""
    import torch._dynamo  # noqa: F401 - it looks for tensorflow when imported: before the stand-in exists

    with litert_export.tensorflow_schema_alias():
        from litert_torch.generative.export_hf import export
    return export.export


def _keep_only_the_artifact(ctx: BuildContext, tokenizer: Any, hf_folder: Path) -> None:
    shutil.rmtree(hf_folder)
    shutil.rmtree(ctx.out_dir / "export")
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in ctx.out_dir.iterdir():
        if extra.name not in (TOKENIZER_FILE, MODEL_FILE):
            extra.unlink()


def _real_ids(tokenizer_file: Path) -> list[int]:
    from tokenizers import Tokenizer

    from ...evaldata import EVAL_TOPICS, english_text

    return Tokenizer.from_file(str(tokenizer_file)).encode(english_text(EVAL_TOPICS), add_special_tokens=False).ids


def _check_tokenizer(backend: Any, tokenizer_file: Path, field: str) -> str:
    """The engine tokenizes text itself: it must give tokenizer.json's ids on the evaluation text."""
    from ...errors import BuildError
    from ...evaldata import EVAL_TOPICS, english_text

    expected = _real_ids(tokenizer_file)
    got = backend.engine.tokenize(english_text(EVAL_TOPICS))
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(got), len(expected)))
        raise BuildError(f"{field}: the bundle's tokenizer gives other ids than {TOKENIZER_FILE} on the evaluation "
                         f"text ({len(got)} against {len(expected)} tokens, first difference at token {at})")
    return f"identical ids on {len(expected):,} tokens"


def _check_perplexity(ctx: BuildContext, backend: Any, model: Any) -> str:
    """The engine's perplexity on a window of real text against torch's on the same weights."""
    import numpy as np
    import torch

    from ...errors import BuildError

    window = _real_ids(ctx.out_dir / TOKENIZER_FILE)[: CHECK_TOKENS + 1]
    with torch.no_grad():
        logits = model(torch.tensor([window])).logits[0, :-1].double()
    torch_nll = -torch.log_softmax(logits, -1).gather(1, torch.tensor(window[1:])[:, None])[:, 0].numpy()
    ours, theirs = float(np.exp(backend.target_nll(window).mean())), float(np.exp(torch_nll.mean()))
    bound = MAX_RATIO[ctx.params["quantization"]]
    figure = f"perplexity {ours:.4g} against torch's {theirs:.4g} on {CHECK_TOKENS} tokens of real text"
    if not 1 / bound <= ours / theirs <= bound:
        raise BuildError(f"{ctx.params_field}: the LiteRT-LM engine computes something else than torch: {figure} "
                         f"(ratio {ours / theirs:.3f}, bound {bound})")
    return f"{figure} (ratio {ours / theirs:.4f}, bound {bound})"


def weight_facts(bundle: Path) -> dict[str, Any]:
    """Bytes of constants the decode signature reads per token (the token-embedding table: one
    row, unless the LM head reads the same buffer) and how many weight tensors have each type."""
    from ai_edge_litert import schema_py_generated as schema

    data = _tflite_section(bundle)
    model = schema.Model.GetRootAs(data, 0)
    graph = next(model.Subgraphs(i) for i in range(model.SubgraphsLength()) if model.Subgraphs(i).Name() == b"decode")
    uses: dict[int, list[tuple[int, int]]] = {}  # buffer -> (builtin op, tensor) for each read
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        for tensor in op.InputsAsNumpy():
            if tensor >= 0 and _buffer_bytes(model, graph.Tensors(tensor).Buffer()):
                uses.setdefault(graph.Tensors(tensor).Buffer(), []).append((builtin, int(tensor)))
    total, types_count = 0, dict[str, int]()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    for buffer, reads in uses.items():
        size, tensor = _buffer_bytes(model, buffer), graph.Tensors(reads[0][1])
        if all(op == schema.BuiltinOperator.EMBEDDING_LOOKUP for op, _ in reads):
            size //= int(tensor.ShapeAsNumpy()[0])  # one row of the table
        total += size
        name = names.get(tensor.Type(), str(tensor.Type()))
        types_count[name] = types_count.get(name, 0) + 1
    return {"weight_bytes_per_token": total, "weight_types": types_count}


def _buffer_bytes(model: Any, index: int) -> int:
    if index <= 0:
        return 0
    buffer = model.Buffers(index)
    return int(buffer.DataLength() or buffer.Size())  # Size: data stored after the flatbuffer (large models)


def _tflite_section(bundle: Path) -> bytes:
    """The bundle's prefill-decode TFLite model (the LiteRT-LM container holds it as one section)."""
    import io

    from litert_lm_builder import litertlm_core, litertlm_peek

    header = litertlm_peek.read_litertlm_header(str(bundle), io.StringIO())
    sections = header.SectionMetadata()
    for i in range(sections.ObjectsLength()):
        section = sections.Objects(i)
        if litertlm_core.any_section_data_type_to_string(section.DataType()) == "TFLiteModel":
            with bundle.open("rb") as file:
                file.seek(section.BeginOffset())
                return file.read(section.EndOffset() - section.BeginOffset())
    raise ValueError(f"{bundle} holds no TFLite model")
