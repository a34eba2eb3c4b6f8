"""Bring your own ONNX model: any file, checked against the input/output contract the suite declares.

``path`` names the .onnx file relative to the suite file (a path out of the suite's folder is
refused). ``contract`` lists the graph's inputs and outputs, each as a list of names or as a
mapping ``name: {dtype: float32, rank: 3}`` (both optional); a name may hold ``*`` wildcards,
e.g. ``past_key_values.*``. The model is loaded and checked with ``onnx.checker``, then every
contract name must match a graph port and every graph port a contract name: the error names
the suite file, the field, the model file and the missing and extra names. The artifact is the
file itself, copied (external data folded in). The tokenizer is ``tokenizer`` (a tokenizer.json
relative to the suite file) or else the suite base model's.

To be measured by EdgeGate's runner the model must follow its causal-LM layout
(``CAUSAL_LM_CONTRACT``: input_ids, attention_mask, past_key_values.*, logits, present.*).
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._context import TOKENIZER_FILE, BuildContext

NAME = "bring_your_own"
PARENT = None
TOOLS = ("onnx", "transformers")
DEFAULTS: dict[str, Any] = {"path": None, "contract": None, "tokenizer": None}
PATH_PARAMS = ("path", "tokenizer")  # relative to the suite file; their contents enter the cache key


@dataclass(frozen=True)
class Port:
    pattern: str  # a name, or an fnmatch pattern
    dtype: str | None = None  # numpy's name: float32, int64, ...
    rank: int | None = None


@dataclass(frozen=True)
class Contract:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]


CAUSAL_LM_CONTRACT = Contract(
    inputs=(Port("input_ids", "int64", 2), Port("attention_mask", "int64", 2), Port("past_key_values.*", None, 4)),
    outputs=(Port("logits", None, 3), Port("present.*", None, 4)),
)


def build(ctx: BuildContext) -> dict[str, Any]:
    source = ctx.path_param("path")
    contract = parse_contract(ctx, ctx.params["contract"])
    model = load_checked(ctx, "path", source)
    refuse_mismatch(ctx, "contract", source, model, contract)
    ctx.log(f"{source.name} matches its contract; copying it into the cache")
    copy_model(source, model, ctx.out_model)
    _tokenizer(ctx)
    return {"source_file": source.name, "inputs": len(graph_ports(model, "input")),
            "outputs": len(graph_ports(model, "output")), "parameters": parameter_count(model),
            "opset": max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=None)}


def parse_contract(ctx: BuildContext, raw: Any) -> Contract:
    if raw is None:
        raise ctx.config_error("contract", "is required: {inputs: [names], outputs: [names]}")
    if not isinstance(raw, dict) or set(raw) != {"inputs", "outputs"}:
        raise ctx.config_error("contract", f"expected a mapping with exactly inputs and outputs, got {raw!r}")
    return Contract(_ports(ctx, "contract.inputs", raw["inputs"]), _ports(ctx, "contract.outputs", raw["outputs"]))


def _ports(ctx: BuildContext, key: str, raw: Any) -> tuple[Port, ...]:
    import numpy as np

    if isinstance(raw, list) and all(isinstance(name, str) for name in raw):
        return tuple(Port(name) for name in raw)
    if not isinstance(raw, dict):
        raise ctx.config_error(key, f"expected a list of names or a mapping name: {{dtype, rank}}, got {raw!r}")
    ports = []
    for name, spec in raw.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"dtype", "rank"}:
            raise ctx.config_error(f"{key}.{name}", f"expected {{dtype: ..., rank: ...}}, got {spec!r}")
        try:
            dtype = np.dtype(spec["dtype"]).name if spec.get("dtype") is not None else None
        except TypeError:
            raise ctx.config_error(f"{key}.{name}.dtype", f"not a dtype: {spec['dtype']!r}") from None
        rank = spec.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ctx.config_error(f"{key}.{name}.rank", f"expected a whole number, got {rank!r}")
        ports.append(Port(str(name), dtype, rank))
    return tuple(ports)


def load_checked(ctx: BuildContext, key: str, path: Path) -> Any:
    """The model's graph (weights not loaded) after ``onnx.checker``; ConfigError if it is no valid model."""
    import onnx

    if not path.is_file():
        raise ctx.config_error(key, f"{path.name} is not a file; give the .onnx file")
    try:
        onnx.checker.check_model(str(path))
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - the checker and protobuf raise several unrelated types
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ctx.config_error(key, f"{path.name} is not a valid ONNX model: {first_line}") from None


