"""A tiny Llama-shaped causal LM with a real BPE tokenizer, built from nothing in seconds.

Tests use it to drive the real export, quantization, runner and plugin code fast. Its weights
are random (seeded), so its perplexity is near its vocabulary size: tests check relations
between numbers (int4 vs fp32, model vs itself), never a literal value.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VOCAB = 384


def train_tokenizer(text: str):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def build_tiny_llama(folder: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a transformers folder (config, safetensors, tokenizer) that AutoModel can load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from edgegate.evaldata import EVAL_TOPICS, PROMPT_TOPICS, english_text

    tokenizer = train_tokenizer(english_text(EVAL_TOPICS + PROMPT_TOPICS))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    return folder


def build_suite(suite_file: Path, cache: Path) -> dict:
    """Every variant of ``suite_file`` built through the real factory into ``cache``, by name."""
    from edgegate.suites import load_suite
    from edgegate.variants.factory import VariantFactory

    suite = load_suite(suite_file)
    factory = VariantFactory(suite, cache)
    return {variant.name: factory.artifact(variant) for variant in suite.variants}


def build_on_tiny(folder: Path, tiny_model_dir: Path, cache: Path, variants: str) -> dict:
    """Variants of the tiny model built through the real factory into ``cache``: the session's shared
    cache, so another test (a pytest run over the same recipe and params) finds them built.
    ``variants`` is the suite's ``variants:`` mapping in YAML flow style."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model_dir, folder / "tiny_model", dirs_exist_ok=True)
    reference = variants.strip("{ ").split(":", 1)[0]
    (folder / "suite.yaml").write_text(f"schema: 1\nname: tiny_built\nbase_model: {{kind: hf_dir, path: tiny_model}}\n"
                                       f"reference: {reference}\nvariants: {variants}\n")
    return build_suite(folder / "suite.yaml", cache)
