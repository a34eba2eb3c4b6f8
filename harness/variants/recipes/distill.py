"""Distill the base model into a shallower student, then export the student like the reference.

The teacher is the suite's base model loaded with transformers, the same weights the fp32
reference is exported from. The student is the same architecture with ``layers`` decoder layers
(default: half), initialised from the teacher's layers (``init: spread`` takes them evenly
spaced from first to last, ``first`` the first ones), with the teacher's embedding, final norm
and head. It is trained for ``steps`` AdamW steps on the teacher's softened outputs: the loss is
KL(softmax(teacher / T) || softmax(student / T)) * T^2 per position, on random windows of
``seq_len`` tokens from Python's reference manual (``pydoc_data.topics``) minus the sections the
runner evaluates perplexity on and takes its prompt from (``evaldata.EVAL_TOPICS`` and
``PROMPT_TOPICS``), so training and evaluation text are disjoint. The last
``batch_size x seq_len`` tokens of that text are never trained on: the KL at T=1 on them, before
and after training, is the held-out figure in the manifest.

This is a short CPU run meant to exercise a real path and report honest numbers (a few
minutes for SmolLM2-135M on two cores with the defaults), not to make a good student: expect
its perplexity to be far worse than the teacher's.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ...evaldata import EVAL_TOPICS, PROMPT_TOPICS
from .. import export, graph_passes
from ._context import TOKENIZER_FILE, BuildContext

NAME = "distill"
PARENT = None
TOOLS = ("torch", "transformers", "gguf", "onnx", "onnxscript")
USES = (export, graph_passes)  # modules whose code shapes the artifact
DEFAULTS: dict[str, Any] = {"layers": None, "init": "spread", "steps": 20, "temperature": 2.0,
                            "learning_rate": 1e-4, "seq_len": 64, "batch_size": 2, "seed": 0, "opset": 21}
INITS = ("spread", "first")
_LAYER_KEY = re.compile(r"(\.layers\.)(\d+)\.")


def build(ctx: BuildContext) -> dict[str, Any]:
    import torch

    from ..base_models import load_for_export

    params = ctx.params
    torch.manual_seed(int(params["seed"]))
    ctx.log("loading the teacher (the base model) with transformers")
    teacher, tokenizer = load_for_export(ctx.base)
    teacher.requires_grad_(False)
    student, picked = make_student(ctx, teacher)
    ids = torch.tensor(_encode(tokenizer, training_text()), dtype=torch.int64)
    ctx.log(f"student: teacher layers {picked}; {len(ids)} training tokens; {params['steps']} steps")
    started = time.perf_counter()
    facts = distill_loop(ctx, teacher, student, ids)
    train_seconds = time.perf_counter() - started
    student_parameters = _parameters(student)
    export.untie_lm_head(student)
    ctx.log("exporting the student to ONNX with torch.onnx (dynamo)")
    started = time.perf_counter()
    export.export_causal_lm(student.eval(), ctx.out_model, opset=int(params["opset"]))
    _keep_tokenizer_only(ctx, tokenizer)
    return {"teacher": {"architecture": type(teacher).__name__, "layers": teacher.config.num_hidden_layers,
                        "parameters": _parameters(teacher)},
            "student": {"layers": len(picked), "from_teacher_layers": picked, "parameters": student_parameters},
            "parameters_note": "a tied embedding and head counted once (the ONNX export unties the head)",
            **facts, "training_text": "pydoc_data.topics minus the evaluation and prompt sections",
            "text_tokens": len(ids), "train_seconds": round(train_seconds, 1),
            "export_seconds": round(time.perf_counter() - started, 1)}


def pick_layers(ctx: BuildContext, total: int) -> list[int]:
    layers, init = ctx.params["layers"], ctx.params["init"]
    count = max(1, total // 2) if layers is None else layers
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < total:
        raise ctx.config_error("layers", f"must be a whole number from 1 to {total - 1} (the teacher has {total}), got {layers!r}")
    if init not in INITS:
        raise ctx.config_error("init", f"must be one of {', '.join(INITS)}, got {init!r}")
    if init == "first" or count == 1:
        return list(range(count))
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def make_student(ctx: BuildContext, teacher: Any) -> tuple[Any, list[int]]:
    """The teacher's architecture with fewer layers, every weight copied from the teacher."""
    import copy

    config = copy.deepcopy(teacher.config)
    picked = pick_layers(ctx, config.num_hidden_layers)
    config.num_hidden_layers = len(picked)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in picked]
    student = type(teacher)(config)
    state = teacher.state_dict()
    student.load_state_dict({key: state[_LAYER_KEY.sub(lambda m: f"{m[1]}{picked[int(m[2])]}.", key)]
                             for key in student.state_dict()})
    return student, picked


