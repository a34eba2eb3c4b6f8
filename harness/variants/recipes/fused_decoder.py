"""A decoder graph built for onnxruntime's fused kernels, by onnxruntime-genai's model builder.

The plain export (``export_fp32``) spells attention out op by op: rotary embedding, the KV
concatenation, the GQA head repeat, softmax; about 80 nodes a layer, and the whole past is copied
into a new tensor every token. The model builder writes what onnxruntime's CPU kernels are made
for: one ``GroupQueryAttention`` a layer (rotary, causal mask and the KV-cache append inside it,
able to write into the past buffer in place), ``SkipSimplifiedLayerNormalization`` (residual add
plus RMS norm) and ``MatMulNBits`` weights (``precision: int8`` or ``int4``, blocks of
``block_size``; ``accuracy_level: 4`` computes with int8 activations per block).
``quantize_embedding`` stores the token embedding in 8 bits (uint8, one scale) at int8 and in
4-bit blocks at int4; the builder alone leaves it in fp32 at int8.

The base model is loaded with transformers (a GGUF dequantized to fp32) and handed to the builder
as a Hugging Face folder, so it starts from the same weights as the other recipes; the accuracy
metrics then check that the fused graph computes what the reference does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from . import int8_weight_only
from ._context import MODEL_FILE, TOKENIZER_FILE, BuildContext

NAME = "fused_decoder"
PARENT = None
TOOLS = ("onnxruntime-genai", "onnx", "onnxruntime", "torch", "transformers", "gguf")
USES = (int8_weight_only,)
DEFAULTS: dict[str, Any] = {"precision": "int8", "block_size": 32, "accuracy_level": 4, "symmetric": True,
                            "algorithm": "default", "quantize_embedding": True}
PRECISIONS = ("fp32", "int8", "int4")
ALGORITHMS = ("default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last")
FUSED_OPS = ("GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
             "MatMulNBits", "RotaryEmbedding", "GatherBlockQuantized")
KEPT_FILES = (MODEL_FILE, MODEL_FILE + ".data", TOKENIZER_FILE, "genai_config.json")


def build(ctx: BuildContext) -> dict[str, Any]:
    _check(ctx)
    hf_folder = ctx.out_dir / "hf_fp32"
    _write_hf_folder(ctx, hf_folder)
    command = builder_command(hf_folder, ctx.out_dir, ctx.out_dir / "builder_cache", ctx.params)
    ctx.log("building the fused decoder graph with onnxruntime-genai's model builder")
    _run_builder(ctx, command)
    _keep_only_the_artifact(ctx.out_dir)
    embedding = {}
    if ctx.params["quantize_embedding"] and ctx.params["precision"] == "int8":
        embedding = _embedding_to_uint8(ctx)
    _weights_mapped(ctx)
    _check_it_loads(ctx)
    return {"builder": " ".join(builder_arguments(ctx.params)), **graph_facts(ctx.out_model), **embedding}


def _check(ctx: BuildContext) -> None:
    if ctx.base.task != "causal_lm":
        raise ctx.not_applicable(NAME, f"it builds decoder LLMs; this base model is a {ctx.base.task}")
    if ctx.params["precision"] not in PRECISIONS:
        raise ctx.config_error("precision", f"must be one of {', '.join(PRECISIONS)}, got {ctx.params['precision']!r}")
    if ctx.params["algorithm"] not in ALGORITHMS:
        raise ctx.config_error("algorithm", f"must be one of {', '.join(ALGORITHMS)}, got {ctx.params['algorithm']!r}")
    if ctx.params["accuracy_level"] not in (0, 1, 2, 3, 4):
        raise ctx.config_error("accuracy_level", f"must be 0-4 (4: int8 activations), got {ctx.params['accuracy_level']!r}")


def _write_hf_folder(ctx: BuildContext, folder: Path) -> None:
    from ..base_models import load_for_export, save_hf_folder

    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    save_hf_folder(*load_for_export(ctx.base), folder)


def _embedding_to_uint8(ctx: BuildContext) -> dict[str, Any]:
    """The builder keeps the token embedding in fp32 at int8 (its GatherBlockQuantized is 4-bit
    only): store it as uint8 as ``int8_weight_only`` does."""
    return {"quantized_ops": int8_weight_only.quantize_embedding(ctx)}


def _weights_mapped(ctx: BuildContext) -> None:
    """The weights page-aligned in ``model.onnx.data``, which onnxruntime maps (see
    ``graph_passes.save_weights_mapped``: 380 -> 288 MB peak RSS for the int8 SmolLM2)."""
    import onnx

    from ..graph_passes import save_weights_mapped

    model = onnx.load(str(ctx.out_model))  # with the builder's external data, if it wrote any
    save_weights_mapped(model, ctx.out_model)


def _check_it_loads(ctx: BuildContext) -> None:
    """Fail the build, not every device, when the builder wrote a graph onnxruntime refuses (seen
    with onnxruntime-genai 0.18: int4, algorithm default and the embedding quantized)."""
    import onnxruntime

    from ...errors import BuildError

    try:
        onnxruntime.InferenceSession(str(ctx.out_model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped failures
        raise BuildError(f"{ctx.params_field}: the model builder ({' '.join(builder_arguments(ctx.params))}) "
                         f"wrote a graph onnxruntime cannot load: {str(exc)[:300]}") from None


def builder_arguments(params: dict[str, Any]) -> list[str]:
    """The model builder's arguments for these recipe parameters (recorded in the manifest)."""
    options = [f"block_size={int(params['block_size'])}", f"accuracy_level={int(params['accuracy_level'])}",
               f"is_symmetric={str(bool(params['symmetric'])).lower()}", f"algo_config={params['algorithm']}"]
    if params["quantize_embedding"] and params["precision"] == "int4":
        options.append("op_types_to_quantize=MatMul/Gather")  # the embedding as 4-bit GatherBlockQuantized
    return ["-p", str(params["precision"]), "-e", "cpu", "--extra_options", *options]


def builder_command(hf_folder: Path, out_dir: Path, cache_dir: Path, params: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out_dir),
            "-c", str(cache_dir), *builder_arguments(params)]


def _run_builder(ctx: BuildContext, command: list[str]) -> None:
    from ...errors import BuildError

    # cwd: `python -m` puts the working folder first on sys.path; the fresh build folder shadows nothing
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ctx.out_dir)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        sys.stdout.write(line)  # its chatter (a line per tensor and per percent): the run's build log
    if process.wait() != 0:
        tail = "".join(lines[-15:]).rstrip()
        raise BuildError(f"onnxruntime-genai's model builder exited with {process.returncode}; its last lines:\n{tail}")


def _keep_only_the_artifact(out_dir: Path) -> None:
    import shutil

    for entry in out_dir.iterdir():
        if entry.name in KEPT_FILES:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def graph_facts(model_path: Path) -> dict[str, Any]:
    """Counts of the fused operators in the written graph, for the manifest."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    counts = {op: sum(1 for n in nodes if n.op_type == op) for op in FUSED_OPS}
    return {"fused_ops": {op: n for op, n in counts.items() if n}, "graph_nodes": len(nodes)}
