"""The gguf_import recipe: a GGUF's quantized blocks as onnxruntime's block-quantized weights.

Each supported type's blocks (gguf-py's quantizer where it has one, random bytes laid out as the
type's blocks otherwise) are decoded here, and run through a MatMulNBits node alone (plus the
import's offset term) and a GatherBlockQuantized: each must give llama.cpp's own dequantization
(ggml's ``to_float`` from the libggml-base llama-cpp-python ships; gguf-py's must agree with it).
A tiny Llama written as a GGUF of mixed types is then imported into the fused decoder graph: its
initializers decoded here must be the file's tensors as ggml dequantizes them, and its logits
torch's (transformers' model of the same file) within fp32 noise, step by step on the in-place
KV cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgegate.variants import gguf_blocks
from edgegate.variants.base_models import BaseModel
from edgegate.variants.recipes import RECIPES
from edgegate.variants.recipes._context import BuildContext
from tinymodel import build_tiny_llama

TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K")
EXACT = 1e-6  # |onnxruntime's weight - gguf-py's| per block, of the block's largest |weight| (~8 fp32 ulps)
# The mixed file: layer 0 stacks Q4_K, Q4_K and Q6_K as its QKV (two layouts: three nodes and a
# Concat), layer 1 Q4_0 and Q4_1 (one 4-bit node, zero points made explicit); the embedding is
# Q6_K (a GatherBlockQuantized), the head untied, Q4_K, and one tensor F16 (kept as an fp32 MatMul).
MIXED = {"token_embd": "Q6_K", "output": "Q4_K",
         "blk.0.attn_q": "Q4_K", "blk.0.attn_k": "Q4_K", "blk.0.attn_v": "Q6_K", "blk.0.attn_output": "Q8_0",
         "blk.0.ffn_gate": "Q4_1", "blk.0.ffn_up": "Q4_0", "blk.0.ffn_down": "Q4_K",
         "blk.1.attn_q": "Q4_0", "blk.1.attn_k": "Q4_1", "blk.1.attn_v": "Q4_1", "blk.1.attn_output": "Q6_K",
         "blk.1.ffn_gate": "Q8_0", "blk.1.ffn_up": "Q4_K", "blk.1.ffn_down": "F16"}
PROMPT = [5, 17, 42, 99, 7, 3, 250, 64, 11, 8]


def _type(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name]


def quantized_rows(type_name: str, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A [rows, cols] weight as the type's raw rows: gguf-py's quantizer (F16, Q4_0, Q4_1, Q8_0), or
    for the k-quants (which it cannot quantize) random blocks with fp16 scales near the weight's
    size. A few blocks get a zero scale, where a block is its offset alone."""
    import gguf

    rows, cols = weight.shape
    weight = weight.copy()
    weight[0, :32] = weight[0, 0]  # a flat block: Q4_1's d is 0 there
    if type_name in ("F16", "Q4_0", "Q4_1", "Q8_0"):
        return gguf.quants.quantize(weight, _type(type_name))
    blocks = rng.integers(0, 256, (rows * cols // 256, gguf_blocks.BLOCK_BYTES[type_name]), dtype=np.uint8)
    size = float(np.abs(weight).mean())

    def fp16(scale: float) -> np.ndarray:
        return (rng.random(len(blocks)) * scale).astype(np.float16).view(np.uint8).reshape(-1, 2)

    if type_name == "Q4_K":
        blocks[:, 0:2], blocks[:, 2:4] = fp16(size / 120), fp16(size / 120)
        blocks[0, 0:2] = 0  # d == 0: the first super-block is its sub-mins alone
    else:
        blocks[:, 208:210] = fp16(size / 1000)
    return blocks.reshape(rows, -1)


def ggml_dequantized(rows: np.ndarray, type_name: str) -> np.ndarray:
    """llama.cpp's own dequantization of raw rows: ggml's ``to_float`` for the type, from the
    libggml-base that llama-cpp-python ships, through ``ggml_get_type_traits`` (ggml.h)."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (harness/llama_cpp_build.py)")

    class Traits(ctypes.Structure):
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]

    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    library.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    traits = library.ggml_get_type_traits(int(_type(type_name))).contents
    assert traits.type_name.decode().lower() == type_name.lower(), "ggml_type_traits is not laid out as this test reads it"
    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)(traits.to_float)
    raw = np.ascontiguousarray(rows, dtype=np.uint8)
    count = raw.size // traits.type_size * traits.blck_size
    out = np.empty(count, dtype=np.float32)
    to_float(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), count)
    return out.reshape(raw.shape[0], -1)


def one_node(node: Any, feed: tuple[str, Any, list[Any]], arrays: dict[str, np.ndarray]) -> Any:
    """An onnxruntime session of ``node`` alone: one input (name, element type, shape), output y."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(*feed)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(array, name) for name, array in arrays.items()])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def matmul_nbits(weights: gguf_blocks.BlockWeights, accuracy_level: int = 0) -> Any:
    """A session of one MatMulNBits node holding ``weights``: y = x @ W.T."""
    from onnx import TensorProto, helper

    rows, cols = weights.shape
    arrays = {"codes": gguf_blocks.packed_codes(weights), "scales": weights.scales.reshape(-1)}
    if weights.zero_points is not None:
        arrays["zero_points"] = gguf_blocks.packed_zero_points(weights).reshape(-1)
    node = helper.make_node("MatMulNBits", ["x", *arrays], ["y"], domain="com.microsoft", K=cols, N=rows,
                            bits=weights.bits, block_size=weights.block_size, accuracy_level=accuracy_level)
    return one_node(node, ("x", TensorProto.FLOAT, [None, cols]), arrays)


def offset_term(weights: gguf_blocks.BlockWeights, x: np.ndarray) -> np.ndarray:
    """What the import adds after the MatMulNBits: x's sum over each block times the block's offset."""
    if weights.offsets is None:
        return np.zeros((len(x), weights.shape[0]), np.float32)
    return x.reshape(len(x), -1, weights.block_size).sum(axis=-1) @ weights.offsets.T


def matmul_nbits_weight(weights: gguf_blocks.BlockWeights) -> np.ndarray:
    """The [rows, cols] weight a lone MatMulNBits node and the offsets compute with, read through an identity input."""
    identity = np.eye(weights.shape[1], dtype=np.float32)
    return (matmul_nbits(weights).run(None, {"x": identity})[0] + offset_term(weights, identity)).T


def gathered_rows(weights: gguf_blocks.BlockWeights) -> np.ndarray:
    """Every row of a table a lone GatherBlockQuantized node holds."""
    from onnx import TensorProto, helper

    arrays = {"table": gguf_blocks.gathered_codes(weights), "scales": weights.scales}
    if weights.zero_points is not None:
        arrays["zero_points"] = gguf_blocks.packed_zero_points(weights)
    node = helper.make_node("GatherBlockQuantized", ["table", "ids", *list(arrays)[1:]], ["y"], domain="com.microsoft",
                            gather_axis=0, quantize_axis=1, block_size=weights.block_size, bits=weights.bits)
    session = one_node(node, ("ids", TensorProto.INT64, [None]), arrays)
    rows = session.run(None, {"ids": np.arange(weights.shape[0], dtype=np.int64)})[0]
    offsets = 0 if weights.offsets is None else np.repeat(weights.offsets, weights.block_size, axis=1)
    return rows + offsets


def block_share(got: np.ndarray, expected: np.ndarray, block: int = 16) -> float:
    """The largest |got - expected| of a block as a share of the block's largest |weight|."""
    diff = np.abs(got - expected).reshape(got.shape[0], -1, block).max(axis=-1)
    size = np.abs(expected).reshape(got.shape[0], -1, block).max(axis=-1)
    return float(np.max(diff / np.maximum(size, 1e-30)))


@pytest.mark.parametrize("type_name", TYPES)
def test_each_type_runs_as_gguf_dequantizes_it(type_name: str) -> None:
    import gguf

    rng = np.random.default_rng(TYPES.index(type_name))
    data = quantized_rows(type_name, rng.standard_normal((48, 512)).astype(np.float32) * 0.05, rng)
    expected = ggml_dequantized(data, type_name)
    assert np.array_equal(expected, gguf.quants.dequantize(data, _type(type_name)))  # gguf-py agrees with ggml
    weights = gguf_blocks.decode(data, type_name)
    assert weights.bits == (8 if type_name in ("Q8_0", "Q6_K") else 4)
    assert (weights.offsets is None) == (type_name in ("Q4_0", "Q8_0", "Q6_K"))
    assert np.array_equal(weights.dequantized(), expected)  # the decoding, before onnxruntime: bit for bit
    assert block_share(matmul_nbits_weight(weights), expected) <= EXACT
    if type_name in ("Q4_1", "Q4_K"):  # quantized_rows made blocks with d == 0: the offset alone
        d = np.ascontiguousarray(data.reshape(-1, gguf_blocks.BLOCK_BYTES[type_name])[:, :2]).view(np.float16)
        assert np.any(d == 0)
    assert block_share(gathered_rows(weights), expected) <= EXACT  # GatherBlockQuantized gives the same rows


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K", "Q8_0"])
def test_level_4_quantizes_activations_level_0_does_not(type_name: str) -> None:
    """accuracy_level 4 on onnxruntime's CPU: int8 activations per block (about 1e-2 of the largest
    output off) for every imported layout, the offsets' types too (integer zero points); level 0 fp32."""
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((64, 256)).astype(np.float32)
    weights = gguf_blocks.decode(quantized_rows(type_name, weight, rng), type_name)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    exact = x.astype(np.float64) @ weights.dequantized().T.astype(np.float64)
    found = {}
    for level in (0, 4):
        y = matmul_nbits(weights, level).run(None, {"x": x})[0] + offset_term(weights, x)
        found[level] = float(np.abs(y - exact).max() / np.abs(exact).max())
    assert found[0] < 1e-5 and 1e-4 < found[4] < 5e-2, found


# --- the tiny Llama as a GGUF ---------------------------------------------------------------

def write_gguf(f32_file: Path, out: Path, types: dict[str, str], rng: np.random.Generator) -> None:
    """``f32_file`` (every metadata key kept) with each tensor named in ``types`` quantized to its
    type; an ``output`` type adds an untied head of random weights."""
    import gguf

    reader = gguf.GGUFReader(f32_file)
    writer = gguf.GGUFWriter(out, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            sub_type = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        type_name = types.get(tensor.name.removesuffix(".weight"))
        if type_name is None:
            writer.add_tensor(tensor.name, np.array(tensor.data))
        else:
            rows = quantized_rows(type_name, np.array(tensor.data), rng)
            writer.add_tensor(tensor.name, rows, raw_dtype=_type(type_name))
    if "output" in types:
        embedding = next(np.array(t.data) for t in reader.tensors if t.name == "token_embd.weight")
        head = rng.standard_normal(embedding.shape).astype(np.float32) * float(embedding.std())
        writer.add_tensor("output.weight", quantized_rows(types["output"], head, rng), raw_dtype=_type(types["output"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 256-wide tiny Llama (rows the k-quants' 256 divide) as GGUFs: F32, the mixed one, and one
    all Q4_1 with a tied head (as the suite's SmolLM2 file, whose embedding is Q8_0)."""
    from edgegate.variants.recipes import _gguf
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("gguf_import")
    folder = build_tiny_llama(root / "tiny", hidden=256)
    _gguf.llama_folder_copy(AutoModelForCausalLM.from_pretrained(folder).eval(), folder / "tokenizer.json",
                            root / "f32.gguf")
    files = {"f32": root / "f32.gguf", "mixed": root / "mixed" / "model.gguf", "q4_1": root / "q4_1" / "model.gguf"}
    for kind, types in (("mixed", MIXED), ("q4_1", {name: "Q4_1" for name in MIXED if name != "output"})):
        files[kind].parent.mkdir()
        write_gguf(root / "f32.gguf", files[kind], types, np.random.default_rng(len(kind)))
    return files


def build(path: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The recipe's build as the factory runs it, from the GGUF file as the base model."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = BaseModel(path.parent, path.name, (path,))
    return RECIPES["gguf_import"].build(BuildContext(base, None, out, params, lambda line: None))


@pytest.fixture(scope="module")
def built(tiny_gguf: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("gguf_import_builds")
    builds = {"mixed": (tiny_gguf["mixed"], 0), "q4_1": (tiny_gguf["q4_1"], 0), "q4_1_level4": (tiny_gguf["q4_1"], 4)}
    return {name: (root / name, build(path, root / name, {"accuracy_level": level}))
            for name, (path, level) in builds.items()}


def hf_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """attn_q / attn_k rows back in Hugging Face's order (transformers' ``_reverse_permute_weights``)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def expected_weight(reader: Any, names: list[str]) -> np.ndarray:
    """ggml's dequantization of the tensors (gguf-py's for F16), Q and K un-permuted, stacked by rows."""
    import gguf

    fields = {key: int(reader.fields[f"llama.attention.{key}"].contents()) for key in ("head_count", "head_count_kv")}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    parts = []
    for name in names:
        tensor = tensors[name]
        if tensor.tensor_type.name in gguf_blocks.DECODERS:  # llama.cpp's own dequantization
            weight = ggml_dequantized(np.asarray(tensor.data), tensor.tensor_type.name)
        else:
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        heads = fields["head_count"] if ".attn_q." in name else fields["head_count_kv"] if ".attn_k." in name else 0
        parts.append(hf_rows(weight, heads) if heads else weight)
    return np.concatenate(parts)


def graph_weight(nodes: list[Any], graph: Any, inits: dict[str, np.ndarray]) -> np.ndarray:
    """The [N, K] weight MatMulNBits or GatherBlockQuantized nodes hold, decoded here from their
    initializers: codes and zero points (two 4-bit ones a byte, low nibble first), scales, and the
    offsets of the MatMul or Gather whose output is added to the node's."""
    from onnx import helper

    parts = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block = attrs["bits"], attrs["block_size"]
        codes = inits[node.input[1] if node.op_type == "MatMulNBits" else node.input[0]]
        scales = inits[node.input[2]].reshape(len(codes), -1)
        zero = np.full(scales.shape, 2 ** (bits - 1)) if len(node.input) <= 3 else inits[node.input[3]]
        if bits == 4:
            codes = np.stack([codes & 15, codes >> 4], axis=-1)
            zero = zero if len(node.input) <= 3 else np.stack([zero & 15, zero >> 4], axis=-1)
        codes = codes.reshape(len(codes), -1, block).astype(np.float64)
        zero = zero.reshape(len(codes), -1)[:, :scales.shape[1]]
        weight = (codes - zero[..., None]) * scales[..., None] + added_offsets(node, graph, inits, scales.shape)[..., None]
        parts.append(weight.reshape(len(codes), -1))
    return np.concatenate(parts)


def added_offsets(node: Any, graph: Any, inits: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """[N, blocks] offsets added to the node's output (found through the graph), or zeros."""
    adds = [n for n in graph.node if n.op_type in ("Add", "Reshape") and node.output[0] in n.input]
    if adds and adds[0].op_type == "Reshape":  # the embedding: rows reshaped into blocks, then the Add
        adds = [n for n in graph.node if n.op_type == "Add" and adds[0].output[0] in n.input]
    if not adds:
        return np.zeros(shape)
    other = next(name for name in adds[0].input if not name.endswith(("/codes", "/blocks")))
    add = next(n for n in graph.node if other in n.output)
    table = next(inits[name] for name in add.input if name in inits)  # [blocks, N] (MatMul) or [vocab, blocks, 1]
    return table.T if add.op_type == "MatMul" else table[..., 0]


def test_the_graph_holds_the_files_tensors(built: dict, tiny_gguf: dict[str, Path]) -> None:
    import gguf
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(built["mixed"][0] / "model.onnx")).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    reader = gguf.GGUFReader(tiny_gguf["mixed"])
    targets = {"/lm_head/MatMul": ["output.weight"]}
    for layer in range(2):
        projections = {"attn/qkv_proj": ("attn_q", "attn_k", "attn_v"), "attn/o_proj": ("attn_output",),
                       "mlp/gate_proj": ("ffn_gate",), "mlp/up_proj": ("ffn_up",), "mlp/down_proj": ("ffn_down",)}
        targets.update({f"/model/layers.{layer}/{p}/MatMul": [f"blk.{layer}.{n}.weight" for n in names]
                        for p, names in projections.items()})
    # layer 0's gate and up (Q4_1, Q4_0: one 4-bit layout) are one node; layer 1's (Q8_0, Q4_K) are not
    gate, up = targets.pop("/model/layers.0/mlp/gate_proj/MatMul"), targets.pop("/model/layers.0/mlp/up_proj/MatMul")
    targets["/model/layers.0/mlp/gate_proj/MatMulMerged"] = gate + up
    kept = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in inits
            and not node.name.endswith("/OffsetMatMul")]
    assert [node.name for node in kept] == ["/model/layers.1/mlp/down_proj/MatMul"]  # the F16 tensor
    names = targets.pop(kept[0].name)
    assert np.array_equal(inits[kept[0].input[1]].T, expected_weight(reader, names))
    for target, names in targets.items():
        nodes = [node for node in graph.node if node.name.startswith(target + "NBits")]
        assert nodes and all(node.op_type == "MatMulNBits" for node in nodes), target
        assert block_share(graph_weight(nodes, graph, inits), expected_weight(reader, names)) <= EXACT, target
    qkv = [node for node in graph.node if node.name.startswith("/model/layers.0/attn/qkv_proj/MatMulNBits")]
    assert [{a.name: a.i for a in n.attribute}["bits"] for n in qkv] == [4, 4, 8]  # Q4_K, Q4_K, Q6_K: a Concat
    gather = [node for node in graph.node if node.op_type == "GatherBlockQuantized"]
    assert len(gather) == 1 and not any(node.op_type == "Gather" and node.input[0] in inits for node in graph.node)
    assert block_share(graph_weight(gather, graph, inits), expected_weight(reader, ["token_embd.weight"])) <= EXACT


def logits_along(model_file: Path, steps: int) -> tuple[list[int], np.ndarray]:
    """Greedy decoding with the runner's in-place KV backend: the tokens, and the logits of the
    prompt's last position and of every step."""
    from edgegate.runner.backends import KvBufferBackend

    backend = KvBufferBackend(str(model_file), ["CPUExecutionProvider"], 1)
    logits, past, _ = backend.step(np.asarray([PROMPT], dtype=np.int64), backend.empty_past(), 0)
    tokens, rows = list(PROMPT), [np.array(logits[0, -1])]
    for _ in range(steps):
        tokens.append(int(np.argmax(rows[-1])))
        logits, past, _ = backend.step(np.asarray([[tokens[-1]]], dtype=np.int64), past, len(tokens) - 1)
        rows.append(np.array(logits[0, -1]))
    return tokens, np.stack(rows)


def torch_logits(gguf_file: Path, tokens: list[int]) -> np.ndarray:
    """transformers' model of the GGUF (dequantized by gguf-py) on ``tokens``, from the prompt's last position."""
    import torch
    from edgegate.variants.base_models import load_for_export

    model, _ = load_for_export(BaseModel(gguf_file.parent, gguf_file.name, (gguf_file,)))
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].numpy()
    return logits[len(PROMPT) - 1:]


@pytest.mark.parametrize("kind", ["mixed", "q4_1"])
def test_imported_graph_decodes_what_torch_computes(built: dict, tiny_gguf: dict[str, Path], kind: str) -> None:
    tokens, got = logits_along(built[kind][0] / "model.onnx", 12)
    expected = torch_logits(tiny_gguf[kind], tokens)
    share = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"{kind}: max |logit diff| {share:.2g} of the largest |logit| over {len(got)} positions")
    assert share < 1e-4  # fp32 noise (GroupQueryAttention sums in another order): measured about 1e-6
    assert np.all(np.argmax(got, axis=-1) == np.argmax(expected, axis=-1))


def test_level_4_computes_with_int8_activations(built: dict, tiny_gguf: dict[str, Path]) -> None:
    """Level 4 on the Q4_1 file: every MatMulNBits takes int8 activations (its zero points are
    integers): near torch's logits, not at fp32 noise as level 0 is."""
    tokens, level4 = logits_along(built["q4_1_level4"][0] / "model.onnx", 12)
    expected = torch_logits(tiny_gguf["q4_1"], tokens)
    share = float(np.abs(level4 - expected).max() / np.abs(expected).max())
    print(f"Q4_1 at level 4 against torch: {share:.2g} of the largest |logit|")
    assert 1e-4 < share < 0.05
    assert built["q4_1_level4"][1]["matmul_activations"] == {"int8": 9}  # 2 layers of 4 (gate and up as one), the head


def test_facts_say_what_was_imported_and_what_was_kept(built: dict) -> None:
    mixed, q4_1 = built["mixed"][1], built["q4_1"][1]
    assert mixed["imported"] == {"MatMulNBits": {"Q4_K": 5, "Q4_1": 3, "Q6_K": 2, "Q4_0": 2, "Q8_0": 2},
                                 "GatherBlockQuantized": {"Q6_K": 1}}
    assert mixed["kept_fp32"] == {"blk.1.ffn_down.weight": "F16: the builder's fp32 weight"}
    assert mixed["import_max_diff"] <= 1e-6 and "kept fp32: blk.1.ffn_down.weight" in mixed["scheme"]
    assert mixed["fused_ops"]["MatMulNBits"] == 11 and mixed["fused_ops"]["GroupQueryAttention"] == 2
    assert q4_1["imported"] == {"MatMulNBits": {"Q4_1": 15}, "GatherBlockQuantized": {"Q4_1": 1}}
    assert q4_1["precision"] == "int4" and q4_1["kept_fp32"] == {}
    assert q4_1["scheme"].startswith("Q4_1 imported bit-exact (MatMulNBits; Q4_1: 4-bit, the minimum as an integer zero point")
    assert "top-1 agreement 1.00" in q4_1["load_check"] and "top-1" in built["q4_1_level4"][1]["load_check"]
    matrices = 4 * (256 * 512 + 256 * 256 + 3 * 256 * 512) * 2 + 4 * 384 * 256  # fp32 bytes: 2 layers, the head
    assert 0.1 * matrices < q4_1["weight_bytes_per_token"] < 0.25 * matrices  # 4 bits, fp32 scale and zero point per 32
    assert set((built["q4_1"][0]).iterdir()) == {built["q4_1"][0] / f for f in ("model.onnx", "model.onnx.data",
                                                                            "tokenizer.json", "genai_config.json")}


def test_refuses_a_folder_and_a_bad_level(tmp_path: Path, tiny_gguf: dict[str, Path]) -> None:
    from edgegate.errors import ConfigError

    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="does not apply to this base model: .* transformers folder"):
        RECIPES["gguf_import"].build(BuildContext(BaseModel(folder, None, ()), None, tmp_path, {"accuracy_level": 0},
                                                  lambda line: None))
    with pytest.raises(ConfigError, match="accuracy_level"):
        build(tiny_gguf["q4_1"], tmp_path / "bad", {"accuracy_level": 7})


def test_a_q4_k_m_file_from_llama_cpp_imports_whole(tiny_gguf: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp's own quantizer (real Q4_K and Q6_K blocks of the model's weights, a Q6_K attn_v
    beside Q4_K Q and K in layer 1): every tensor imported, torch's logits within fp32 noise."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (harness/llama_cpp_build.py)")
    from edgegate.variants.recipes import _gguf

    path = tmp_path / "q4_k_m" / "model.gguf"
    path.parent.mkdir()
    _gguf.quantize(tiny_gguf["f32"], path, "Q4_K_M")
    facts = build(path, tmp_path / "built", {"accuracy_level": 0})
    assert set(facts["imported"]["MatMulNBits"]) == {"Q4_K", "Q6_K"} and facts["kept_fp32"] == {}
    assert facts["imported"]["GatherBlockQuantized"] == {"Q6_K": 1} and facts["gguf_file_type"] == "Q4_K_M"
    tokens, got = logits_along(tmp_path / "built" / "model.onnx", 12)
    expected = torch_logits(path, tokens)
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 1e-4


def test_minimums_become_centred_zero_points() -> None:
    """Q4_1's ``d * q + m`` as ``d * (q - z) + rest``: the same weights bit for bit, z mostly not 0,
    and with int8 activations (level 4) a smaller error than the uncentred z = 0 split gives."""
    import gguf

    rng = np.random.default_rng(11)
    weight = rng.standard_normal((64, 512)).astype(np.float32) * 0.05
    data = quantized_rows("Q4_1", weight, rng)
    weights = gguf_blocks.decode(data, "Q4_1")
    assert np.array_equal(weights.dequantized(), gguf.quants.dequantize(data, _type("Q4_1")))
    assert np.mean(weights.zero_points > 0) > 0.9 and np.all(weights.zero_points <= 15)
    blocks = np.ascontiguousarray(data.reshape(-1, 20))
    minimums = blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(weights.scales.shape)
    uncentred = gguf_blocks.BlockWeights(weights.codes, weights.scales, np.zeros_like(weights.zero_points), minimums,
                                         4, 32)
    assert np.array_equal(uncentred.dequantized(), weights.dequantized())
    x = rng.standard_normal((8, 512)).astype(np.float32)
    exact = x.astype(np.float64) @ weights.dequantized().T.astype(np.float64)

    def error(split: gguf_blocks.BlockWeights) -> float:
        y = matmul_nbits(split, 4).run(None, {"x": x})[0] + offset_term(split, x)
        return float(np.sqrt(np.mean((y - exact) ** 2)))

    print(f"int8 activations, rms error: centred {error(weights):.3g}, z = 0 {error(uncentred):.3g}")
    assert error(weights) < 0.7 * error(uncentred)
