"""Small rewrites of ONNX graphs that the recipes need and the stock tools do not do."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


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
    """Keep only what the graph outputs depend on; works whatever the order of the node list."""
    producers = {out: node for node in graph.graph.node for out in node.output}
    needed = {out.name for out in graph.graph.output}
    pending = list(needed)
    index_of = {out: index for index, node in enumerate(graph.graph.node) for out in node.output}
    live: set[int] = set()
    while pending:
        name = pending.pop()
        if name not in producers or index_of[name] in live:
            continue
        node = producers[name]
        live.add(index_of[name])
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                pending.append(name)
    kept_nodes = [node for index, node in enumerate(graph.graph.node) if index in live]
    del graph.graph.node[:]
    graph.graph.node.extend(kept_nodes)
    live_inits = [init for init in graph.graph.initializer if init.name in needed]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(live_inits)


def rms_norm_chains(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing RMS norms' ``1/sqrt(mean(x^2) + eps)`` (Pow ... Reciprocal).

    In fp16 the mean of squares of a small LLM's residual stream overflows (values of a few
    hundred square past 65504), so these nodes must stay in fp32.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: list[str] = []
    for node in graph.graph.node:
        if node.op_type == "Pow":
            chain = _single_consumer_chain(node, consumers, until="Reciprocal", limit=6)
            names += [n.name for n in chain]
    return names


def _single_consumer_chain(start: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
                           until: str, limit: int) -> list[onnx.NodeProto]:
    chain = [start]
    while chain[-1].op_type != until and len(chain) < limit:
        following = consumers.get(chain[-1].output[0], [])
        if len(following) != 1:
            return []
        chain.append(following[0])
    return chain if chain[-1].op_type == until else []


def drop_round_trip_casts(graph: onnx.ModelProto, fp32_ops: Iterable[str], fp32_nodes: Iterable[str]) -> int:
    """Remove Cast(fp16) -> Cast(fp32) pairs between two nodes kept in fp32.

    onnxruntime's fp16 converter casts every kept-fp32 node's output to fp16 and back, so a
    chain of kept nodes still overflows in between. Returns how many pairs were removed.
    """
    ops, nodes = set(fp32_ops), set(fp32_nodes)
    producers = {out: node for node in graph.graph.node for out in node.output}
    removed = 0
    for node in graph.graph.node:
        first = producers.get(node.input[0]) if _is_cast(node, TensorProto.FLOAT) else None
        if first is None or not _is_cast(first, TensorProto.FLOAT16):
            continue
        source = producers.get(first.input[0])
        if source is not None and (source.op_type in ops or source.name in nodes):
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
            removed += 1
    _drop_dead_nodes_and_initializers(graph)
    return removed


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def weight_bytes_per_token(graph: onnx.ModelProto) -> int:
    """Bytes of initializers a decode step reads: all weights, except tables only gathered from.

    An embedding (Gather, GatherBlockQuantized) reads one row per token, not the whole table.
    """
    gathered_only: dict[str, bool] = {}
    for node in graph.graph.node:
        for position, name in enumerate(node.input):
            is_table = node.op_type.startswith("Gather") and position == 0
            gathered_only[name] = gathered_only.get(name, True) and is_table
    return sum(_tensor_bytes(init) for init in graph.graph.initializer if not gathered_only.get(init.name, False))


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def mlp_down_projections(graph: onnx.ModelProto) -> list[str]:
    """Names of the gated MLPs' down-projection MatMuls: ``down(act(gate(x)) * up(x))``.

    Found by shape of the graph, not by name: a weight MatMul whose input is a Mul with one
    operand made directly by another weight MatMul (the up projection).
    """
    weights = {init.name for init in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}

    def weight_matmul(tensor: str) -> bool:
        node = producers.get(tensor)
        return node is not None and node.op_type == "MatMul" and node.input[1] in weights

    names = []
    for node in graph.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Mul" and any(weight_matmul(t) for t in source.input):
            names.append(node.name)
    return names


def sort_topologically(model: onnx.ModelProto) -> None:
    """Reorder the nodes so each follows the producers of its inputs, keeping the original order
    where it already does. onnxruntime runs an unsorted graph; ``onnx.checker`` (and so
    ``bring_your_own``) refuses it. onnxruntime's fp16 converter appends its input casts last."""
    import heapq

    nodes = list(model.graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}  # "": no output
    waiting_on = [{producer[name] for name in node.input if name in producer} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting_on):
        for need in needs:
            consumers.setdefault(need, []).append(index)
    ready = [index for index, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers.get(index, ()):
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise ValueError(f"the graph has a cycle: {len(nodes) - len(order)} nodes never become ready")
    del model.graph.node[:]
    model.graph.node.extend(nodes[index] for index in order)


MAPPED_ALIGNMENT = 4096  # a page: each tensor's bytes start on one
MAPPED_MIN_BYTES = 1024  # smaller initializers stay in the graph file


def save_weights_mapped(model: onnx.ModelProto, path: Path) -> int:
    """Save ``model`` to ``path`` with every initializer of at least 1 KiB in ``<name>.data`` beside
    it, each at a page-aligned offset; returns the bytes so placed.

    onnxruntime memory-maps external data on the CPU: the weights a kernel prepacks are read from
    the page cache and unmapped, and a table only gathered from (the token embedding) is read
    only where it is gathered. An inline model is parsed into protobuf first, then copied into
    onnxruntime's tensors, and glibc keeps most of the freed parse. Measured on the GGUF-imported
    SmolLM2 (147 MB), onnxruntime 1.32: peak RSS of a 128-token prefill and 64 decode steps
    291 MB inline, 257 MB mapped; the fused int8 380 and 288 MB.
    """
    data_path = path.with_name(path.name + ".data")
    placed = 0
    with open(data_path, "wb") as data:
        for tensor in model.graph.initializer:
            raw = _raw_bytes(tensor)
            if len(raw) < MAPPED_MIN_BYTES:
                continue
            data.write(b"\0" * (-data.tell() % MAPPED_ALIGNMENT))
            offset = data.tell()
            data.write(raw)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(raw)))):
                tensor.external_data.add(key=key, value=value)
            placed += len(raw)
    onnx.save_model(model, str(path))
    return placed


def _raw_bytes(tensor: TensorProto) -> bytes:
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"initializer {tensor.name} is external data; load the model with its data first")
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)  # typed fields (float_data, ...): rewritten as raw bytes
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return tensor.raw_data
