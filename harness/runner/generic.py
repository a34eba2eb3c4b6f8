"""Generic ONNX model measurements: latency of one run of its inputs, and its outputs against the
reference variant's on the same inputs.

The host draws the inputs and sends them as an ``.npz`` (inline in the job, base64, or uploaded
beside the model). The reference saves its outputs on the device; every other variant compares
its own with them, output by output: the largest absolute and relative difference, the lowest
cosine similarity of one item (a row of the leading axis), and for classifier-shaped outputs
([N, C], C > 1) the share of items whose top class is the reference's.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from . import disturbance, intervals
from .events import Event, metric
from .measure import contention_metric, sample_until_stopped
from .timing import StopRule

RELATIVE_FLOOR = 1e-3  # relative differences are taken against at least this share of the output's largest value
AGREEMENT = ("output_cosine_min", "output_top1_agreement", "output_max_abs_diff", "output_max_rel_diff")


class GenericBackend(Protocol):
    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]: ...


def read_inputs(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The job's input arrays, from ``npz_base64`` (inline) or ``npz`` (a file on this device)."""
    if "npz_base64" in spec:
        source: Any = io.BytesIO(base64.b64decode(spec["npz_base64"]))
    elif "npz" in spec:
        source = spec["npz"]
    elif "host_folder" in spec:
        raise ValueError("the job names its inputs on the host only (host_folder): the host did not upload them")
    else:
        raise ValueError("the job gives no inputs for the model (npz_base64 or npz)")
    with np.load(source, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def latency(backend: GenericBackend, job: dict[str, Any], feeds: dict[str, np.ndarray],
            sensor: Any = None) -> Iterator[Event]:
    """One run of the inputs, repeated under the prefill stopping rule; items per second from the median."""
    for _ in range(job["warmup"]):
        backend.infer(feeds)
    limits, sysfs_root = disturbance.for_job(job)
    measured = disturbance.until_clean(lambda: _region(backend, feeds, StopRule.from_job(job), sensor),
                                       limits, sysfs_root)
    run_ms, why, sampler = measured.value
    region = disturbance.fields(measured)
    median_ms = float(np.median(run_ms))
    yield metric("infer_ms", median_ms, "ms", run_ms, note=f"{job['shapes']}; stopped at n={len(run_ms)}: {why}",
                 **region)
    yield metric("infer_per_s", job["batch"] / (median_ms / 1e3), "items/s",
                 note=f"{job['batch']} items per run (the leading dimension of the first input)", **region)
    yield contention_metric("infer_contention", measured)
    if sensor is not None:
        yield from _power(sampler.summary(sampler.elapsed_s, len(run_ms)), float(np.mean(run_ms)), region)


def _region(backend: GenericBackend, feeds: dict[str, np.ndarray], rule: StopRule,
            sensor: Any) -> tuple[list[float], str, Any]:
    return sample_until_stopped(rule, sensor, lambda run_ms: run_ms.append(backend.infer(feeds)[1] / 1e6))


def _power(summary: dict[str, Any], mean_ms: float, region: dict[str, Any]) -> Iterator[Event]:
    how = f"while inferring; {summary['method']}, {len(summary['samples'])} samples"
    watts = summary["avg_w"]
    yield metric("power_w", watts, "W", [w for _, w in summary["samples"]] or None, note=how, **region)
    yield metric("power_peak_w", summary["peak_w"], "W", note="while inferring" if summary["peak_w"] is not None
                 else f"while inferring; unavailable: {summary['peak_error']}", **region)
    yield metric("energy_per_infer_j", watts * mean_ms / 1e3 if watts is not None else None, "J",
                 note=f"average power x mean run time; {summary['method']}", **region)


def agreement(backend: GenericBackend, job: dict[str, Any], feeds: dict[str, np.ndarray]) -> Iterator[Event]:
    """The reference saves its outputs; any other variant is compared with the saved ones."""
    outputs = {name: np.asarray(value) for name, value in backend.infer(feeds)[0].items()}
    if job.get("save_outputs"):
        save_npz_atomically(job["save_outputs"], outputs)
        return
    path = job.get("reference_outputs")
    if not path:
        return
    if not os.path.exists(path):
        why = ("unavailable: the reference's outputs on these inputs are not on this device "
               "(it failed or was not measured here)")
        for name in AGREEMENT:
            yield metric(name, None, "", note=why)
        return
    with np.load(path, allow_pickle=False) as archive:
        reference = {name: archive[name] for name in archive.files}
    yield from compare(outputs, reference)


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Iterator[Event]:
    """The four agreement metrics over every output (the worst output's value; each one's in the note)."""
    if set(outputs) != set(reference):
        raise ValueError(f"this variant's outputs {sorted(outputs)} are not the reference's {sorted(reference)}")
    for name, value in outputs.items():
        if value.shape != reference[name].shape:
            raise ValueError(f"output {name} has shape {value.shape}, the reference's {reference[name].shape}")
    pairs = {name: (outputs[name].astype(np.float64), reference[name].astype(np.float64)) for name in outputs}
    yield _worst("output_max_abs_diff", {n: float(np.max(np.abs(a - r), initial=0.0)) for n, (a, r) in pairs.items()},
                 max)
    yield _worst("output_max_rel_diff", {n: max_relative_difference(a, r) for n, (a, r) in pairs.items()}, max)
    yield _worst("output_cosine_min", {n: float(item_cosines(a, r).min()) for n, (a, r) in pairs.items()}, min)
    yield _top1(pairs)


def _worst(name: str, per_output: dict[str, float], pick: Any) -> Event:
    worst = pick(per_output.values())
    shown = "; ".join(f"{output}: {value:.6g}" for output, value in per_output.items())
    return metric(name, worst, "", note=f"over {len(per_output)} output(s): {shown}")


def _top1(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Event:
    """Top-1 agreement of the classifier-shaped outputs, with a bootstrap interval over items."""
    classifiers = {n: (a, r) for n, (a, r) in pairs.items() if a.ndim == 2 and a.shape[1] > 1}
    if not classifiers:
        return metric("output_top1_agreement", None, "", note="unavailable: no output is shaped [N, C] with C > 1")
    matches = {n: np.argmax(a, axis=1) == np.argmax(r, axis=1) for n, (a, r) in classifiers.items()}
    worst = min(matches, key=lambda n: float(matches[n].mean()))
    rows = matches[worst]
    interval = intervals.bootstrap(len(rows), lambda i: float(rows[i].mean()))
    how = f"bootstrap over {len(rows)} items"
    shown = "; ".join(f"{n}: {int(m.sum())}/{len(m)}" for n, m in matches.items())
    span = f"; 95% interval {interval[0]:.4g}-{interval[1]:.4g} ({how})" if interval else ""
    return metric("output_top1_agreement", float(rows.mean()), "", note=f"{shown}{span}",
                  **intervals.fields(interval, how))


def item_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of each item (row of the leading axis, flattened) with the same item of
    ``second``; a scalar output is one item. Two all-zero items agree (1.0)."""
    a = first.reshape(first.shape[0], -1) if first.ndim > 1 else first.reshape(1, -1)
    b = second.reshape(a.shape)
    dots, norms = (a * b).sum(axis=1), np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(both_zero, 1.0, dots / np.maximum(norms, 1e-300))


def max_relative_difference(values: np.ndarray, reference: np.ndarray) -> float:
    """max |v - r| / max(|r|, RELATIVE_FLOOR x max|r|): values near zero do not turn a tiny
    absolute error into a huge relative one."""
    if values.size == 0:
        return 0.0
    scale = float(np.max(np.abs(reference)))
    if scale == 0.0:
        return 0.0 if np.all(values == 0) else float("inf")
    floor = np.maximum(np.abs(reference), RELATIVE_FLOOR * scale)
    return float(np.max(np.abs(values - reference) / floor))


def save_npz_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
