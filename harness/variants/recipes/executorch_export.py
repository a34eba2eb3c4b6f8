"""The base model as an ExecuTorch program (``model.pte``, XNNPACK delegate), in fp32 or with
torchao's int8-dynamic-activation quantization (8da8w, 8da4w).

The graph is transformers' ``TorchExportableModuleForDecoderOnlyLM`` around a static KV cache of
``max_cache_len`` positions: one method ``forward(input_ids [1, n], cache_position [n])`` returns
logits for every position and writes the keys and values into the program's mutable buffers (the
runner's ``executorch`` backend says how it carries them). ``n`` is a dynamic dimension up to
``max_cache_len``, so one method serves prefill, decode and the accuracy windows.

Pitfalls met on the way:
- strict export (dynamo): ``strict=False`` lifts the cache buffers as constants, and lowering then
  fails in ExecuTorch's AOTDedupe pass.
- 8da8w is per output channel whatever ``group_size`` says: XNNPACK's dynamically quantized
  linear has group-wise (blockwise) weights for 4 bits only; ``group_size`` shapes 8da4w. XNNPACK keeps group scales in bf16 and channel scales in fp32; weights are symmetric
  (no zero points), as ``weight_bytes_per_token`` counts them.
- quantization replaces only ``nn.Linear`` weights: the token embedding stays fp32 (a gather in
  ExecuTorch's portable kernels), and the LM head is untied from it first so the head is
  quantized while the embedding keeps its fp32 rows.
- ``max_cache_len`` (320): the static cache is as long as the longest sequence a measurement runs
  from an empty cache, the default suite's 257-token accuracy window (prefill is 128 positions,
  decode 64 + 32 = 96; each starts again at position 0), rounded up to a multiple of 64. Not more:
  every step attends over the whole static cache (positions past the sequence are masked, not
  skipped) and expands its keys and values for the grouped-query heads, so a longer cache makes
  every decode step do more work.
- what stays outside XNNPACK (``portable_ops`` in the facts): the RMS-norm means, the cache writes
  (index_put), the mask arithmetic and those expand copies; they split each layer into about ten
  delegate calls (SmolLM2: 333).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import export
from ._context import TOKENIZER_FILE, BuildContext

NAME = "executorch_export"
PARENT = None
TOOLS = ("executorch", "torchao", "torch", "transformers", "gguf")
USES = (export,)
DEFAULTS: dict[str, Any] = {"quantization": "none", "group_size": 32, "max_cache_len": 320}
RUNTIME = "executorch"
MODEL_FILE = "model.pte"
QUANTIZATIONS = {"none": "fp32", "8da8w": "int8", "8da4w": "int4"}
CHECK_TOKENS = 32  # the load check's prompt: the first 24 prefilled, the last 8 decoded one by one
PREFILLED = 24
FP32_TOLERANCE = 1e-3  # of the largest |logit|: XNNPACK's fp32 kernels sum in another order than torch
MIN_TOP1 = 0.5  # a quantized build's sanity bound on agreement with the fp32 torch model


def build(ctx: BuildContext) -> dict[str, Any]:
    from ..base_models import load_for_export

    _check(ctx)
    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    model, tokenizer = load_for_export(ctx.base)
    export.untie_lm_head(model)
    check_ids = _check_ids(tokenizer)
    reference = _torch_logits(model, check_ids)
    quantization = ctx.params["quantization"]
    if quantization != "none":
        _check_group_size(ctx, model)
        ctx.log(f"quantizing the linear layers with torchao ({scheme(ctx.params)})")
        quantize(model, quantization, int(ctx.params["group_size"]))
    weight_bytes = weight_bytes_per_token(model)
    ctx.log("exporting (strict torch.export) and lowering to XNNPACK; this takes minutes for a real model")
    program, delegated = lower(model, int(ctx.params["max_cache_len"]))
    with (ctx.out_dir / MODEL_FILE).open("wb") as file:
        program.write_to_file(file)
    _keep_only_the_fast_tokenizer(ctx, tokenizer)
    return {"precision": QUANTIZATIONS[quantization], "scheme": scheme(ctx.params),
            "weight_bytes_per_token": weight_bytes, "max_cache_len": int(ctx.params["max_cache_len"]),
            "load_check": _load_check(ctx, check_ids, reference), **delegated}


def scheme(params: dict[str, Any]) -> str:
    quantization, group = params["quantization"], int(params["group_size"])
    if quantization == "none":
        return "fp32 (XNNPACK fp32 kernels)"
    if quantization == "8da8w":
        weights = "int8 weights per output channel"
    else:
        weights = f"int4 weights in groups of {group}"
    return (f"{quantization}: int8 dynamic activations per token, {weights} (torchao, XNNPACK); "
            f"token embedding fp32")


def _check(ctx: BuildContext) -> None:
    if ctx.base.task != "causal_lm":
        raise ctx.not_applicable(NAME, f"it builds decoder LLMs; this base model is a {ctx.base.task}")
    if ctx.params["quantization"] not in QUANTIZATIONS:
        raise ctx.config_error("quantization", f"must be one of {', '.join(QUANTIZATIONS)}, "
                                               f"got {ctx.params['quantization']!r}")
    if int(ctx.params["max_cache_len"]) < CHECK_TOKENS:
        raise ctx.config_error("max_cache_len", f"must hold at least the load check's {CHECK_TOKENS} positions")


def _check_group_size(ctx: BuildContext, model: Any) -> None:
    import torch

    group = int(ctx.params["group_size"])
    if ctx.params["quantization"] != "8da4w":
        return
    widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
    odd = [width for width in widths if width % group]
    if odd:
        raise ctx.config_error("group_size", f"{group} does not divide the input width of every linear layer "
                                             f"({', '.join(map(str, odd))})")


def _check_ids(tokenizer: Any) -> list[int]:
    from ...evaldata import PROMPT_TOPICS, english_text

    ids = tokenizer(english_text(PROMPT_TOPICS), add_special_tokens=False)["input_ids"][:CHECK_TOKENS]
    return [int(i) for i in ids]


def _torch_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


def quantize(model: Any, quantization: str, group_size: int) -> None:
    """torchao's int8-dynamic-activation, int-x weight config on every ``nn.Linear``, in place."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    eight = quantization == "8da8w"
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8 if eight else torch.int4,
                                                   weight_granularity=PerAxis(0) if eight else PerGroup(group_size))
    quantize_(model, config)


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter as the program stores it, but one
    row of the token embedding (the LM head, untied, is read whole)."""
    embedding = model.get_input_embeddings()
    total = 0
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if module is embedding:
                total += parameter[0].numel() * parameter.element_size()
            else:
                total += stored_bytes(parameter)
    return int(total)


def stored_bytes(tensor: Any) -> int:
    """A parameter's bytes in the .pte: a torchao int-x weight at its bit width with its scales
    (bf16 per group, fp32 per channel: what XNNPACK's serializer writes), a plain one as is."""
    qdata = getattr(tensor, "qdata", None)
    if qdata is None:
        return tensor.numel() * tensor.element_size()
    bits = int(str(tensor.target_dtype).removeprefix("torch.int"))
    per_group = tensor.block_size[-1] < qdata.shape[-1]
    return qdata.numel() * bits // 8 + tensor.scale.numel() * (2 if per_group else 4)


def lower(model: Any, max_cache_len: int) -> tuple[Any, dict[str, Any]]:
    """(the ExecuTorch program, facts on what XNNPACK took and what stayed in portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower

    exported = _export(model, max_cache_len)
    # the names ExecuTorch's LLM runners read; the runner's backend reads the context length
    lengths = {"get_max_seq_len": max_cache_len, "get_max_context_len": max_cache_len}
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], constant_methods=lengths)
    facts = _delegation(edge.exported_program().graph_module.graph)  # before to_executorch rewrites it
    return edge.to_executorch(), facts


def _export(model: Any, max_cache_len: int) -> Any:
    import torch
    from transformers.integrations.executorch import (
        TorchExportableModuleForDecoderOnlyLM,
    )

    model.generation_config.cache_implementation = "static"
    module = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache_len)
    positions = torch.export.Dim("positions", min=1, max=max_cache_len)
    example = torch.zeros((1, 2), dtype=torch.long)  # 2, not 1: export would specialize a size of 1
    with torch.no_grad():
        return module.export(input_ids=example, cache_position=torch.arange(2, dtype=torch.long),
                             dynamic_shapes={"input_ids": {1: positions}, "cache_position": {0: positions}},
                             strict=True)


def _delegation(graph: Any) -> dict[str, Any]:
    names = [getattr(node.target, "__name__", str(node.target)) for node in graph.nodes if node.op == "call_function"]
    delegated = sum(1 for name in names if name == "executorch_call_delegate")
    others: dict[str, int] = {}
    for name in names:
        if name not in ("executorch_call_delegate", "getitem", "sym_size.int"):
            others[name] = others.get(name, 0) + 1
    return {"xnnpack_partitions": delegated, "portable_ops": dict(sorted(others.items()))}


def _load_check(ctx: BuildContext, ids: list[int], reference: Any) -> str:
    """Run the written program with the runner's own backend: the first tokens as one prefill,
    the rest one by one on its KV cache; compare every position with the fp32 torch model."""
    import numpy as np

    from ...errors import BuildError
    from ...runner.backends.executorch import ExecuTorchBackend

    try:
        backend = ExecuTorchBackend(str(ctx.out_dir / MODEL_FILE), [], 0)
        logits = _run(backend, ids)
    except Exception as exc:  # noqa: BLE001 - the runtime raises its own untyped failures
        raise BuildError(f"{ctx.params_field}: ExecuTorch cannot run the program it wrote: {str(exc)[:300]}") from None
    worst = float(np.max(np.abs(logits - reference)))
    top1 = float(np.mean(np.argmax(logits, axis=-1) == np.argmax(reference, axis=-1)))
    where = f"{len(ids)} positions ({PREFILLED} prefilled, {len(ids) - PREFILLED} decoded)"
    if ctx.params["quantization"] == "none":
        bound = FP32_TOLERANCE * float(np.max(np.abs(reference)))
        if worst > bound:
            raise BuildError(f"{ctx.params_field}: the fp32 program's logits differ from torch's by {worst:.3g} "
                             f"(bound {bound:.3g}) over {where}")
        return f"max |logit - torch fp32| {worst:.2g} (bound {bound:.2g}), top-1 agreement {top1:.2f} over {where}"
    if top1 < MIN_TOP1:
        raise BuildError(f"{ctx.params_field}: the quantized program agrees with the fp32 model on the next token "
                         f"at {top1:.2f} of {where} (sanity bound {MIN_TOP1})")
    return f"top-1 agreement with torch fp32 {top1:.2f} (bound {MIN_TOP1}), max |logit diff| {worst:.2g} over {where}"


def _run(backend: Any, ids: list[int]) -> Any:
    import numpy as np

    prefilled = min(PREFILLED, len(ids) - 1)
    logits, past, _ = backend.step(np.asarray([ids[:prefilled]], dtype=np.int64), backend.empty_past(), 0)
    rows = [np.array(logits[0])]
    for position in range(prefilled, len(ids)):
        logits, past, _ = backend.step(np.asarray([[ids[position]]], dtype=np.int64), past, position)
        rows.append(np.array(logits[0]))
    return np.concatenate(rows)


def _keep_only_the_fast_tokenizer(ctx: BuildContext, tokenizer: Any) -> None:
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in Path(ctx.out_dir).iterdir():
        if extra.name not in (TOKENIZER_FILE, MODEL_FILE):
            extra.unlink()
