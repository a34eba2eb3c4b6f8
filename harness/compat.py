"""Can this device run this variant? Decided from the device probe and the variant's files,
before anything of the variant is uploaded.

A variant is *unsupported* on a device when the device, as it is, cannot run it: its Python is
older than the runner or the variant's runtime needs, its runtime is older than the one the
variant was built and checked with, or (ONNX) its onnxruntime lacks a kernel for an operator
of the graph in every execution provider asked for, or knows no opset as new as the graph's.
Each reason is one sentence naming what the variant needs, what the device has and what to do.
A runtime that is simply not installed is not "unsupported" but a device not set up: that is an
error, fixed by ``edgegate devices setup``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import runtimes
from .devicecheck import runner_too_old

ONNX_DOMAIN = "ai.onnx"
FIX_RUNTIME = "fix: `edgegate devices setup {device}` installs the versions EdgeGate builds with"


def unsupported(device: str, facts: dict[str, Any], backend: str, model: Path | None,
                providers: Iterable[str] = ()) -> list[str]:
    """Why ``device`` (probed: ``facts``) cannot run a variant of ``backend`` whose file is ``model``;
    [] when it can."""
    too_old = runner_too_old(facts)
    if too_old:
        return [too_old]
    needed = runtimes.needs(backend)
    python_refusal = needed.refusal(str(facts.get("python")))
    if python_refusal:
        return [python_refusal]
    if backend.startswith("onnxruntime"):
        reasons = onnx_reasons(facts, model, tuple(providers)) if model is not None else []
    else:
        reasons = _older_runtime(facts, backend)
    return [f"{'; '.join(reasons)}: {FIX_RUNTIME.format(device=device)}"] if reasons else []


def not_installed(facts: dict[str, Any], backend: str) -> str | None:
    """The runtime's package the device lacks (None when all are there or the probe could not tell)."""
    found = facts.get("distributions")
    if not isinstance(found, dict) or backend.startswith("onnxruntime"):
        return None
    missing = [name for name in runtimes.pinned(backend) if name not in found and name != "torch"]
    return ", ".join(missing) or None


def _older_runtime(facts: dict[str, Any], backend: str) -> list[str]:
    """The runtime's pinned packages the device has in an older version than the variant's build."""
    found = facts.get("distributions") or {}
    reasons = []
    for name, version in runtimes.pinned(backend).items():
        have = found.get(name)
        if have and _version(have) < _version(version):
            reasons.append(f"needs {name} {version} (the variant was built and checked with it); the device has {have}")
    return reasons


def onnx_reasons(facts: dict[str, Any], model: Path, providers: tuple[str, ...]) -> list[str]:
    """Operators without a kernel in the device's onnxruntime, and opsets it does not know."""
    kernels = facts.get("onnx_kernels")
    version = facts.get("onnxruntime")
    if not version or not isinstance(kernels, dict):
        return []  # not installed (a setup error, reported by the probe) or too old to list its kernels
    usable = [p for p in dict.fromkeys((*providers, "CPUExecutionProvider")) if p in kernels]
    graph = graph_needs(model)
    known = facts.get("onnx_opsets") or {}
    reasons = _newer_ir(graph.ir_version, known.get(ONNX_DOMAIN), version)
    reasons += _newer_opsets(graph.opsets, known, version)
    missing = [f"{domain}.{op} (opset {since})" for domain, op, since in graph.operators
               if not any(_has_kernel(kernels[p], domain, op, since) for p in usable)]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        reasons.append(f"needs onnxruntime kernels for {shown}, which onnxruntime {version} on the device lacks "
                       f"(providers: {', '.join(usable)}); onnxruntime {_host_onnxruntime()} here, which built and "
                       f"checked the variant, has them")
    return reasons


def _newer_ir(ir_version: int, opset: int | None, version: str) -> list[str]:
    """The newest ONNX IR version the device's onnxruntime reads: that of the newest ONNX release whose
    opset it knows (onnx's own release table)."""
    from onnx.helper import VERSION_TABLE

    readable = [row[1] for row in VERSION_TABLE if opset is not None and row[2] <= opset]
    if not readable or ir_version <= max(readable):
        return []
    return [f"the file is ONNX IR version {ir_version}; onnxruntime {version} on the device reads up to IR "
            f"{max(readable)} (it knows ai.onnx opsets up to {opset})"]


def _newer_opsets(graph: dict[str, int], known: dict[str, int], version: str) -> list[str]:
    newer = [f"{domain} opset {need} (it knows up to {known[domain]})" for domain, need in sorted(graph.items())
             if domain in known and need > known[domain]]
    if not newer:
        return []
    return [f"the graph imports {', '.join(newer)}, which onnxruntime {version} on the device does not know"]


def _has_kernel(kernels: dict[str, Any], domain: str, op: str, since: int) -> bool:
    return any(start <= since <= end for start, end in kernels.get(domain, {}).get(op, []))


@dataclass(frozen=True)
class GraphNeeds:
    """What a graph asks of a runtime: (domain, operator, the opset its schema dates from), the
    opset of each domain it imports, its ONNX IR version."""

    operators: tuple[tuple[str, str, int], ...]
    opsets: dict[str, int]
    ir_version: int


def graph_needs(model: Path) -> GraphNeeds:
    stat = model.stat()
    return _graph_needs(str(model), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _graph_needs(path: str, _size: int, _mtime: int) -> GraphNeeds:
    """Only operators this machine's onnxruntime has a kernel for are listed: the others are
    functions onnxruntime expands into operators it has, so no device needs a kernel for them."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    opsets = {(entry.domain or ONNX_DOMAIN): entry.version for entry in proto.opset_import}
    here = _host_kernels()
    found = set()
    for node in _nodes(proto.graph):
        domain = node.domain or ONNX_DOMAIN
        since = _since_version(node.op_type, domain, opsets.get(domain, 1))
        if since is not None and any(_has_kernel(provider, domain, node.op_type, since) for provider in here.values()):
            found.add((domain, node.op_type, since))
    return GraphNeeds(tuple(sorted(found)), opsets, int(proto.ir_version))


def _nodes(graph: Any) -> Iterable[Any]:
    """Every node, those of subgraphs (If, Loop, Scan) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _nodes(sub)


def _since_version(op: str, domain: str, opset: int) -> int | None:
    """The version of ``op``'s schema in effect at ``opset`` (what onnxruntime registers kernels by)."""
    import onnx.defs

    try:
        return int(onnx.defs.get_schema(op, opset, "" if domain == ONNX_DOMAIN else domain).since_version)
    except onnx.defs.SchemaError:
        return opset if domain != ONNX_DOMAIN else None  # contrib ops: onnx knows no schema, opset is the version


@lru_cache(maxsize=1)
def _host_kernels() -> dict[str, dict[str, dict[str, list[tuple[int, int]]]]]:
    from onnxruntime.capi import _pybind_state as capi

    kernels: dict[str, dict[str, dict[str, list[tuple[int, int]]]]] = {}
    for kernel in capi.get_all_opkernel_def():
        ops = kernels.setdefault(kernel.provider, {}).setdefault(kernel.domain or ONNX_DOMAIN, {})
        ops.setdefault(kernel.op_name, []).append(tuple(kernel.version_range))
    return kernels


def _host_onnxruntime() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)
