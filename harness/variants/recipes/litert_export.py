"""A LiteRT (.tflite) decoder written by litert-torch's Hugging Face exporter, in fp32 or with
int8 weights (ai-edge-quantizer's ``dynamic_wi8_afp32``).

The base model is loaded with transformers (a GGUF dequantized to fp32) and saved as a plain
Hugging Face folder, which the exporter loads itself: it swaps in its own attention (K cache
[1, kv_heads, cache, head_dim], V cache transposed [1, kv_heads, head_dim, cache]) and writes
one file whose signatures share the weights:

- ``prefill_N`` for each prefill length: N tokens, the cache in and out, and the logits of one
  position, named by the caller (``logit_positions``). The exporter's own prefill returns the
  last position's only (or none), which after padding a shorter input is a pad token's.
- ``score_W`` (W = ``score_length``): W tokens and every position's logits, for the accuracy
  windows in one call instead of W decode calls.
- ``decode``: one token.

The caller builds the additive mask [1, 1, tokens, cache] and carries the KV cache between calls
(runner/backends/litert.py). The cache has a fixed length: the exporter writes a new slice with
tfl.dynamic_update_slice, which moves a slice that would run past the end back inside it, so
the backend refuses what does not fit.

litert-torch 0.10 imports ``tensorflow.lite.python.schema_py_generated`` (for models this recipe
never builds) without declaring tensorflow; ai-edge-litert ships the same generated module, which
is aliased under that name while litert-torch is imported. Importing litert-torch also swaps
transformers' RMSNorm for its own (an ``odml.rms_norm`` composite, read by GPU and NPU compilers)
in modeling modules imported after it, process-wide: the export runs in a child process so that
no later recipe of the same run exports with it.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._context import TOKENIZER_FILE, BuildContext

NAME = "litert_export"
PARENT = None
TOOLS = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch", "transformers", "gguf")
RUNTIME = "litert"
MODEL_FILE = "model.tflite"
DEFAULTS: dict[str, Any] = {
    "quantization": "none",
    # 64 and 128: the suite's decode prompt and prefill prompt, run unpadded; a shorter input is
    # padded up to the next length, a longer one runs in chunks.
    "prefill_lengths": [64, 128],
    "score_length": 257,  # the suite's accuracy window: all its logits in one call
    # At least 257 + 64 + 32: the 257-token window and the 64+32-token decode each fit from an
    # empty cache (and would in one sequence). Every decode step attends over the whole cache,
    # masked, so a longer one costs time for nothing.
    "cache_length": 384,
}
QUANTIZATIONS = {
    "none": ("fp32", "fp32 weights and activations"),
    "dynamic_wi8_afp32": ("int8", ("dynamic_wi8_afp32 (ai-edge-quantizer): int8 symmetric per-channel weights, "
                                   "fp32 activations quantized to int8 at run time for the matmuls")),
}
CHECK_TOKENS = 32  # positions compared with torch at build time
FP32_BOUND = 1e-3  # max |LiteRT - torch| over the logits' largest magnitude, fp32
INT8_MIN_TOP1 = 0.5  # top-1 agreement with torch over CHECK_TOKENS positions, int8


def build(ctx: BuildContext) -> dict[str, Any]:
    quantization = _check(ctx)
    hf_folder = ctx.out_dir / "hf_fp32"
    reference = _write_hf_folder(ctx, hf_folder)
    ctx.log(f"converting with litert-torch (prefill {ctx.params['prefill_lengths']}, score "
            f"{ctx.params['score_length']}, cache {ctx.params['cache_length']}, quantization {quantization})")
    model_file = ctx.out_dir / MODEL_FILE  # not ctx.out_model, which names an ONNX file
    shutil.move(str(_export(ctx, hf_folder, quantization)), model_file)
    _keep_only_the_artifact(ctx.out_dir, MODEL_FILE)
    precision, scheme = QUANTIZATIONS[quantization]
    facts: dict[str, Any] = {"precision": precision, "scheme": scheme}
    facts.update(file_facts(model_file))
    facts["load_check"] = _load_check(model_file, reference, precision)
    return facts


def _check(ctx: BuildContext) -> str:
    params = ctx.params
    if ctx.base.task != "causal_lm":
        raise ctx.not_applicable(NAME, f"it builds decoder LLMs; this base model is a {ctx.base.task}")
    if params["quantization"] not in QUANTIZATIONS:
        raise ctx.config_error("quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {params['quantization']!r}")
    lengths = params["prefill_lengths"]
    if not isinstance(lengths, list) or not lengths or not all(isinstance(n, int) and n > 1 for n in lengths):
        raise ctx.config_error("prefill_lengths", f"must be a list of whole numbers over 1, got {lengths!r}")
    cache = params["cache_length"]
    for key in ("score_length", "cache_length"):
        if not isinstance(params[key], int) or params[key] < 2:
            raise ctx.config_error(key, f"must be a whole number over 1, got {params[key]!r}")
    if max([*lengths, params["score_length"]]) > cache:
        raise ctx.config_error("cache_length", f"{cache} is shorter than the longest prefill or score length")
    return str(params["quantization"])


def _write_hf_folder(ctx: BuildContext, folder: Path) -> dict[str, Any]:
    """Save the fp32 model for the exporter; return torch's logits on a real text for the load check."""
    import torch

    from ...evaldata import PROMPT_TOPICS, english_text
    from ..base_models import load_for_export, save_hf_folder

    ctx.log("loading the base model with transformers (a GGUF is dequantized to fp32)")
    model, tokenizer = load_for_export(ctx.base)
    save_hf_folder(model, tokenizer, folder)
    tokenizer.save_pretrained(ctx.out_dir)
    ids = tokenizer(english_text(PROMPT_TOPICS))["input_ids"][:CHECK_TOKENS]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    return {"ids": ids, "logits": logits}


