"""Magnitude pruning of the weight matrices, written back as a dense ONNX model.

``pattern: unstructured`` zeroes the ``sparsity`` share of smallest-magnitude weights, either
per tensor (``scope: per_layer``, every pruned tensor ends at the target) or with one
threshold over all pruned tensors (``scope: global``). ``pattern: "2:4"`` keeps the two
largest magnitudes in every group of four consecutive weights along the input dimension (axis
0 of a MatMul weight stored [in, out]; the hidden axis of an embedding table), 50% by
construction. By default only MatMul weights are pruned and the embedding and the LM head (the
MatMul producing ``logits``) are left whole.

The manifest records the target and the sparsity achieved, counted as zeros in the written
file: over the pruned tensors, over every float weight, and per pruned tensor (min/median/max).

What this buys, honestly: the weights stay stored dense, and onnxruntime's CPU execution
provider runs a dense matrix of zeros exactly as fast as any other, so latency and the
on-disk/in-memory size do not change. The gain is for compressed storage or transfer (zeros
compress; ``gzip_bytes`` is the model file compressed with gzip at level 1, labelled as such:
level 6 takes minutes on SmolLM2 for a few percent more) and for studying how accuracy degrades
with sparsity. Without fine-tuning, magnitude pruning costs a small LLM dearly: see README.md.
A variant whose ``parent:`` names a pruned variant quantizes the pruned weights.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._context import BuildContext

NAME = "prune_magnitude"
PARENT = "export_fp32"
TOOLS = ("onnx", "numpy")
DEFAULTS: dict[str, Any] = {"sparsity": 0.5, "pattern": "unstructured", "scope": "per_layer",
                            "op_types": ["MatMul"], "skip_embedding": True, "skip_lm_head": True,
                            "skip_nodes": [], "report_gzip": True}
PATTERNS = ("unstructured", "2:4")
SCOPES = ("per_layer", "global")
OP_TYPES = ("MatMul", "Gather")
GROUP, KEEP = 4, 2  # 2:4
GZIP_LEVEL = 1


def build(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    params = _checked(ctx)
    model = onnx.load(str(ctx.parent_model))
    targets = prunable_weights(model, params)
    inits = {init.name: init for init in model.graph.initializer}
    uneven = [name for name, axis in targets.items() if params["pattern"] == "2:4" and inits[name].dims[axis] % GROUP]
    targets = {name: axis for name, axis in targets.items() if name not in uneven}
    target = 0.5 if params["pattern"] == "2:4" else float(params["sparsity"])
    ctx.log(f"pruning {len(targets)} weight tensors, {params['pattern']} to {target:.0%} ({params['scope']})")
    weights = {name: numpy_helper.to_array(inits[name]) for name in targets}
    pruned = _prune(weights, targets, params)
    for name, array in pruned.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save_model(model, str(ctx.out_model))
    ctx.copy_tokenizer()
    facts = {"pattern": params["pattern"], "scope": params["scope"] if params["pattern"] == "unstructured" else None,
             "target_sparsity": target,
             "skipped_not_multiple_of_4": len(uneven), **measure_sparsity(ctx.out_model, targets, params["pattern"])}
    if params["report_gzip"]:
        facts["gzip_bytes"] = {"parent": gzip_size(ctx.parent_model), "pruned": gzip_size(ctx.out_model),
                               "note": f"model.onnx compressed with gzip level {GZIP_LEVEL}; what storage or transfer "
                                       "would take, not what the runtime loads (the file itself keeps its size)"}
    return facts


def _checked(ctx: BuildContext) -> dict[str, Any]:
    params = ctx.params
    if params["pattern"] not in PATTERNS:
        raise ctx.config_error("pattern", f"must be one of {', '.join(PATTERNS)}, got {params['pattern']!r}")
    if params["scope"] not in SCOPES:
        raise ctx.config_error("scope", f"must be one of {', '.join(SCOPES)}, got {params['scope']!r}")
    sparsity = params["sparsity"]
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ctx.config_error("sparsity", f"must be a fraction in [0, 1), got {sparsity!r}")
    unknown = [op for op in params["op_types"] if op not in OP_TYPES]
    if unknown:
        raise ctx.config_error("op_types", f"{unknown[0]!r} is not prunable here; choose from {', '.join(OP_TYPES)}")
    return params


def prunable_weights(model: Any, params: dict[str, Any]) -> dict[str, int]:
    """Initializer name -> the axis groups run along, for each weight the parameters select."""
    inits = {init.name: init for init in model.graph.initializer}
    head = _lm_head(model)
    chosen: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in params["op_types"] or any(part in node.name for part in params["skip_nodes"]):
            continue
        if node.op_type == "MatMul" and not (params["skip_lm_head"] and node.name == head):
            weight, axis = node.input[1], 0
        elif node.op_type == "Gather" and not params["skip_embedding"]:
            weight, axis = node.input[0], 1
        else:
            continue
        if weight in inits and len(inits[weight].dims) == 2 and inits[weight].data_type == 1:  # fp32 matrices
            chosen[weight] = axis
    return chosen


def _lm_head(model: Any) -> str | None:
    """The MatMul that computes the ``logits`` output (through at most a few elementwise nodes)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get("logits")
    for _ in range(4):
        if node is None or node.op_type == "MatMul":
            break
        node = producers.get(node.input[0])
    return node.name if node is not None and node.op_type == "MatMul" else None


