"""The report's runtime comparison: per device, a runtime x precision table and a speed/accuracy chart.

A suite may build one base model for several runtimes (onnxruntime, LiteRT, LiteRT-LM, ExecuTorch,
llama.cpp) at several precisions. The question this section answers is which runtime, at which
precision, is fastest on this device for the accuracy it keeps, so each cell of the table names its
variants with their decode speed, perplexity against the reference, top-1 agreement, size and verdict.

The runtime comes from the variant's build manifest (``runtime``; a manifest written before runtimes
had names means onnxruntime), else from the runner's ``settings`` event; the precision from the
manifest's ``facts`` (older manifests: the recipe's parameters, or a precision its recipe or variant
name spells out; else "?"). A metric a runtime cannot give (LiteRT-LM gives no logits, so no KL or
top-1) shows "unavailable" with the reason its note gives, never a blank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from markupsafe import Markup

from ..runtimes import RUNTIMES
from . import charts

KEY = ["suite", "device", "variant"]
Key = tuple[str, str, str]
Record = dict[str, Any]
DEFAULT_RUNTIME = "onnxruntime"  # what a manifest without "runtime" was built for
# Backend registry names -> the names users know, in the order the table lists them.
RUNTIME_NAMES: dict[str, str] = {backend: label for backend, (label, _) in RUNTIMES.items()}
PRECISIONS = ("fp32", "fp16", "int8", "int4")
UNKNOWN_PRECISION = "?"
COMPARED = ("kl_mean", "top1_agreement")  # measured against the reference: every variant has them but it
_BITS = {4: "int4", 8: "int8", 16: "fp16", 32: "fp32"}


def _alias(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# Other registry names of the same runtimes (the onnxruntime backend variants), and the users' names.
_ALIASES = {**{_alias(v): v for v in RUNTIME_NAMES.values()}, **{_alias(k): v for k, v in RUNTIME_NAMES.items()},
            "ort": "ONNX Runtime"}


@dataclass(frozen=True)
class Figure:
    """One number of one variant in a cell, or, when ``unavailable``, the reason it has none."""

    label: str
    text: str
    reason: str = ""
    unavailable: bool = False


@dataclass(frozen=True)
class Entry:
    """One variant in a runtime x precision cell: what the table shows and what the chart plots."""

    variant: str
    runtime: str
    precision: str
    scheme: str
    verdict: str
    figures: tuple[Figure, ...]
    point: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One runtime's row: its versions on the device and one tuple of entries per precision column."""

    runtime: str
    versions: str
    cells: tuple[tuple[Entry, ...], ...]


def display_name(runtime: str) -> str:
    """The users' name of a runtime, from its registry name or a settings event's name ("LiteRT")."""
    return _ALIASES.get(_alias(runtime), runtime)


