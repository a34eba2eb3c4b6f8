"""Bring a student you trained: an ONNX file, or a transformers folder exported here.

``path`` (relative to the suite file) names either an .onnx file in the runner's causal-LM
layout (see ``bring_your_own.CAUSAL_LM_CONTRACT``) or a transformers causal-LM folder
(config.json and weights), which is exported with the same exporter as the fp32 reference.
The runner then measures it against the suite's reference, its teacher, with the fidelity
metrics every variant gets: perplexity, mean and max KL, top-1 agreement.

Those metrics compare token by token, so the student must share the teacher's vocabulary:
its logits must have as many entries as the teacher's (the parent, the fp32 export), and a
tokenizer.json shipped next to the student must map every token to the same id. Otherwise the
build is refused with a ConfigError naming the suite file and ``params.path``. The artifact
carries the teacher's tokenizer, so both are fed the same token ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import export, graph_passes
from . import bring_your_own
from ._context import TOKENIZER_FILE, BuildContext

NAME = "import_student"
PARENT = "export_fp32"  # the teacher: its vocabulary and tokenizer
TOOLS = ("onnx", "torch", "transformers", "onnxscript")
USES = (bring_your_own, export, graph_passes)  # modules whose code shapes the artifact
DEFAULTS: dict[str, Any] = {"path": None, "opset": 21}
PATH_PARAMS = ("path",)


def build(ctx: BuildContext) -> dict[str, Any]:
    source = ctx.path_param("path")
    teacher = _graph(ctx.parent_model)
    teacher_vocab = onnx_vocab_size(teacher)
    _refuse_other_tokenizer(ctx, source)
    if source.is_dir():
        facts = _export_folder(ctx, source, teacher_vocab)
    else:
        facts = _copy_onnx(ctx, source, teacher_vocab)
    ctx.copy_tokenizer()
    return {**facts, "source": source.name, "vocab_size": teacher_vocab,
            "student_layers": _layers(_graph(ctx.out_model)), "teacher_layers": _layers(teacher)}


def _layers(model: Any) -> int:
    return sum(1 for name in bring_your_own.graph_ports(model, "input") if name.endswith(".key"))


def _graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _copy_onnx(ctx: BuildContext, source: Path, teacher_vocab: int | None) -> dict[str, Any]:
    model = bring_your_own.load_checked(ctx, "path", source)
    bring_your_own.refuse_mismatch(ctx, "path", source, model, bring_your_own.CAUSAL_LM_CONTRACT)
    _refuse_other_vocab(ctx, source.name, onnx_vocab_size(model), teacher_vocab)
    bring_your_own.copy_model(source, model, ctx.out_model)
    return {"kind": "onnx", "parameters": bring_your_own.parameter_count(model)}


def _export_folder(ctx: BuildContext, folder: Path, teacher_vocab: int | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ctx.config_error("path", f"{folder.name} is a folder without config.json; give an .onnx file or a transformers folder")
    vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
    _refuse_other_vocab(ctx, f"{folder.name}/config.json", vocab, teacher_vocab)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    parameters = int(sum(p.numel() for p in model.parameters()))
    export.untie_lm_head(model)
    ctx.log(f"exporting the student {folder.name} ({parameters / 1e6:.1f}M parameters) to ONNX")
    export.export_causal_lm(model, ctx.out_model, opset=int(ctx.params["opset"]))
    return {"kind": "transformers folder", "parameters": parameters, "architecture": type(model).__name__}


def onnx_vocab_size(model: Any) -> int | None:
    """The logits' last dimension, or else the rows of the table input_ids are gathered from."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name == "logits" and dims and dims[-1].HasField("dim_value"):
            return int(dims[-1].dim_value)
    tables = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids" and node.input[0] in tables:
            return int(tables[node.input[0]].dims[0])
    return None


def _refuse_other_vocab(ctx: BuildContext, what: str, vocab: int | None, teacher_vocab: int | None) -> None:
    if vocab is None or teacher_vocab is None:
        raise ctx.config_error("path", f"cannot tell the vocabulary size of {what if vocab is None else 'the teacher'}; "
                                       "the student must share the teacher's vocabulary")
    if vocab != teacher_vocab:
        raise ctx.config_error("path", f"{what} has a vocabulary of {vocab} tokens, the teacher {teacher_vocab}; "
                                       "a student must share the teacher's tokenizer")


def _refuse_other_tokenizer(ctx: BuildContext, source: Path) -> None:
    """A tokenizer.json shipped with the student must give every token the teacher's id."""
    from tokenizers import Tokenizer

    shipped = (source if source.is_dir() else source.parent) / TOKENIZER_FILE
    if not shipped.is_file():
        return
    assert ctx.parent is not None
    teacher = Tokenizer.from_file(str(ctx.parent / TOKENIZER_FILE)).get_vocab()
    student = Tokenizer.from_file(str(shipped)).get_vocab()
    differing = sorted(token for token in set(teacher) | set(student) if teacher.get(token) != student.get(token))
    if differing:
        raise ctx.config_error("path", f"{shipped.parent.name}/{TOKENIZER_FILE} differs from the teacher's tokenizer "
                                       f"in {len(differing)} tokens (e.g. {differing[0]!r})")