def _prune(weights: dict[str, np.ndarray], axes: dict[str, int], params: dict[str, Any]) -> dict[str, np.ndarray]:
    if params["pattern"] == "2:4":
        return {name: prune_2_4(array, axes[name]) for name, array in weights.items()}
    sparsity = float(params["sparsity"])
    if params["scope"] == "global":
        threshold = _global_threshold(list(weights.values()), sparsity)
        return {name: np.where(np.abs(array) < threshold, 0, array).astype(array.dtype) for name, array in weights.items()}
    return {name: prune_unstructured(array, sparsity) for name, array in weights.items()}


def prune_unstructured(array: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero exactly ``round(sparsity * size)`` of the smallest magnitudes."""
    count = round(sparsity * array.size)
    flat = array.reshape(-1).copy()
    if count:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0
    return flat.reshape(array.shape)


def _global_threshold(arrays: list[np.ndarray], sparsity: float) -> float:
    """The magnitude below which ``sparsity`` of all the weights fall."""
    magnitudes = np.concatenate([np.abs(array).reshape(-1) for array in arrays])
    count = round(sparsity * magnitudes.size)
    return float(np.partition(magnitudes, count)[count]) if count < magnitudes.size else np.inf


def prune_2_4(array: np.ndarray, axis: int) -> np.ndarray:
    """In every group of 4 consecutive weights along ``axis``, zero the 2 smallest magnitudes."""
    moved = np.moveaxis(array, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, GROUP).copy()
    smallest = np.argsort(np.abs(groups), axis=-1, kind="stable")[..., : GROUP - KEEP]
    np.put_along_axis(groups, smallest, 0, axis=-1)
    return np.moveaxis(groups.reshape(moved.shape), -1, axis)


def measure_sparsity(model_path: Path, targets: dict[str, int], pattern: str) -> dict[str, Any]:
    """Zeros counted in the written file: pruned tensors, all float weights, per tensor."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    zeros = total = pruned_zeros = pruned_total = 0
    per_tensor: list[float] = []
    groups_ok = groups = 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind != "f":
            continue
        zero_count = int(array.size - np.count_nonzero(array))
        zeros, total = zeros + zero_count, total + array.size
        if init.name in targets:
            pruned_zeros, pruned_total = pruned_zeros + zero_count, pruned_total + array.size
            per_tensor.append(zero_count / array.size)
            if pattern == "2:4":
                ok, count = _groups_with_two_zeros(array, targets[init.name])
                groups_ok, groups = groups_ok + ok, groups + count
    facts: dict[str, Any] = {
        "pruned_tensors": len(per_tensor),
        "parameters": total,
        "pruned_parameters": pruned_total,
        "nonzero_parameters": total - zeros,
        "achieved_sparsity_pruned": pruned_zeros / pruned_total if pruned_total else None,
        "achieved_sparsity_all_weights": zeros / total if total else None,
        "achieved_sparsity_per_tensor": _summary(per_tensor),
    }
    if pattern == "2:4":
        facts["groups_of_4_with_2_zeros"] = groups_ok / groups if groups else None
    return facts


def _groups_with_two_zeros(array: np.ndarray, axis: int) -> tuple[int, int]:
    moved = np.moveaxis(array, axis, -1)
    if moved.shape[-1] % GROUP:
        return 0, 0
    groups = moved.reshape(-1, GROUP)
    return int(((groups == 0).sum(axis=1) >= GROUP - KEEP).sum()), int(groups.shape[0])


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def gzip_size(path: Path) -> int:
    """Bytes of ``path`` compressed with gzip at ``GZIP_LEVEL`` (streamed, nothing written)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    size = 0
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            size += len(compressor.compress(block))
    return size + len(compressor.flush())
