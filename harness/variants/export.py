"""Turn a transformers model into the ONNX graph the runner expects.

A causal LM takes ``input_ids``, ``attention_mask`` and one ``past_key_values.{i}.key`` /
``.value`` pair per layer, and returns ``logits`` and ``present.{i}.key`` / ``.value``. The
runner discovers the layer count from these names, so any decoder exported here runs there.

A sentence encoder takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` and returns
``sentence_embedding`` (pooled and, where the model says so, L2-normalized inside the graph, so
the variant is self-contained) and ``last_hidden_state``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx

from .graph_passes import fold_transposed_weights

EXPORT_EXAMPLE_BATCH = 2  # a batch of 1 would freeze the batch dimension in the graph
EXPORT_EXAMPLE_SEQ = 5
EXPORT_EXAMPLE_PAST = 3
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODER_OUTPUTS = ("sentence_embedding", "last_hidden_state")


def export_causal_lm(model: Any, out_path: Path, opset: int = 18) -> None:
    """Export ``model`` (a transformers ``*ForCausalLM`` in eval mode) to ``out_path``."""
    import torch

    wrapper = _CausalLMWithPast(model)
    args, dynamic_shapes, input_names, output_names = _example_inputs(model.config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations, not the user's
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verify=False,
        )
    _save(program.model_proto, out_path)


def export_sentence_encoder(model: Any, pooling: str, normalize: bool, out_path: Path, opset: int = 18) -> None:
    """Export a transformers encoder (``BertModel`` and the like) with its pooling in the graph."""
    import torch

    wrapper = _PooledEncoder(model, pooling, normalize)
    ids = torch.randint(0, model.config.vocab_size, (EXPORT_EXAMPLE_BATCH, EXPORT_EXAMPLE_SEQ), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # a padded row, so the traced pooling is the masked one
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            wrapper,
            (ids, mask, torch.zeros_like(ids)),
            dynamo=True,
            opset_version=opset,
            input_names=list(ENCODER_INPUTS),
            output_names=list(ENCODER_OUTPUTS),
            dynamic_shapes=tuple({0: dyn, 1: dyn} for _ in ENCODER_INPUTS),
            optimize=True,
            verify=False,
        )
    _save(program.model_proto, out_path)


def _save(graph: onnx.ModelProto, out_path: Path) -> None:
    fold_transposed_weights(graph)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph, str(out_path), save_as_external_data=False)


def untie_lm_head(model: Any) -> None:
    """Give the LM head its own weight so quantizers see a MatMul with a constant weight.

    With tied embeddings the exporter computes the head as Transpose(embedding), which the
    onnxruntime quantizers skip; the head is the largest matrix of a small LLM.
    """
    import torch

    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() == embedding.weight.data_ptr():
        head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
        model.config.tie_word_embeddings = False


class _CausalLMWithPast:  # wrapped lazily so importing this module does not import torch
    def __new__(cls, model: Any) -> Any:
        import torch
        from transformers.cache_utils import DynamicCache

        class CausalLMWithPast(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, past_key_values: Any) -> Any:
                cache = DynamicCache(ddp_cache_data=past_key_values, config=self.inner.config)
                out = self.inner(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    past_key_values=cache,
                    use_cache=True,
                )
                presents = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
                return out.logits, presents

        return CausalLMWithPast(model).eval()


class _PooledEncoder:  # wrapped lazily so importing this module does not import torch
    def __new__(cls, model: Any, pooling: str, normalize: bool) -> Any:
        import torch

        class PooledEncoder(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).last_hidden_state
                pooled = _pool(hidden, attention_mask, pooling)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
                return pooled, hidden

        return PooledEncoder(model).eval()


def _pool(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """sentence-transformers' pooling: the mean over unmasked tokens, or the first ([CLS]) token."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _example_inputs(config: Any) -> tuple[tuple, dict, list[str], list[str]]:
    import torch

    n_layers = config.num_hidden_layers
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, seq, past = EXPORT_EXAMPLE_BATCH, EXPORT_EXAMPLE_SEQ, EXPORT_EXAMPLE_PAST
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), dtype=torch.int64)
    attention_mask = torch.ones((batch, past + seq), dtype=torch.int64)
    past_kv = tuple(
        (torch.randn(batch, n_kv, past, head_dim), torch.randn(batch, n_kv, past, head_dim))
        for _ in range(n_layers)
    )
    dyn = torch.export.Dim.DYNAMIC
    kv_shape = {0: dyn, 2: dyn}
    dynamic_shapes = (
        {0: dyn, 1: dyn},
        {0: dyn, 1: dyn},
        tuple((kv_shape, kv_shape) for _ in range(n_layers)),
    )
    input_names = ["input_ids", "attention_mask"]
    output_names = ["logits"]
    for i in range(n_layers):
        input_names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        output_names += [f"present.{i}.key", f"present.{i}.value"]
    return (input_ids, attention_mask, past_kv), dynamic_shapes, input_names, output_names
