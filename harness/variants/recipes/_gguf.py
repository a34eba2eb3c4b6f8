"""GGUF files for llama.cpp, shared by the gguf_* recipes (a module starting with _ is no recipe).

- An F32 GGUF of the base model's fp32 weights: from a GGUF base, every tensor dequantized with
  gguf-py and every metadata key copied (file type set to F32); from a transformers
  LlamaForCausalLM folder, written as llama.cpp's converter writes the llama architecture: its
  tensor names, Q and K rows permuted from Hugging Face's rotate-half layout to the interleaved
  pairs llama.cpp's rope rotates, and a GPT-2 style BPE vocabulary from tokenizer.json.
- llama.cpp's own quantizer (``llama_model_quantize``) from that F32 file to a type.
- The facts read back from a written GGUF: width class, tensor types, bytes read per token.
- The checks a build makes by opening the runner's llama.cpp backend on the file: its logits
  against the fp32 torch model's, and llama.cpp's tokenizer against tokenizer.json.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError
from ._context import TOKENIZER_FILE, BuildContext

# Quantization types a suite may ask for -> (the report's width class, what the report says).
TYPES: dict[str, tuple[str, str]] = {
    "F32": ("fp32", "F32 (llama.cpp, unquantized)"),
    "F16": ("fp16", "F16 (llama.cpp half precision; norms stay F32)"),
    "BF16": ("fp16", "BF16 (llama.cpp bfloat16; norms stay F32)"),
    "Q8_0": ("int8", "Q8_0 (llama.cpp, 8-bit blocks of 32 with one fp16 scale)"),
    "Q6_K": ("int8", "Q6_K (llama.cpp k-quant, 6-bit)"),
    "Q5_K_M": ("int4", "Q5_K_M (llama.cpp k-quant, mixed 5/6-bit)"),
    "Q5_0": ("int4", "Q5_0 (llama.cpp, 5-bit blocks of 32 with one fp16 scale)"),
    "Q4_K_M": ("int4", "Q4_K_M (llama.cpp k-quant, mixed 4/6-bit)"),
    "Q4_K_S": ("int4", "Q4_K_S (llama.cpp k-quant, 4-bit)"),
    "Q4_1": ("int4", "Q4_1 (llama.cpp, 4-bit blocks of 32 with an fp16 scale and minimum)"),
    "Q4_0": ("int4", "Q4_0 (llama.cpp, 4-bit blocks of 32 with one fp16 scale)"),
}
CHECK_TOKENS = 64  # the load check's prompt
# An F32 file's largest |logit - torch's| as a share of torch's largest |logit|. Measured on
# SmolLM2-135M: 3.4e-4, from llama.cpp's f16 KV cache and flash attention (1.5e-6 with both off).
F32_MAX_DIFF_SHARE = 1e-3
QUANTIZED_MIN_TOP1 = 0.5  # a quantized file's top-1 agreement with torch: a sanity bound only
_EMBEDDING, _OUTPUT = "token_embd.weight", "output.weight"


def type_name(ctx: BuildContext) -> str:
    """The ``type`` parameter, checked against ``TYPES``."""
    name = str(ctx.params["type"]).upper()
    if name not in TYPES:
        raise ctx.config_error("type", f"must be one of {', '.join(TYPES)}, got {ctx.params['type']!r}")
    return name


# --- the F32 file ---------------------------------------------------------------------------

def dequantized_copy(source: Path, out: Path) -> None:
    """``source`` with every tensor in F32 and every metadata key kept (general.file_type: F32)."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    writer.data_alignment = reader.alignment
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue  # the header, the key the writer adds itself, and the one set below
        if len(field.types) > 2:
            raise BuildError(f"{source.name}: metadata key {name} is a nested array, which this copy does not handle")
        writer.add_key_value(name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.ascontiguousarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type)))
    _write(writer)


def llama_folder_copy(model: Any, tokenizer_json: Path, out: Path) -> None:
    """A transformers LlamaForCausalLM (fp32, in memory) as an F32 GGUF llama.cpp loads."""
    import gguf

    config = model.config
    _check_plain_llama(model)
    writer = gguf.GGUFWriter(out, "llama")
    _llama_metadata(writer, config)
    _bpe_vocabulary(writer, tokenizer_json, int(config.vocab_size))
    for name, weight in _llama_tensors(model):
        writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    _write(writer)