def graph_ports(model: Any, kind: str) -> dict[str, tuple[str | None, int | None]]:
    """name -> (dtype, rank) of the graph's inputs (initializers excluded) or outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {init.name for init in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    ports = {}
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None
        ports[value.name] = (dtype, len(tensor.shape.dim) if tensor.HasField("shape") else None)
    return ports


def contract_problems(model: Any, contract: Contract) -> list[str]:
    """What differs between the graph and the contract, one phrase per kind of difference."""
    problems = []
    for kind, wanted in (("input", contract.inputs), ("output", contract.outputs)):
        actual = graph_ports(model, kind)
        missing = [port.pattern for port in wanted if not fnmatch.filter(actual, port.pattern)]
        extra = [name for name in actual if not any(fnmatch.fnmatchcase(name, port.pattern) for port in wanted)]
        problems += [f"missing {kind}s {', '.join(missing)}"] if missing else []
        problems += [f"extra {kind}s {', '.join(extra)}"] if extra else []
        problems += _type_problems(kind, wanted, actual)
    return problems


def _type_problems(kind: str, wanted: tuple[Port, ...], actual: dict[str, tuple[str | None, int | None]]) -> list[str]:
    problems = []
    for port in wanted:
        for name in fnmatch.filter(actual, port.pattern):
            dtype, rank = actual[name]
            if port.dtype is not None and dtype != port.dtype:
                problems.append(f"{kind} {name} is {dtype}, the contract says {port.dtype}")
            if port.rank is not None and rank != port.rank:
                problems.append(f"{kind} {name} has rank {rank}, the contract says {port.rank}")
    return problems


def refuse_mismatch(ctx: BuildContext, key: str, source: Path, model: Any, contract: Contract) -> None:
    problems = contract_problems(model, contract)
    if problems:
        raise ctx.config_error(key, f"{source.name} does not match: {'; '.join(problems)}")


def copy_model(source: Path, model: Any, target: Path) -> None:
    """The file as it is, or re-saved as one file when its weights live in external data files."""
    import onnx

    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=False)
    else:
        shutil.copy2(source, target)


def parameter_count(model: Any) -> int:
    import numpy as np

    return int(sum(np.prod(init.dims, dtype=np.int64) for init in model.graph.initializer))


def _tokenizer(ctx: BuildContext) -> None:
    if ctx.params["tokenizer"] is not None:
        path = ctx.path_param("tokenizer")
        if not path.is_file():
            raise ctx.config_error("tokenizer", f"{path.name} is not a file; give a tokenizer.json")
        shutil.copy2(path, ctx.out_dir / TOKENIZER_FILE)
        return
    save_base_tokenizer(ctx)


def save_base_tokenizer(ctx: BuildContext) -> None:
    """The suite base model's tokenizer as tokenizer.json (read with transformers, GGUF or folder)."""
    from transformers import AutoTokenizer

    base = ctx.base
    if base.gguf_file is None and (base.folder / TOKENIZER_FILE).is_file():
        shutil.copy2(base.folder / TOKENIZER_FILE, ctx.out_dir / TOKENIZER_FILE)
        return
    kwargs: dict[str, Any] = {"gguf_file": base.gguf_file} if base.gguf_file else {}
    scratch = ctx.out_dir / "tokenizer-scratch"
    AutoTokenizer.from_pretrained(base.folder, **kwargs).save_pretrained(scratch)
    shutil.move(str(scratch / TOKENIZER_FILE), ctx.out_dir / TOKENIZER_FILE)
    shutil.rmtree(scratch)
