"""Turn a transformers causal LM into an ONNX graph with an explicit KV cache.

The exported graph takes ``input_ids``, ``attention_mask`` and one ``past_key_values.{i}.key`` /
``.value`` pair per layer, and returns ``logits`` and ``present.{i}.key`` / ``.value``. The
runner discovers the layer count from these names, so any decoder exported here runs there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

EXPORT_EXAMPLE_BATCH = 2  # a batch of 1 would freeze the batch dimension in the graph
EXPORT_EXAMPLE_SEQ = 5
EXPORT_EXAMPLE_PAST = 3


def export_causal_lm(model: Any, out_path: Path, opset: int = 18) -> None:
    """Export ``model`` (a transformers ``*ForCausalLM`` in eval mode) to ``out_path``."""
    import torch

    wrapper = _CausalLMWithPast(model)
    args, dynamic_shapes, input_names, output_names = _example_inputs(model.config)
    with torch.no_grad():
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
    graph = program.model_proto
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


def fold_transposed_weights(graph: onnx.ModelProto) -> int:
    """Replace ``MatMul(x, Transpose(W))`` by ``MatMul(x, W')`` with W' stored transposed.

    Returns how many were folded. Quantizers only consider MatMuls whose weight input is an
    initializer.
    """
    inits = {init.name: init for init in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded = 0
    for node in graph.graph.node:
        if node.op_type != "MatMul":
            continue
        transpose = producers.get(node.input[1])
        if not _is_foldable_transpose(transpose, inits, consumers):
            continue
        weight = numpy_helper.to_array(inits[transpose.input[0]])
        perm = _perm_of(transpose, weight.ndim)
        new_name = f"{transpose.input[0]}__transposed"
        graph.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), new_name)
        )
        node.input[1] = new_name
        folded += 1
    _drop_dead_nodes_and_initializers(graph)
    return folded


def _is_foldable_transpose(node: Any, inits: dict[str, Any], consumers: dict[str, int]) -> bool:
    return (
        node is not None
        and node.op_type == "Transpose"
        and node.input[0] in inits
        and consumers.get(node.output[0], 0) == 1
    )


def _perm_of(node: onnx.NodeProto, ndim: int) -> list[int]:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return list(reversed(range(ndim)))


def _drop_dead_nodes_and_initializers(graph: onnx.ModelProto) -> None:
    needed = {out.name for out in graph.graph.output}
    live_nodes = []
    for node in reversed(graph.graph.node):
        if any(out in needed for out in node.output):
            live_nodes.append(node)
            needed.update(node.input)
    del graph.graph.node[:]
    graph.graph.node.extend(reversed(live_nodes))
    live_inits = [init for init in graph.graph.initializer if init.name in needed]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(live_inits)


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