def _check_plain_llama(model: Any) -> None:
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    problems = [what for what, wrong in (
        (f"architecture {type(model).__name__}", type(model).__name__ != "LlamaForCausalLM"),
        ("biases in attention or MLP", getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)),
        (f"rope scaling {rope.get('rope_type')}", rope.get("rope_type", "default") != "default"),
        (f"activation {config.hidden_act}", config.hidden_act != "silu"),
    ) if wrong]
    if problems:
        raise BuildError(f"gguf: the GGUF writer handles a plain LlamaForCausalLM; this model has {', '.join(problems)}")


def _llama_metadata(writer: Any, config: Any) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(str(getattr(config, "name_or_path", "") or "llama"))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_key_length(int(head_dim))
    writer.add_value_length(int(head_dim))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _llama_tensors(model: Any) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp tensor name, fp32 array) for every weight; the head only when it is not tied."""
    config = model.config
    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    tensors = [(_EMBEDDING, state["model.embed_tokens.weight"]), ("output_norm.weight", state["model.norm.weight"])]
    if not config.tie_word_embeddings:
        tensors.append((_OUTPUT, state["lm_head.weight"]))
    for i in range(int(config.num_hidden_layers)):
        hf = f"model.layers.{i}."
        tensors += [
            (f"blk.{i}.attn_norm.weight", state[hf + "input_layernorm.weight"]),
            (f"blk.{i}.attn_q.weight", rope_permute(state[hf + "self_attn.q_proj.weight"], heads)),
            (f"blk.{i}.attn_k.weight", rope_permute(state[hf + "self_attn.k_proj.weight"], kv_heads)),
            (f"blk.{i}.attn_v.weight", state[hf + "self_attn.v_proj.weight"]),
            (f"blk.{i}.attn_output.weight", state[hf + "self_attn.o_proj.weight"]),
            (f"blk.{i}.ffn_norm.weight", state[hf + "post_attention_layernorm.weight"]),
            (f"blk.{i}.ffn_gate.weight", state[hf + "mlp.gate_proj.weight"]),
            (f"blk.{i}.ffn_up.weight", state[hf + "mlp.up_proj.weight"]),
            (f"blk.{i}.ffn_down.weight", state[hf + "mlp.down_proj.weight"]),
        ]
    return tensors


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection from rotate-half order (each head's first half, then its second)
    to interleaved pairs, as llama.cpp's converter does for the llama architecture."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _bpe_vocabulary(writer: Any, tokenizer_json: Path, vocab_size: int) -> None:
    """A byte-level BPE vocabulary (GPT-2's pre-tokenizer regex) from tokenizer.json."""
    import gguf

    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise BuildError(f"{tokenizer_json}: the GGUF writer handles a byte-level BPE with GPT-2's pre-tokenizer; "
                         f"this one is {model.get('type')} after {pre.get('type')}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in model["vocab"].items():
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    special = {}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        special[added["content"]] = added["id"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's regex, the one ByteLevel uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for token, setter in (("<s>", writer.add_bos_token_id), ("</s>", writer.add_eos_token_id),
                          (model.get("unk_token"), writer.add_unk_token_id)):
        if token in special:
            setter(special[token])
    writer.add_add_bos_token(False)  # tokenizer.json adds no BOS either; the host feeds ids anyway


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- llama.cpp's quantizer ------------------------------------------------------------------

def quantize(source: Path, out: Path, name: str) -> None:
    """llama.cpp's quantizer from an F32 GGUF to type ``name`` (one of ``TYPES``)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0 or not out.is_file():
        raise BuildError(f"llama.cpp's quantizer ({name}) returned {code} for {source.name}")


# --- facts of a written file ----------------------------------------------------------------

def file_facts(path: Path) -> dict[str, Any]:
    """The width class (the file type's, else the nearest to its bits per weight), the tensor
    types and the weight bytes read per decoded token of a GGUF."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    matrices = [t for t in reader.tensors if len(t.shape) >= 2]
    bits = 8 * sum(t.n_bytes for t in matrices) / sum(t.n_elements for t in matrices)
    field = reader.fields.get("general.file_type")
    known = {int(t): t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType}
    file_type = known.get(field.contents(), "unknown") if field is not None else "unknown"
    return {
        "file_type": file_type,
        "precision": TYPES[file_type][0] if file_type in TYPES else _width_class(bits),
        "bits_per_weight": round(bits, 2),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        "weight_bytes_per_token": _bytes_per_token(tensors),
    }


def _width_class(bits: float) -> str:
    """The nearest of the report's classes by bits per matrix weight (Q4_1: 5.0 -> int4, Q6_K: 6.6 -> int8)."""
    classes = {"fp32": 32.0, "fp16": 16.0, "int8": 8.5, "int4": 4.5}
    return min(classes, key=lambda name: abs(np.log2(classes[name] / bits)))


def _bytes_per_token(tensors: dict[str, Any]) -> int:
    """Every tensor's bytes except the embedding table, of which one row is gathered; a model
    without output.weight ties its head to the embedding, read whole for the logits."""
    total = sum(t.n_bytes for name, t in tensors.items() if name != _EMBEDDING)
    embedding = tensors[_EMBEDDING]
    if _OUTPUT not in tensors:
        return int(total + embedding.n_bytes)
    return int(total + embedding.n_bytes // int(embedding.shape[-1]))


# --- checks against torch and tokenizer.json ------------------------------------------------

def keep_tokenizer(ctx: BuildContext, tokenizer: Any) -> Path:
    """The base model's fast tokenizer as tokenizer.json, nothing else of it."""
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in ctx.out_dir.iterdir():
        if extra.name != TOKENIZER_FILE and extra.suffix != ".gguf":
            extra.unlink()
    return ctx.out_dir / TOKENIZER_FILE


def check_logits(path: Path, model: Any, tokenizer_json: Path, exact: bool) -> str:
    """Open the runner's llama.cpp backend on ``path`` and compare its logits with torch's on a
    real-text prompt: an F32 file near exactly, a quantized one by top-1 agreement only."""
    import torch
    from tokenizers import Tokenizer

    from ...evaldata import PROMPT_TOPICS, english_text
    from ...runner.backends.llama_cpp import LlamaCppBackend

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(english_text(PROMPT_TOPICS), add_special_tokens=False).ids
    prompt = np.asarray([ids[:CHECK_TOKENS]], dtype=np.int64)
    with torch.no_grad():
        expected = model(torch.from_numpy(prompt)).logits[0].float().numpy()
    backend = LlamaCppBackend(str(path), [], 0)
    try:
        got = backend.step(prompt, backend.empty_past(), 0)[0][0]
    finally:
        backend.close()
    top1 = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    figures = (f"top-1 agreement {top1:.3f} and max |logit diff| {diff:.2g} (largest |logit| {scale:.3g}) "
               f"with torch fp32 on {prompt.shape[1]} tokens")
    if exact and diff > F32_MAX_DIFF_SHARE * scale:
        raise BuildError(f"{path.name}: llama.cpp's logits are not those of the fp32 model: {figures} "
                         f"(bound {F32_MAX_DIFF_SHARE:g} of the largest)")
    if top1 < QUANTIZED_MIN_TOP1:
        raise BuildError(f"{path.name}: llama.cpp's logits differ grossly from the fp32 model's: {figures} "
                         f"(bound top-1 >= {QUANTIZED_MIN_TOP1})")
    return figures


def check_tokenizer(path: Path, tokenizer_json: Path) -> str:
    """llama.cpp's tokenizer (the GGUF's own vocabulary, no BOS) against tokenizer.json on real text."""
    from tokenizers import Tokenizer

    from ...evaldata import EVAL_TOPICS, PROMPT_TOPICS, english_text

    text = english_text(EVAL_TOPICS + PROMPT_TOPICS)
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    expected = tokenizer.encode(text, add_special_tokens=False).ids
    got = llama_tokenize(path, text)
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pre = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
        raise BuildError(f"{path.name}: llama.cpp tokenizes the evaluation text differently from tokenizer.json: "
                         f"{len(got)} vs {len(expected)} ids, first difference at id {at}, in "
                         f"{tokenizer.decode(expected[max(at - 3, 0):at + 3])!r} ({got[at:at + 4]} vs "
                         f"{expected[at:at + 4]}); the GGUF's pre-tokenizer is {_metadata(path, 'tokenizer.ggml.pre')!r}, "
                         f"tokenizer.json's {pre.get('type')}")
    return f"identical ids on {len(expected):,} tokens"


def _metadata(path: Path, key: str) -> Any:
    import gguf

    field = gguf.GGUFReader(path).fields.get(key)
    return field.contents() if field is not None else None


def llama_tokenize(path: Path, text: str) -> list[int]:
    """llama.cpp's ids for ``text`` from the GGUF's vocabulary alone (no BOS, special tokens as text)."""
    import logging

    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise BuildError(f"llama.cpp could not load the vocabulary of {path.name}")
    try:
        data = text.encode("utf-8")
        room = len(data) + 16
        ids = (llama_cpp.llama_token * room)()
        count = llama_cpp.llama_tokenize(llama_cpp.llama_model_get_vocab(model), data, len(data), ids, room,
                                         False, False)
        if count < 0:
            raise BuildError(f"llama.cpp's tokenizer needs {-count} ids for {len(data)} bytes")
        return list(ids[:count])
    finally:
        llama_cpp.llama_model_free(model)