def sections(results: pd.DataFrame, artifacts: pd.DataFrame, statuses: Mapping[Key, str],
             environment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per device: {"device", "precisions", "rows", "chart"}; empty unless the run's variants span
    more than one runtime (a one-runtime run has nothing to compare across runtimes)."""
    if results.empty:
        return []
    latest = results.drop_duplicates([*KEY, "metric"], keep="last")
    measured = {key: {r["metric"]: r for r in group.to_dict("records")}
                for key, group in latest.groupby(KEY, sort=False)}
    entries = _entries(measured, _manifests(artifacts), statuses, environment.get("variants") or {},
                       several_suites=results.suite.nunique() > 1)
    if len({entry.runtime for _, entry in entries}) < 2:
        return []
    devices = dict.fromkeys(key[1] for key, _ in entries)
    return [_section(device, [(k, e) for k, e in entries if k[1] == device], environment.get("variants") or {})
            for device in devices]


def _entries(measured: dict[Key, dict[str, Record]], manifests: dict[tuple[str, str], dict[str, Any]],
             statuses: Mapping[Key, str], settings: Mapping[str, Any], several_suites: bool) -> list[tuple[Key, Entry]]:
    """One entry per suite/device/variant measured in the run."""
    references = _references(measured, settings)
    found = []
    for key, metrics in measured.items():
        suite, _, variant = key
        reference = next((measured[r] for r in references if r[:2] == key[:2]), None)
        found.append((key, _entry(
            f"{suite}/{variant}" if several_suites else variant, metrics, reference, key in references,
            manifests.get((suite, variant)), _settings(settings, key), statuses.get(key, "not judged"))))
    return found


def _settings(settings: Mapping[str, Any], key: Key) -> dict[str, Any]:
    found = settings.get("/".join(key))
    return found if isinstance(found, dict) else {}


def _entry(label: str, metrics: dict[str, Record], reference: dict[str, Record] | None, is_reference: bool,
           manifest: dict[str, Any] | None, settings: dict[str, Any], verdict: str) -> Entry:
    """The variant's cell entry: runtime, precision, scheme, its figures and its chart point."""
    facts = (manifest or {}).get("facts")
    facts = facts if isinstance(facts, dict) else {}
    ratio = None if is_reference else _ratio(metrics, reference)
    figures = (_decode(metrics), _perplexity(metrics, ratio, is_reference), _top1(metrics, is_reference),
               _figure("size", metrics.get("size_mb"), lambda v: f"{charts.num(v)} MB"))
    point = {"variant": label, "decode_tok_s": _decode_value(metrics), "size_mb": _value(metrics.get("size_mb")),
             "top1_agreement": 1.0 if is_reference else _value(metrics.get("top1_agreement")),
             "perplexity_ratio": 1.0 if is_reference else ratio, "perplexity": _value(metrics.get("perplexity"))}
    runtime = _runtime(manifest, settings)
    return Entry(label, runtime, _precision(manifest or {}, label), str(facts.get("scheme") or ""), verdict,
                 figures, {**point, "runtime": runtime})


def _runtime(manifest: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    """The manifest's runtime; without one, the runner's settings event; else onnxruntime (old manifests)."""
    named = (manifest or {}).get("runtime") or settings.get("runtime") or DEFAULT_RUNTIME
    return display_name(str(named))


def _precision(manifest: dict[str, Any], variant: str) -> str:
    """facts.precision; else the recipe's params (precision, bits); else a precision the recipe's or
    the variant's name spells (fp16, int8, q4, 8da4w...); else "?"."""
    facts, params = manifest.get("facts"), manifest.get("params")
    facts = facts if isinstance(facts, dict) else {}
    params = params if isinstance(params, dict) else {}
    for said in (facts.get("precision"), params.get("precision"), _bits(params)):
        if isinstance(said, str) and said.lower() in PRECISIONS:
            return said.lower()
    for name in (str(manifest.get("recipe") or ""), variant):
        named = _named_precision(name)
        if named:
            return named
    return UNKNOWN_PRECISION


def _bits(params: dict[str, Any]) -> str | None:
    for name in ("bits", "weight_bits"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value in _BITS:
            return _BITS[value]
    return None


def _named_precision(name: str) -> str | None:
    """The precision a name spells: fp32/fp16/int8/int4, GGUF's q4_*/q8_*, ExecuTorch's 8da4w."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        if token in PRECISIONS:
            return token
        if token in ("q4", "q8"):
            return f"int{token[1]}"
        if re.fullmatch(r"\d*da[48]w|[48]w", token):
            return f"int{token[-2]}"
    return None


def _references(measured: dict[Key, dict[str, Record]], settings: Mapping[str, Any]) -> set[Key]:
    """Each suite's reference on each device, as the run recorded it in each variant's settings;
    in a history from before it did: the one variant with a perplexity but no KL or top-1 row
    where others have them (the others are compared with it; it is not compared with itself)."""
    named = {(key[0], key[1], _settings(settings, key).get("reference")) for key in measured}
    found: set[Key] = {key for key in named if key in measured}
    for group in dict.fromkeys(key[:2] for key in measured if key[:2] not in {f[:2] for f in found}):
        mine = {key: m for key, m in measured.items() if key[:2] == group}
        compared = [key for key, m in mine.items() if any(name in m for name in COMPARED)]
        bare = [key for key, m in mine.items() if "perplexity" in m and not any(name in m for name in COMPARED)]
        if compared and len(bare) == 1:
            found.add(bare[0])
    return found


def _value(record: Record | None) -> float | None:
    if record is None:
        return None
    value = record.get("value")
    return None if value is None or pd.isna(value) else float(value)


def _reason(record: Record) -> str:
    """A missing value's note without its leading "unavailable:" (the cell already says it)."""
    note = record.get("note")
    text = note if isinstance(note, str) and note else "no reason recorded"
    return re.sub(r"^unavailable\s*[:\-]\s*", "", text)


def _figure(label: str, record: Record | None, shown: Any) -> Figure:
    """``shown(value)``; "not measured" without a row; "unavailable" and its note without a value."""
    if record is None:
        return Figure(label, "not measured", "no row in this run", unavailable=True)
    value = _value(record)
    if value is None:
        return Figure(label, "unavailable", _reason(record), unavailable=True)
    return Figure(label, shown(value))


def _decode_value(metrics: dict[str, Record]) -> float | None:
    """decode tok/s, or 1000 / decode_ms where only the step latency was recorded."""
    speed = _value(metrics.get("decode_tok_s"))
    step = _value(metrics.get("decode_ms"))
    return speed if speed is not None else (1000.0 / step if step else None)


def _decode(metrics: dict[str, Record]) -> Figure:
    """decode tok/s; derived from decode_ms (and said so) when only that was recorded."""
    speed, step = metrics.get("decode_tok_s"), metrics.get("decode_ms")
    if speed is None and _value(step):
        return Figure("decode", f"{charts.num(_decode_value(metrics) or 0.0)} tok/s (1000 / decode_ms)")
    if speed is None and step is not None:
        return _figure("decode", step, charts.num)  # decode_ms unavailable: its reason
    return _figure("decode", speed, lambda v: f"{charts.num(v)} tok/s")


def _ratio(metrics: dict[str, Record], reference: dict[str, Record] | None) -> float | None:
    """Perplexity over the reference's on the same device; None without both."""
    mine, theirs = _value(metrics.get("perplexity")), _value((reference or {}).get("perplexity"))
    return mine / theirs if mine is not None and theirs else None


def _perplexity(metrics: dict[str, Record], ratio: float | None, is_reference: bool) -> Figure:
    record = metrics.get("perplexity")
    if is_reference:
        return _figure("perplexity", record, lambda v: f"{charts.num(v)} (the reference)")
    if ratio is not None:
        return Figure("perplexity", f"×{ratio:.3f} of the reference ({charts.num(_value(record) or 0.0)})")
    return _figure("perplexity", record, charts.num)


def _top1(metrics: dict[str, Record], is_reference: bool) -> Figure:
    if is_reference:
        return Figure("top-1", "the reference")
    return _figure("top-1", metrics.get("top1_agreement"), lambda v: f"{v:.3f}")


def _manifests(artifacts: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """(suite, variant) -> its build manifest (the last recorded in the run)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in artifacts.to_dict("records"):
        try:
            manifest = json.loads(row.get("manifest") or "{}")
        except ValueError:
            continue
        if isinstance(manifest, dict):
            found[(row["suite"], row["variant"])] = {"recipe": row.get("recipe"), **manifest}
    return found


def _section(device: str, entries: list[tuple[Key, Entry]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """One device's table (rows: runtimes in the known order; columns: precisions) and chart."""
    mine = [entry for _, entry in entries]
    columns = [*PRECISIONS, *([UNKNOWN_PRECISION] if any(e.precision not in PRECISIONS for e in mine) else [])]
    known = list(RUNTIME_NAMES.values())
    runtimes = sorted({e.runtime for e in mine}, key=lambda r: (known.index(r) if r in known else len(known), r))
    versions = {runtime: sorted({str(_settings(settings, key).get("version")) for key, e in entries
                                 if e.runtime == runtime and _settings(settings, key).get("version")})
                for runtime in runtimes}
    rows = [Row(runtime, ", ".join(versions[runtime]), tuple(
        tuple(sorted((e for e in mine if e.runtime == runtime and _column(e) == column), key=lambda e: e.variant))
        for column in columns)) for runtime in runtimes]
    points = [e.point for row in rows for cell in row.cells for e in cell]
    chart: Markup = charts.runtime_tradeoff(points, f"Speed vs accuracy by runtime on {device}")
    return {"device": device, "precisions": columns, "rows": rows, "chart": chart}


def _column(entry: Entry) -> str:
    return entry.precision if entry.precision in PRECISIONS else UNKNOWN_PRECISION
