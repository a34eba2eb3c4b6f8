"""The job the runner gets for one variant on one device: what to measure, on which token ids
(or, for a generic ONNX model, on which input arrays), with which runtime, and where the
reference's outputs are saved on the device.

Tokenizing happens here, on the host: the runner gets token ids. Every variant of a suite is
checked to give the reference's ids, so accuracy compares the same positions across runtimes.
A generic model's inputs are drawn here too and travel in the job as an ``.npz``: inline up to
``INLINE_INPUTS_BYTES``, else written under the cache and uploaded by ``stage_files``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from . import evaldata, generic_inputs, sentence_pairs
from .errors import BuildError
from .profiles import DeviceProfile
from .runner.protocol import PROTOCOL_VERSION
from .suites import Suite, VariantSpec
from .variants.factory import Artifact

SLOWDOWN_ENV = "EDGEGATE_INJECT_SLOWDOWN"  # e.g. 0.10: every timed call takes 10% longer; to test the gate
INLINE_INPUTS_BYTES = 16 * 1024 * 1024  # a generic model's inputs up to this size travel inside the job
INPUTS_FILE = "inputs.npz"
DevicePath = Callable[..., str]


def job(suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact, reference: Artifact,
        reference_measured: bool, device_path: DevicePath) -> dict[str, Any]:
    """A decoder's or an encoder's job; ``reference_measured``: the reference saved its outputs
    on this device (else a variant is measured without the metrics relative to it)."""
    if suite.base_model.task == "sentence_embedding":
        return embedding_job(suite, device, variant, artifact, reference, reference_measured, device_path)
    if suite.base_model.task == "generic":
        return generic_job(suite, device, variant, artifact, reference, device_path)
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


def generic_job(suite: Suite, device: DeviceProfile, variant: VariantSpec, artifact: Artifact,
                reference: Artifact, device_path: DevicePath) -> dict[str, Any]:
    """A generic model's job: one run of its inputs, timed; its outputs against the reference's.

    Every variant but the reference names the reference's saved outputs, whether or not the
    reference was measured in this run: the file is named by the reference's build and the
    inputs' content and written whole or not at all, so whatever is there is that build's
    outputs on these inputs on this device, and where nothing is the runner says so.
    """
    assert suite.infer.inputs is not None  # load_suite insists on them for a generic model
    arrays = generic_inputs.arrays(suite.infer.inputs, artifact.model)
    packed = generic_inputs.pack(arrays)
    digest = hashlib.sha256(packed).hexdigest()
    outputs_file = device_path("outputs", f"{reference.key[:16]}-{digest[:16]}.npz")
    agreement = {"save_outputs" if variant.name == suite.reference else "reference_outputs": outputs_file}
    infer = {"batch": generic_inputs.batch_size(arrays), "shapes": generic_inputs.describe(arrays),
             **stop_fields(suite.infer)}
    return {**runtime_fields(suite, device, "onnxruntime_generic"), "inputs": _inputs_field(packed, digest, artifact),
            "measurements": {"infer": infer, "agreement": agreement}}


def _inputs_field(packed: bytes, digest: str, artifact: Artifact) -> dict[str, Any]:
    """The inputs inline (base64 of the .npz), or, when large, a file under the cache for ``stage_files``."""
    if len(packed) <= INLINE_INPUTS_BYTES:
        return {"npz_base64": base64.b64encode(packed).decode("ascii"), "sha256": digest}
    folder = artifact.folder.parents[1] / "inputs" / digest[:32]  # <cache>/variants/<variant> -> <cache>/inputs
    if not (folder / INPUTS_FILE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        scratch = folder / f"{INPUTS_FILE}.tmp-{os.getpid()}"
        scratch.write_bytes(packed)
        scratch.replace(folder / INPUTS_FILE)
    return {"host_folder": str(folder), "sha256": digest}


def stage_files(job: dict[str, Any], transport: Any) -> None:
    """Upload what the job names on the host (a generic model's large inputs) and name it on the device."""
    inputs = job.get("inputs") or {}
    if "host_folder" in inputs:
        remote = transport.stage(Path(inputs.pop("host_folder")), {INPUTS_FILE: inputs["sha256"]})
        inputs["npz"] = str(PurePosixPath(remote, INPUTS_FILE))


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
    """What every job carries (runner/protocol.py ``Job``), whatever it measures."""
    return {
        "protocol": PROTOCOL_VERSION,  # a runner that does not speak it refuses the job
        "backend": backend,
        "providers": list(device.execution_providers),
        "threads": device.threads,
        "power": {**device.power_sensor.settings, "kind": device.power_sensor.kind,
                  "command": device.power_sensor.command},
        "inject_slowdown": injected_slowdown(),
        "disturbance": dataclasses.asdict(dataclasses.replace(suite.disturbance, **device.disturbance)),
    }


def injected_slowdown() -> float:
    """The share by which ``EDGEGATE_INJECT_SLOWDOWN`` slows every timed call (0: none)."""
    return float(os.environ.get(SLOWDOWN_ENV) or 0.0)


def stop_fields(spec: Any) -> dict[str, Any]:
    keys = ("warmup", "min_samples", "max_samples", "max_seconds", "target_ci")
    return {key: getattr(spec, key) for key in keys}
