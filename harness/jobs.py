"""The job the runner gets for one variant on one device: what to measure, on which token ids,
with which runtime, and where the reference's outputs are saved on the device.

Tokenizing happens here, on the host: the runner gets token ids. Every variant of a suite is
checked to give the reference's ids, so accuracy compares the same positions across runtimes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from . import evaldata, sentence_pairs
from .errors import BuildError
from .profiles import DeviceProfile
from .suites import Suite, VariantSpec
from .variants.factory import Artifact

SLOWDOWN_ENV = "EDGEGATE_INJECT_SLOWDOWN"  # e.g. 0.10: every timed call takes 10% longer; to test the gate
DevicePath = Callable[..., str]


def job(suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact, reference: Artifact,
        reference_measured: bool, device_path: DevicePath) -> dict[str, Any]:
    """A decoder's or an encoder's job; ``reference_measured``: the reference saved its outputs
    on this device (else a variant is measured without the metrics relative to it)."""
    if suite.base_model.task == "sentence_embedding":
        return embedding_job(suite, device, variant, artifact, reference, reference_measured, device_path)
    return decoder_job(suite, device, variant, artifact, reference, reference_measured, device_path)


def decoder_job(suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact, reference: Artifact,
                reference_measured: bool, device_path: DevicePath) -> dict[str, Any]:
    """Prefill, decode and accuracy on the evaluation text; the reference saves its top log-probs."""
    text = _tokenized(artifact, suite, variant.name)
    if variant.name != suite.reference:
        same_tokens(variant.name, artifact, suite.reference, reference, text, suite)
    accuracy: dict[str, Any] = {"windows": [list(w) for w in text.windows]}
    # Keyed by what determines the reference's log-probs, so each run overwrites, never piles up.
    name = f"{reference.key[:16]}-{text.text_sha256[:12]}-{len(text.windows)}x{len(text.windows[0])}.npz"
    if variant.name == suite.reference:
        accuracy["save_logprobs"] = device_path("logprobs", name)
    elif reference_measured:
        accuracy["reference_logprobs"] = device_path("logprobs", name)
    return {
        **runtime_fields(suite, device, decoder_backend(artifact)),
        "measurements": {
            "prefill": {"prompt_ids": list(text.prompt_ids), **stop_fields(suite.prefill)},
            "decode": {"prompt_ids": list(text.prompt_ids[: suite.decode.prompt_tokens]),
                       "tokens": suite.decode.tokens, **stop_fields(suite.decode)},
            "accuracy": accuracy,
            **({"bandwidth": {"threads": device.threads}} if variant.name == suite.reference else {}),
        },
    }


def _tokenized(artifact: Artifact, suite: Suite, name: str) -> evaldata.TokenizedText:
    try:
        return evaldata.tokenize(artifact.tokenizer, suite.prefill.prompt_tokens, suite.accuracy.windows,
                                 suite.accuracy.window_tokens)
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot tokenize the evaluation text for {name}: {exc}") from None


def embedding_job(suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                  reference: Artifact, reference_measured: bool, device_path: DevicePath) -> dict[str, Any]:
    """A sentence encoder's job: latency of one batch, then every sentence of the similarity set."""
    try:
        pairs = sentence_pairs.tokenize_pairs(artifact.tokenizer, suite.embed.max_tokens)
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot tokenize the sentence-similarity set for {variant.name}: {exc}") from None
    similarity: dict[str, Any] = {"sentences": [list(s) for s in pairs.sentences],
                                  "pairs": [list(p) for p in pairs.pairs], "gold": list(pairs.gold)}
    name = f"{reference.key[:16]}-{pairs.text_sha256[:12]}-{len(pairs.sentences)}x{suite.embed.max_tokens}.npy"
    if variant.name == suite.reference:
        similarity["save_embeddings"] = device_path("embeddings", name)
    elif reference_measured:
        similarity["reference_embeddings"] = device_path("embeddings", name)
    batch = [list(s) for s in pairs.sentences[: suite.embed.batch]]
    return {**runtime_fields(suite, device, "onnxruntime_encoder"), "measurements": {
        "embed": {"sentences": batch, **stop_fields(suite.embed)}, "similarity": similarity}}


def same_tokens(name: str, artifact: Artifact, reference_name: str, reference: Artifact,
                text: evaldata.TokenizedText, suite: Suite) -> None:
    """KL and top-1 compare positions: a variant (another runtime's file, another tokenizer) must
    give the reference's token ids on the evaluation text, or its accuracy would compare other tokens."""
    if artifact.tokenizer.read_bytes() == reference.tokenizer.read_bytes():
        return
    theirs = _tokenized(reference, suite, reference_name)
    ours = [*text.prompt_ids, *(i for w in text.windows for i in w)]
    expected = [*theirs.prompt_ids, *(i for w in theirs.windows for i in w)]
    if ours != expected:
        first = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b), min(len(ours), len(expected)))
        raise BuildError(f"{name}: its tokenizer.json gives other token ids than the reference {reference_name}'s "
                         f"on the evaluation text (first difference at token {first}); its accuracy would "
                         f"compare different tokens")


def decoder_backend(artifact: Artifact) -> str:
    """The runner backend for a decoder: the recipe's runtime; onnxruntime graphs with
    GroupQueryAttention keep their KV cache in place."""
    if artifact.runtime != "onnxruntime":
        return artifact.runtime
    fused = artifact.manifest.get("facts", {}).get("fused_ops", {})
    return "onnxruntime_kv_buffer" if fused.get("GroupQueryAttention") else "onnxruntime"


def runtime_fields(suite: Suite, device: DeviceProfile, backend: str) -> dict[str, Any]:
    return {
        "backend": backend,
        "providers": list(device.execution_providers),
        "threads": device.threads,
        "power": {"kind": device.power_sensor.kind, "command": device.power_sensor.command},
        "inject_slowdown": injected_slowdown(),
        "disturbance": dataclasses.asdict(dataclasses.replace(suite.disturbance, **device.disturbance)),
    }


def injected_slowdown() -> float:
    """The share by which ``EDGEGATE_INJECT_SLOWDOWN`` slows every timed call (0: none)."""
    return float(os.environ.get(SLOWDOWN_ENV) or 0.0)


def stop_fields(spec: Any) -> dict[str, Any]:
    keys = ("warmup", "min_samples", "max_samples", "max_seconds", "target_ci")
    return {key: getattr(spec, key) for key in keys}
