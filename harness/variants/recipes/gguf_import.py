"""The fused decoder graph (as ``fused_decoder`` builds it) with the GGUF's own quantized blocks.

``fused_decoder`` at int4 or int8 quantizes the weights transformers dequantized from the GGUF a
second time: lossy twice. This recipe builds the same graph in fp32 with onnxruntime-genai's model
builder, then replaces each linear layer's MatMul by a MatMulNBits whose codes, scales and integer
zero points are the GGUF tensor's blocks (``gguf_blocks`` says how each type maps), and the token
embedding's Gather by a GatherBlockQuantized.

- Q4_1 and Q4_K blocks carry a minimum (``d * q + m``): the MatMulNBits computes ``d * (q - z)``
  (z the integer zero point nearest ``-m / d``) and a small MatMul adds each block's input sum
  times the rest, ``m + z * d`` (``_offset_nodes``, ``gguf_blocks.centred``); the
  embedding gathers its rows' offsets beside its codes. Float zero points ``-m / d`` would say the
  same in one node, but onnxruntime never prepacks those and dequantizes the whole matrix every
  call (measured: 140x slower, ``gguf_blocks``).
- llama.cpp's converter permutes the rows of attn_q and attn_k for its rope (interleaved pairs);
  transformers un-permutes them when it loads the file, and so does this import (rows only, so the
  blocks along a row are untouched). The builder's qkv_proj is Q, K and V stacked by rows: one
  MatMulNBits when the three share a bit width, else one each and a Concat (Q4_K_M gives some
  layers a Q6_K attn_v, 8-bit, beside 4-bit Q and K). Gate and up, which read the same input,
  become one MatMulNBits and a Split the same way (fewer, larger kernel calls).
- every imported weight is compared with the builder's fp32 weight before it replaces it: a wrong
  permutation or layout fails the build (``IMPORT_BOUND``; measured 0 on SmolLM2's file: the
  blocks decode to exactly the fp32 values transformers made of them).
- a tensor of another type (F32, F16, Q5_K, ...) keeps the builder's fp32 weight; the facts list it.
- ``accuracy_level`` 4 (the default) quantizes each MatMulNBits' activations to int8 per block,
  which onnxruntime's CPU kernels are fast at; the weights stay the file's. Level 0 computes in
  fp32 (logits within fp32 noise of torch's on the dequantized file, the tests' check), but
  onnxruntime 1.32 has no packed fp32 kernel for 8-bit weights: a Q8_0 head is dequantized every
  call (SmolLM2's: 264 ms a token against 0.8 ms at level 4).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import gguf_blocks
from . import _gguf, fused_decoder
from ._context import BuildContext

NAME = "gguf_import"
PARENT = None
TOOLS = ("onnxruntime-genai", "onnx", "onnxruntime", "torch", "transformers", "gguf")
USES = (fused_decoder, gguf_blocks, _gguf)
DEFAULTS: dict[str, Any] = {"accuracy_level": 4}
BUILDER_PARAMS: dict[str, Any] = {"precision": "fp32", "block_size": 32, "accuracy_level": 0, "symmetric": True,
                                  "algorithm": "default", "quantize_embedding": False}
# the builder's MatMul per layer -> the GGUF tensors stacked by rows into its weight; MatMuls of one
# input listed together (gate and up) become one MatMulNBits and a Split where one layout holds them
PROJECTIONS = ({"attn/qkv_proj": ("attn_q", "attn_k", "attn_v")}, {"attn/o_proj": ("attn_output",)},
               {"mlp/gate_proj": ("ffn_gate",), "mlp/up_proj": ("ffn_up",)}, {"mlp/down_proj": ("ffn_down",)})
TYPE_NOTES = {"Q4_0": "4-bit, zero point 8", "Q4_1": "4-bit, the minimum as an integer zero point and an offset",
              "Q8_0": "8-bit, zero point 128", "Q4_K": "4-bit blocks of 32, sub-minimums as Q4_1's",
              "Q6_K": "8-bit blocks of 16, zero point 128"}
IMPORT_BOUND = 1e-6  # |imported - builder's fp32 weight| per block, of the block's largest |weight|
CHECK_TOKENS, PREFILLED = 32, 24  # the load check: 24 tokens prefilled, the rest decoded one by one
FP32_TOLERANCE = 1e-3  # of the largest |logit| at accuracy_level 0 or 1 (fp32 compute)
MIN_TOP1 = 0.5  # the sanity bound at the other levels
_EMBEDDING, _OUTPUT = "token_embd.weight", "output.weight"  # GGUF names; the builder's nodes:
_GATHER, _HEAD = "/model/embed_tokens/Gather", "/lm_head/MatMul"


def build(ctx: BuildContext) -> dict[str, Any]:
    import gguf
    import onnx

    from ..base_models import load_for_export, save_hf_folder
    from ..graph_passes import save_weights_mapped, weight_bytes_per_token

    gguf_path = _check(ctx)
    ctx.log("loading the base model with transformers (the GGUF dequantized to fp32), for the builder and the check")
    model, tokenizer = load_for_export(ctx.base)
    ids = _check_ids(tokenizer)
    reference = _torch_logits(model, ids)
    save_hf_folder(model, tokenizer, ctx.out_dir / "hf_fp32")
    del model
    ctx.log("building the fused decoder graph in fp32 with onnxruntime-genai's model builder")
    fused_decoder._run_builder(ctx, fused_decoder.builder_command(ctx.out_dir / "hf_fp32", ctx.out_dir,
                                                                  ctx.out_dir / "builder_cache", BUILDER_PARAMS))
    fused_decoder._keep_only_the_artifact(ctx.out_dir)
    ctx.log("replacing the fp32 weights by the GGUF's quantized blocks")
    graph = onnx.load(str(ctx.out_model))
    importer = Importer(graph, gguf.GGUFReader(gguf_path), int(ctx.params["accuracy_level"]))
    importer.run()
    save_weights_mapped(graph, ctx.out_model)  # onnxruntime maps them: less resident memory
    file_facts = _gguf.file_facts(gguf_path)
    return {"precision": importer.precision(), "scheme": importer.scheme(), "gguf_file_type": file_facts["file_type"],
            "gguf_tensor_types": file_facts["tensor_types"], **importer.facts(),
            "weight_bytes_per_token": weight_bytes_per_token(graph),
            "builder": " ".join(fused_decoder.builder_arguments(BUILDER_PARAMS)),
            **fused_decoder.graph_facts(ctx.out_model), "load_check": _load_check(ctx, ids, reference, importer)}


def _check(ctx: BuildContext) -> Path:
    import gguf

    if ctx.base.task != "causal_lm" or not ctx.base.gguf_file:
        what = "a transformers folder" if ctx.base.task == "causal_lm" else f"a {ctx.base.task}"
        raise ctx.not_applicable(NAME, f"it imports a GGUF file's quantized tensors; this base model is {what}")
    level = ctx.params["accuracy_level"]
    if level not in (0, 1, 2, 3, 4):
        raise ctx.config_error("accuracy_level", f"must be 0-4 (4: int8 activations), got {level!r}")
    path = ctx.base.folder / ctx.base.gguf_file
    arch = gguf.GGUFReader(path).fields["general.architecture"].contents()
    if arch != "llama":
        raise ctx.not_applicable(NAME, f"it maps the llama architecture's tensors; {path.name} is {arch!r}")
    return path


class Importer:
    """Rewrites the builder's fp32 graph in place, counting what it imported and what it kept."""

    def __init__(self, graph: Any, reader: Any, accuracy_level: int) -> None:
        self.graph, self.accuracy_level = graph, accuracy_level
        self.tensors = {tensor.name: tensor for tensor in reader.tensors}
        self.layers, self.heads, self.kv_heads = (int(reader.fields[f"llama.{key}"].contents()) for key in
                                                  ("block_count", "attention.head_count", "attention.head_count_kv"))
        self.inits = {init.name: init for init in graph.graph.initializer}
        self.imported: dict[str, Counter[str]] = {"MatMulNBits": Counter(), "GatherBlockQuantized": Counter()}
        self.kept: dict[str, str] = {}
        self.elements: Counter[str] = Counter()  # weight elements by width class
        self.activations: Counter[str] = Counter()  # MatMulNBits nodes by how they compute
        self.made: set[str] = set()  # block sums (and their constants) already in the graph
        self.worst = 0.0

    def run(self) -> None:
        for layer in range(self.layers):
            for together in PROJECTIONS:
                self.matmuls({f"/model/layers.{layer}/{projection}/MatMul": [f"blk.{layer}.{n}.weight" for n in names]
                              for projection, names in together.items()})
        self.matmul(_HEAD, [_OUTPUT if _OUTPUT in self.tensors else _EMBEDDING])
        self.embedding()
        _drop_unused(self.graph)
        from ..graph_passes import sort_topologically

        sort_topologically(self.graph)

    def matmuls(self, targets: dict[str, list[str]]) -> None:
        """MatMuls of one input: one MatMulNBits and a Split when their tensors share a layout
        (fewer, larger kernel calls), else each imported alone."""
        from onnx import helper, numpy_helper

        decoded = {node_name: [self.weights(name) for name in names] for node_name, names in targets.items()}
        parts = [part for node_parts in decoded.values() for part in node_parts]
        whole = None if len(targets) == 1 or any(p is None for p in parts) else gguf_blocks.concatenated(parts)
        if whole is None:
            for node_name, names in targets.items():
                self.matmul(node_name, names, decoded[node_name])
            return
        nodes = [self._node(name)[0] for name in targets]
        fp32 = np.concatenate([numpy_helper.to_array(self.inits[node.input[1]]).T for node in nodes])
        self._compare(whole.dequantized(), fp32, [whole], " + ".join(targets))
        merged = helper.make_node("MatMul", [nodes[0].input[0], nodes[0].input[1]], [f"{nodes[0].output[0]}/merged"],
                                  name=f"{nodes[0].name}Merged")
        sizes = f"{nodes[0].name}Merged.split"
        self.graph.graph.initializer.append(numpy_helper.from_array(
            np.array([numpy_helper.to_array(self.inits[node.input[1]]).shape[1] for node in nodes], np.int64), sizes))
        split = helper.make_node("Split", [merged.output[0], sizes], [node.output[0] for node in nodes],
                                 name=f"{nodes[0].name}Split", axis=-1)
        index = self._node(nodes[0].name)[1]
        for node in nodes:
            del self.graph.graph.node[self._node(node.name)[1]]
        for offset, new in enumerate([*self._matmul_nodes(merged, [whole]), split]):
            self.graph.graph.node.insert(index + offset, new)
        self.imported["MatMulNBits"].update(self.tensors[name].tensor_type.name for names in targets.values()
                                            for name in names)

    def weights(self, name: str) -> Any:
        """The tensor as BlockWeights in Hugging Face's row order, or None for a type not imported."""
        tensor = self.tensors[name]
        if tensor.tensor_type.name not in gguf_blocks.DECODERS:
            return None
        weights = gguf_blocks.decode(np.asarray(tensor.data), tensor.tensor_type.name)
        heads = self.heads if ".attn_q." in name else self.kv_heads if ".attn_k." in name else 0
        if heads:
            rows = weights.shape[0]
            weights = weights.take_rows(np.argsort(_gguf.rope_permute(np.arange(rows), heads)))
        return weights

    def matmul(self, node_name: str, names: list[str], parts: list[Any] | None = None) -> None:
        """One builder MatMul as the GGUF tensors ``names`` (``parts``: those decoded already)."""
        from onnx import numpy_helper

        node, index = self._node(node_name)
        fp32 = numpy_helper.to_array(self.inits[node.input[1]]).T  # [N, K]: the builder stores W as [K, N]
        parts = parts if parts is not None else [self.weights(name) for name in names]
        if any(part is None for part in parts):
            self.kept.update({name: f"{self.tensors[name].tensor_type.name}: the builder's fp32 weight"
                              for name, part in zip(names, parts) if part is None})
            self.elements["fp32"] += fp32.size
            return
        whole = gguf_blocks.concatenated(parts)
        groups = [whole] if whole is not None else parts
        self._compare(np.concatenate([group.dequantized() for group in groups]), fp32, groups, node_name)
        del self.graph.graph.node[index]
        for offset, new in enumerate(self._matmul_nodes(node, groups)):
            self.graph.graph.node.insert(index + offset, new)
        self.imported["MatMulNBits"].update(self.tensors[name].tensor_type.name for name in names)

    def _matmul_nodes(self, node: Any, groups: list[Any]) -> list[Any]:
        """One MatMulNBits a group (its offsets added after it), a Concat when there are several."""
        from onnx import helper

        stem = node.input[1].removesuffix(".MatMul.weight")
        outputs = [node.output[0]] if len(groups) == 1 else [f"{node.output[0]}/part{i}" for i in range(len(groups))]
        nodes = []
        for i, (group, output) in enumerate(zip(groups, outputs)):
            inputs = self._add_blocks(f"{stem}.gguf{i}", gguf_blocks.packed_codes(group), group, (-1,))
            rows, cols = group.shape
            product = output if group.offsets is None else f"{output}/codes"
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], *inputs], [product],
                                          name=f"{node.name}NBits{i}", domain="com.microsoft", K=cols, N=rows,
                                          bits=group.bits, block_size=group.block_size,
                                          accuracy_level=self.accuracy_level))
            if group.offsets is not None:
                nodes += self._offset_nodes(node.input[0], group, f"{stem}.gguf{i}", product, output)
            self.elements[f"int{group.bits}"] += group.codes.size
            self.activations["int8" if self.accuracy_level == 4 else "fp32"] += 1
        if len(groups) > 1:
            nodes.append(helper.make_node("Concat", outputs, [node.output[0]], name=f"{node.name}Concat", axis=-1))
        return nodes

    def _offset_nodes(self, x: str, weights: Any, stem: str, product: str, output: str) -> list[Any]:
        """output = product + (x's sum over each block) @ offsets.T: the offsets' share of x @ W.T."""
        from onnx import helper, numpy_helper

        nodes, sums = self._block_sums(x, weights.shape[1], weights.block_size)
        table = f"{stem}.offsets"
        self.graph.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weights.offsets.T), table))
        nodes.append(helper.make_node("MatMul", [sums, table], [f"{output}/offsets"], name=f"{stem}/OffsetMatMul"))
        nodes.append(helper.make_node("Add", [product, f"{output}/offsets"], [output], name=f"{stem}/OffsetAdd"))
        return nodes

    def _block_sums(self, x: str, cols: int, block_size: int) -> tuple[list[Any], str]:
        """The nodes summing x [batch, positions, cols] over each block (none when made already), and
        the name of their [batch, positions, blocks] output."""
        from onnx import helper, numpy_helper

        sums = f"{x}/block_sums{block_size}"
        if sums in self.made:
            return [], sums
        self.made.add(sums)
        shape, axes = f"{sums}/shape", "gguf_import.last_axis"
        self.graph.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, cols // block_size, block_size], dtype=np.int64), shape))
        if axes not in self.made:
            self.made.add(axes)
            self.graph.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
        return [helper.make_node("Reshape", [x, shape], [f"{sums}/blocks"], name=f"{sums}/Reshape"),
                helper.make_node("ReduceSum", [f"{sums}/blocks", axes], [sums], name=f"{sums}/ReduceSum",
                                 keepdims=0)], sums

    def _add_blocks(self, stem: str, codes: np.ndarray, weights: Any, scale_shape: tuple[int, ...]) -> list[str]:
        """Initializers for the codes, scales and zero points; their names in input order."""
        from onnx import numpy_helper

        arrays = {f"{stem}.codes": codes, f"{stem}.scales": weights.scales.reshape(scale_shape)}
        if weights.zero_points is not None:
            zero_points = gguf_blocks.packed_zero_points(weights)
            arrays[f"{stem}.zero_points"] = zero_points.reshape(-1) if scale_shape == (-1,) else zero_points
        self.graph.graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in arrays.items())
        return list(arrays)

    def embedding(self) -> None:
        """The Gather's table as a GatherBlockQuantized of the GGUF's blocks (its offsets gathered
        beside it and added), or the fp32 table as an initializer of its own for a type not read
        (the builder gathers a tied one from a Transpose of the head's weight, which would count as
        read whole every token)."""
        from onnx import helper, numpy_helper

        node, index = self._node(_GATHER)
        table = self._table(node.input[0])
        weights = self.weights(_EMBEDDING)
        if weights is None:
            self.kept[f"{_EMBEDDING} (Gather)"] = f"{self.tensors[_EMBEDDING].tensor_type.name}: fp32 table, a type not imported"
            if node.input[0] not in self.inits:  # tied: gathered from a Transpose of the head's fp32 weight
                self.graph.graph.initializer.append(numpy_helper.from_array(table, "model.embed_tokens.table"))
                node.input[0] = "model.embed_tokens.table"
            return
        self._compare(weights.dequantized(), table, [weights], _GATHER)
        stem = "model.embed_tokens.gguf"
        inputs = self._add_blocks(stem, gguf_blocks.gathered_codes(weights), weights, weights.scales.shape)
        del self.graph.graph.node[index]
        rows = f"{node.output[0]}/codes" if weights.offsets is not None else node.output[0]
        nodes = [helper.make_node("GatherBlockQuantized", [inputs[0], node.input[1], *inputs[1:]], [rows],
                                  name=f"{_GATHER}BlockQuantized", domain="com.microsoft", gather_axis=0,
                                  quantize_axis=1, block_size=weights.block_size, bits=weights.bits)]
        if weights.offsets is not None:
            nodes += self._gathered_offsets(node, weights, stem, rows)
        for offset, new in enumerate(nodes):
            self.graph.graph.node.insert(index + offset, new)
        self.imported["GatherBlockQuantized"][self.tensors[_EMBEDDING].tensor_type.name] += 1

    def _gathered_offsets(self, node: Any, weights: Any, stem: str, rows: str) -> list[Any]:
        """output = rows + each block's offset, the offsets gathered by the same ids."""
        from onnx import helper, numpy_helper

        out, cols = node.output[0], weights.shape[1]
        arrays = {f"{stem}.offsets": weights.offsets[..., None],  # [vocab, blocks, 1]
                  f"{stem}.block_shape": np.array([0, 0, cols // weights.block_size, weights.block_size], np.int64),
                  f"{stem}.row_shape": np.array([0, 0, cols], np.int64)}
        self.graph.graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in arrays.items())
        names = list(arrays)
        return [helper.make_node("Gather", [names[0], node.input[1]], [f"{out}/offsets"], name=f"{stem}/OffsetGather"),
                helper.make_node("Reshape", [rows, names[1]], [f"{out}/blocks"], name=f"{stem}/Blocks"),
                helper.make_node("Add", [f"{out}/blocks", f"{out}/offsets"], [f"{out}/summed"], name=f"{stem}/OffsetAdd"),
                helper.make_node("Reshape", [f"{out}/summed", names[2]], [out], name=f"{stem}/Rows")]

    def _table(self, name: str) -> np.ndarray:
        """The Gather's fp32 table: an initializer, or the Transpose of one (tied embeddings)."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        transpose, _ = self._node_making(name)
        return np.ascontiguousarray(numpy_helper.to_array(self.inits[transpose.input[0]]).T)

    def _compare(self, imported: np.ndarray, fp32: np.ndarray, groups: list[Any], where: str) -> None:
        from ...errors import BuildError

        if imported.shape != fp32.shape:
            raise BuildError(f"{where}: the GGUF's tensors are {imported.shape}, the builder's weight {fp32.shape}")
        blocks = (imported.shape[0], -1, min(group.block_size for group in groups))
        diff = np.abs(imported - fp32).reshape(blocks).max(axis=-1)
        size = np.maximum(np.abs(fp32), np.abs(imported)).reshape(blocks).max(axis=-1)
        share = float(np.max(diff / np.maximum(size, np.finfo(np.float32).tiny)))
        if not share <= IMPORT_BOUND:
            raise BuildError(f"{where}: the GGUF's blocks decode to other weights than the builder's fp32 graph "
                             f"holds (worst block off by {share:.3g} of its largest weight, bound {IMPORT_BOUND:g}): "
                             f"a tensor layout or the rope permutation is not what this import assumes")
        self.worst = max(self.worst, share)

    def _node(self, name: str) -> tuple[Any, int]:
        from ...errors import BuildError

        for index, node in enumerate(self.graph.graph.node):
            if node.name == name:
                return node, index
        raise BuildError(f"the model builder's graph has no node {name}: its naming is not what {NAME} expects")

    def _node_making(self, output: str) -> tuple[Any, int]:
        for index, node in enumerate(self.graph.graph.node):
            if output in node.output:
                return node, index
        from ...errors import BuildError

        raise BuildError(f"the model builder's graph computes no {output}")

    def precision(self) -> str:
        return self.elements.most_common(1)[0][0] if self.elements else "fp32"

    def scheme(self) -> str:
        types = sorted(self.imported["MatMulNBits"], key=lambda t: -self.imported["MatMulNBits"][t])
        if not types:
            return "no tensor of a type this import reads: the fused fp32 graph"
        notes = "; ".join(f"{t}: {TYPE_NOTES[t]}" for t in types)
        gathered = "".join(f"; the token embedding a GatherBlockQuantized of its {t} blocks"
                           for t in self.imported["GatherBlockQuantized"])
        kept = f"; kept fp32: {', '.join(self.kept)}" if self.kept else ""
        return f"{'/'.join(types)} imported bit-exact (MatMulNBits; {notes}){gathered}{kept}"

    def facts(self) -> dict[str, Any]:
        return {"imported": {op: dict(count.most_common()) for op, count in self.imported.items() if count},
                "kept_fp32": self.kept, "import_max_diff": float(f"{self.worst:.3g}"),
                "accuracy_level": self.accuracy_level, "matmul_activations": dict(self.activations)}


def _drop_unused(graph: Any) -> None:
    """Drop the nodes nothing reads (the tied embedding's Transpose) and the initializers left unread."""
    outputs = {out.name for out in graph.graph.output}
    while True:
        read = {name for node in graph.graph.node for name in node.input} | outputs
        dead = [i for i, node in enumerate(graph.graph.node) if not any(out in read for out in node.output)]
        for i in reversed(dead):
            del graph.graph.node[i]
        if not dead:
            break
    kept = [init for init in graph.graph.initializer if init.name in read]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)


def _check_ids(tokenizer: Any) -> list[int]:
    from ...evaldata import PROMPT_TOPICS, english_text

    ids = tokenizer(english_text(PROMPT_TOPICS), add_special_tokens=False)["input_ids"][:CHECK_TOKENS]
    return [int(i) for i in ids]


def _torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


def _load_check(ctx: BuildContext, ids: list[int], reference: np.ndarray, importer: Importer) -> str:
    """Run the graph with the runner's in-place KV backend, prefill then decode, against torch fp32:
    near exactly at accuracy_level 0 or 1 (fp32 compute), else a sane top-1 agreement."""
    from ...errors import BuildError
    from ...runner.backends import KvBufferBackend

    backend = KvBufferBackend(str(ctx.out_model), ["CPUExecutionProvider"], 0)
    logits, past, _ = backend.step(np.asarray([ids[:PREFILLED]], dtype=np.int64), backend.empty_past(), 0)
    rows = [np.array(logits[0])]
    for position in range(PREFILLED, len(ids)):
        logits, past, _ = backend.step(np.asarray([[ids[position]]], dtype=np.int64), past, position)
        rows.append(np.array(logits[0]))
    got = np.concatenate(rows)
    worst, scale = float(np.max(np.abs(got - reference))), float(np.max(np.abs(reference)))
    top1 = float(np.mean(np.argmax(got, axis=-1) == np.argmax(reference, axis=-1)))
    figures = (f"max |logit - torch fp32| {worst:.2g} ({worst / scale:.2g} of the largest |logit|), top-1 agreement "
               f"{top1:.2f} over {len(ids)} positions ({PREFILLED} prefilled, {len(ids) - PREFILLED} decoded)")
    if importer.accuracy_level <= 1 and worst > FP32_TOLERANCE * scale:
        raise BuildError(f"{ctx.params_field}: the imported graph's logits are not the fp32 model's: {figures} "
                         f"(bound {FP32_TOLERANCE:g} of the largest)")
    if top1 < MIN_TOP1:
        raise BuildError(f"{ctx.params_field}: the imported graph's logits differ grossly from the fp32 model's: "
                         f"{figures} (bound top-1 >= {MIN_TOP1})")
    return figures