@contextlib.contextmanager
def tensorflow_schema_alias() -> Iterator[None]:
    """Let ``from tensorflow.lite.python import schema_py_generated`` find ai-edge-litert's copy
    while litert-torch is imported (it needs nothing else of tensorflow); removed afterwards, so
    nothing later takes the stand-in for tensorflow."""
    try:
        import tensorflow  # noqa: F401 - a real tensorflow serves the import itself
        yield
        return
    except ImportError:
        pass
    from ai_edge_litert import schema_py_generated

    names = ("tensorflow", "tensorflow.lite", "tensorflow.lite.python")
    added = {name: types.ModuleType(name) for name in names if name not in sys.modules}
    sys.modules.update(added)
    sys.modules["tensorflow.lite.python"].schema_py_generated = schema_py_generated  # type: ignore[attr-defined]
    sys.modules.setdefault("tensorflow.lite.python.schema_py_generated", schema_py_generated)
    try:
        yield
    finally:
        for name in [*added, "tensorflow.lite.python.schema_py_generated"]:
            if sys.modules.get(name) in (*added.values(), schema_py_generated):
                del sys.modules[name]


def _export(ctx: BuildContext, hf_folder: Path, quantization: str) -> Path:
    """Run the exporter in a process of its own: importing litert-torch swaps transformers' RMSNorm
    process-wide, which would change what a later recipe in this process exports (and the
    exporter's 4 GB peak is returned to the system when it exits)."""
    import json
    import subprocess

    work = ctx.out_dir / "litert_work"
    work.mkdir()
    settings = {"hf_folder": str(hf_folder), "work": str(work), "quantization": quantization,
                "prefill_lengths": list(ctx.params["prefill_lengths"]),
                "cache_length": int(ctx.params["cache_length"]), "score_length": int(ctx.params["score_length"])}
    code = f"import sys; from {__name__} import export_here; print(export_here(sys.stdin.read()))"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(settings), capture_output=True, text=True)
    if done.returncode != 0:
        from ...errors import BuildError

        raise BuildError(f"{NAME}: litert-torch's export failed: {done.stderr.strip()[-800:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def export_here(settings_json: str) -> str:
    """The exporter's prefill/decode task with this recipe's signatures (in the child process); the written file."""
    import json
    from unittest import mock

    import torch._dynamo  # noqa: F401 - it looks for tensorflow when imported: before the stand-in exists

    settings = json.loads(settings_json)
    with tensorflow_schema_alias():
        from litert_torch.generative.export_hf import export as export_hf
        from litert_torch.generative.export_hf.core import export_lib, exportable_module

    quantization = settings["quantization"]
    config = exportable_module.ExportableModuleConfig(
        model=settings["hf_folder"], output_dir=settings["work"], work_dir=settings["work"], keep_temporary_files=True,
        prefill_lengths=settings["prefill_lengths"], cache_length=settings["cache_length"],
        quantization_recipe=None if quantization == "none" else quantization, bundle_litert_lm=False,
        prefill_logits=True)
    modules = _signature_modules(exportable_module, settings["score_length"])
    with mock.patch.object(export_lib, "get_prefill_decode_exportable_cls", lambda *_: modules):
        artifacts = export_hf.run_export_tasks([export_lib.export_text_prefill_decode_model], config)
    return str(artifacts.prefill_decode_model_path)


def _signature_modules(exportable_module: Any, score_length: int) -> tuple[type, type]:
    """(prefill-and-score module, decode module): the exporter's, with the prefill adapted."""
    import torch

    class PrefillAndScore(exportable_module.LiteRTExportableModuleForDecoderOnlyLMPrefill):
        """prefill_N returns the logits at ``logit_positions`` (the last real token of a padded
        input); score_W, called without them, returns every position's."""

        def forward(self, tokens: Any, input_pos: Any, kv_cache: Any, mask: Any,
                    logit_positions: Any = None, **kwargs: Any) -> dict[str, Any]:
            inputs = self.adapt_inputs(tokens, None, input_pos, kv_cache, mask, **kwargs, **self.composite_flags())
            inputs |= self.attention_kwargs()
            inputs["logits_to_keep"] = 0 if logit_positions is None else logit_positions
            inputs["prefill_logits"] = True
            output = self.model(**inputs)
            return {"kv_cache": output.past_key_values, "logits": output.logits.to(torch.float32)}

        def get_sample_inputs(self, model_config: Any, **kwargs: Any) -> dict[str, Any]:
            samples = super().get_sample_inputs(model_config, **kwargs)
            adapted = {name: ({**inputs, "logit_positions": torch.zeros(1, dtype=torch.int32)}, shapes)
                       for name, (inputs, shapes) in samples.items()}
            template, _ = next(iter(samples.values()))
            cache_length = template["mask"].shape[-1]
            adapted[f"score_{score_length}"] = ({
                **template, "tokens": torch.ones((1, score_length), dtype=torch.int32),
                "input_pos": torch.arange(score_length, dtype=torch.int32),
                "mask": torch.zeros((1, 1, score_length, cache_length), dtype=torch.float32)}, {})
            return adapted

    return PrefillAndScore, exportable_module.LiteRTExportableModuleForDecoderOnlyLMGenerate


def _keep_only_the_artifact(out_dir: Path, model_file: str) -> None:
    for entry in out_dir.iterdir():
        if entry.name in (model_file, TOKENIZER_FILE):
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _load_check(model_file: Path, reference: dict[str, Any], precision: str) -> str:
    """Open the file with the runner's backend and compare its logits with torch's: every
    position through the score signature, and the last through prefill then decode."""
    import numpy as np

    from ...errors import BuildError
    from ...runner.backends.litert import LiteRTBackend

    try:
        backend = LiteRTBackend(str(model_file), [], 0)
        ids = np.asarray([reference["ids"]], dtype=np.int64)
        window = backend.window_logits(ids)
        stepped = _prefill_then_decode(backend, ids)
    except Exception as exc:  # noqa: BLE001 - the interpreter raises its own untyped failures
        raise BuildError(f"{NAME}: LiteRT cannot run the written {model_file.name}: {str(exc)[:300]}") from None
    want = reference["logits"]
    n = len(reference["ids"])
    if precision == "fp32":
        scale = float(np.abs(want).max())
        error = max(float(np.abs(window - want).max()), float(np.abs(stepped - want[-2:]).max())) / scale
        if not error <= FP32_BOUND:
            raise BuildError(f"{NAME}: LiteRT's logits differ from torch's by {error:.2e} of their largest "
                             f"magnitude on {n} positions (bound {FP32_BOUND:g})")
        return (f"LiteRT vs torch fp32 logits on {n} positions (score signature) and a prefill + decode step: "
                f"max |diff| {error:.1e} of the largest logit (bound {FP32_BOUND:g})")
    agree = float(np.mean(np.argmax(window, axis=1) == np.argmax(want, axis=1)))
    if not agree >= INT8_MIN_TOP1:
        raise BuildError(f"{NAME}: LiteRT's int8 model agrees with torch's top-1 token on {agree:.0%} of "
                         f"{n} positions (at least {INT8_MIN_TOP1:.0%} expected)")
    return f"top-1 agreement with torch fp32 on {n} positions: {agree:.2f} (bound {INT8_MIN_TOP1})"


def _prefill_then_decode(backend: Any, ids: Any) -> Any:
    """Logits [2, vocab] at the last two positions: a prefill of all but the last token, then one decode."""
    import numpy as np

    logits, past, _ = backend.step(ids[:, :-1], backend.empty_past(), 0)
    last, _, _ = backend.step(ids[:, -1:], past, ids.shape[1] - 1)
    return np.concatenate([logits[0, -1:], last[0, -1:]])


def file_facts(model_file: Path) -> dict[str, Any]:
    """Signatures and their lengths, and the bytes of weights one decode step reads, from the
    flatbuffer itself: every constant tensor of the decode signature (once per buffer), except
    a token-embedding table only looked up, of which one row is read."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_file.read_bytes(), 0)
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        signatures[signature.SignatureKey().decode()] = signature.SubgraphIndex()
    decode = model.Subgraphs(signatures["decode"])
    lookups, others = _constant_uses(model, decode, schema)
    total = sum(_buffer_bytes(model, decode, t) for t in others)
    for tensor in lookups - others:
        total += _buffer_bytes(model, decode, tensor) // max(1, int(decode.Tensors(tensor).Shape(0)))
    return {"signatures": {name: _signature_tokens(name) for name in signatures},
            "weight_bytes_per_token": int(total)}


def _constant_uses(model: Any, subgraph: Any, schema: Any) -> tuple[set[int], set[int]]:
    """(tensors used as an embedding table, other constant tensors) of a subgraph, one per buffer."""
    lookup_ops = {schema.BuiltinOperator.GATHER: 0, schema.BuiltinOperator.EMBEDDING_LOOKUP: 1}
    seen: dict[int, int] = {}  # buffer -> the first tensor on it
    lookups, others = set(), set()
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        for slot, tensor in enumerate(op.InputsAsNumpy()):
            if tensor < 0 or not _has_data(model, subgraph.Tensors(tensor).Buffer()):
                continue
            tensor = seen.setdefault(subgraph.Tensors(tensor).Buffer(), int(tensor))
            (lookups if lookup_ops.get(builtin) == slot else others).add(tensor)
    return lookups, others


def _has_data(model: Any, buffer_index: int) -> bool:
    buffer = model.Buffers(buffer_index)
    return buffer.DataLength() > 0 or buffer.Size() > 0


def _buffer_bytes(model: Any, subgraph: Any, tensor_index: int) -> int:
    """Stored bytes of a constant tensor: its buffer and its float32 quantization scales (not the
    zero points: int64 zeros for symmetric int8, which the kernels do not read)."""
    tensor = subgraph.Tensors(tensor_index)
    buffer = model.Buffers(tensor.Buffer())
    quantization = tensor.Quantization()
    extra = 0 if quantization is None else 4 * quantization.ScaleLength()
    return int(buffer.DataLength() or buffer.Size()) + extra


def _signature_tokens(name: str) -> int:
    """Tokens a signature takes per call: N for prefill_N and score_N, 1 for decode."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1