def training_text() -> str:
    """Python's reference manual, without the sections the runner evaluates on or prompts with."""
    from pydoc_data.topics import topics

    held_out = set(EVAL_TOPICS) | set(PROMPT_TOPICS)
    return "\n\n".join(topics[name] for name in sorted(topics) if name not in held_out)


def distill_loop(ctx: BuildContext, teacher: Any, student: Any, ids: Any) -> dict[str, Any]:
    """Train ``student`` on the teacher's softened outputs; held-out KL before and after."""
    import numpy as np
    import torch

    params = ctx.params
    steps, seq_len, batch = int(params["steps"]), int(params["seq_len"]), int(params["batch_size"])
    temperature = float(params["temperature"])
    held_out, train = ids[-batch * seq_len:].reshape(batch, seq_len), ids[: -batch * seq_len]
    if steps < 1:
        raise ctx.config_error("steps", f"must be at least 1, got {steps}")
    if len(train) <= seq_len:
        raise ctx.config_error("seq_len", f"must be under the {len(train)} training tokens, got {seq_len}")
    rng = np.random.default_rng(int(params["seed"]))
    optimizer = torch.optim.AdamW(student.parameters(), lr=float(params["learning_rate"]), weight_decay=0.0)
    before = held_out_kl(teacher, student, held_out)
    losses = []
    student.train()
    for step in range(steps):
        starts = rng.integers(0, len(train) - seq_len, size=batch)
        window = torch.stack([train[s:s + seq_len] for s in starts])
        loss = _soft_kl(student(window).logits, _teacher_logits(teacher, window), temperature) * temperature ** 2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step in (0, steps - 1) or (step + 1) % 10 == 0:
            ctx.log(f"step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    student.eval()
    return {"steps": steps, "temperature": temperature, "tokens_seen": steps * batch * seq_len,
            "held_out_tokens": batch * seq_len,
            "train_loss_first": losses[0], "train_loss_last": losses[-1],
            "train_kl_first": losses[0] / temperature ** 2, "train_kl_last": losses[-1] / temperature ** 2,
            "train_loss_note": "loss = KL(teacher || student) at temperature T times T^2, on that step's batch; "
                               "train_kl = loss / T^2",
            "held_out_kl_before": before, "held_out_kl_after": held_out_kl(teacher, student, held_out)}


def held_out_kl(teacher: Any, student: Any, window: Any) -> float:
    """Mean KL(teacher || student) per position at T=1, as the runner measures it."""
    import torch

    with torch.no_grad():
        return float(_soft_kl(student(window).logits, _teacher_logits(teacher, window), 1.0))


def _teacher_logits(teacher: Any, window: Any) -> Any:
    import torch

    with torch.no_grad():
        return teacher(window).logits


def _soft_kl(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    import torch.nn.functional as F

    student_log = F.log_softmax(student_logits / temperature, dim=-1).flatten(0, -2)
    teacher_log = F.log_softmax(teacher_logits / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")


def _encode(tokenizer: Any, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # no "sequence too long" warning
    if backend is not None:
        return list(backend.encode(text, add_special_tokens=False).ids)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _keep_tokenizer_only(ctx: BuildContext, tokenizer: Any) -> None:
    tokenizer.save_pretrained(ctx.out_dir)
    for extra in ctx.out_dir.iterdir():
        if extra.name not in (TOKENIZER_FILE, ctx.out_model.name):
            extra.unlink()
