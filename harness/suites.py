"""Suites: which base model, which variants by recipe, what to measure, which thresholds."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Fields, contained_path, load_yaml_mapping
from .errors import ConfigError
from .gate import Threshold, parse_thresholds
from .generic_inputs import GenericInputs
from .generic_inputs import parse as parse_generic_inputs
from .metrics import METRICS
from .modelspec import BASE_MODEL_KINDS, GENERIC_KINDS, BaseModelSpec
from .regression import DEFAULT_RULES, RegressionRule
from .runner.disturbance import (
    Limits as DisturbanceSpec,  # one definition for the runner and the host
)

SUITE_SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Expectation:
    """A known outcome: the variant is expected to be blocked (pytest xfail), for ``reason``.

    ``devices`` limits it to those devices (empty: every device); ``strict`` makes an
    unexpected ship (XPASS) fail the test. A regression against its own baseline still fails.
    """

    blocked: str
    strict: bool = False
    devices: tuple[str, ...] = ()

    def applies_to(self, device: str) -> bool:
        return not self.devices or device in self.devices


@dataclass(frozen=True)
class VariantSpec:
    name: str
    recipe: str
    params: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, tuple[Threshold, ...]] = field(default_factory=dict)
    parent: str | None = None  # another variant of the suite to build on, instead of the recipe's PARENT
    expect: Expectation | None = None

    def expected_blocked(self, device: str) -> Expectation | None:
        return self.expect if self.expect is not None and self.expect.applies_to(device) else None


@dataclass(frozen=True)
class PrefillSpec:
    """One prefill of ``prompt_tokens``, repeated until the median's 95% CI is within
    ``target_ci`` (0: exactly ``min_samples``), capped by count and time."""

    prompt_tokens: int = 128
    warmup: int = 2
    min_samples: int = 10
    max_samples: int = 200
    max_seconds: float = 30.0
    target_ci: float = 0.01


@dataclass(frozen=True)
class DecodeSpec:
    """``tokens`` greedy steps after a prompt of ``prompt_tokens`` (the context depth); a sample
    is one step, rounds repeat under the same stopping rule as prefill."""

    prompt_tokens: int = 64
    tokens: int = 32
    warmup: int = 1
    min_samples: int = 64
    max_samples: int = 2000
    max_seconds: float = 60.0
    target_ci: float = 0.01


@dataclass(frozen=True)
class EmbedSpec:
    """Sentence embedding: ``batch`` sentences of the similarity set per call, padded to the
    longest, repeated under the same stopping rule as prefill; accuracy embeds the whole set."""

    batch: int = 8
    max_tokens: int = 128
    warmup: int = 2
    min_samples: int = 10
    max_samples: int = 200
    max_seconds: float = 20.0
    target_ci: float = 0.01


@dataclass(frozen=True)
class InferSpec:
    """A generic ONNX model: one ``session.run`` of ``inputs``, repeated under the same stopping
    rule as prefill; its outputs on the same inputs are compared with the reference's."""

    warmup: int = 2
    min_samples: int = 10
    max_samples: int = 200
    max_seconds: float = 20.0
    target_ci: float = 0.01
    inputs: GenericInputs | None = None  # declared (shape, dtype, range) or an .npz: harness/generic_inputs.py


@dataclass(frozen=True)
class AccuracySpec:
    windows: int = 2
    window_tokens: int = 256


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    base_model: BaseModelSpec
    reference: str
    variants: tuple[VariantSpec, ...]
    prefill: PrefillSpec = PrefillSpec()
    decode: DecodeSpec = DecodeSpec()
    accuracy: AccuracySpec = AccuracySpec()
    embed: EmbedSpec = EmbedSpec()
    infer: InferSpec = InferSpec()
    thresholds: dict[str, tuple[Threshold, ...]] = field(default_factory=dict)
    description: str = ""
    regressions: dict[str, RegressionRule] = field(default_factory=dict)
    # when a timed region counts as disturbed and how often it is measured again; a profile may override
    disturbance: DisturbanceSpec = DisturbanceSpec()

    def variant(self, name: str) -> VariantSpec:
        for spec in self.variants:
            if spec.name == name:
                return spec
        raise KeyError(name)


def load_suite(path: Path) -> Suite:
    """Read one suite file; every problem raises ConfigError naming the file and the field."""
    from .variants.recipes import RECIPES  # recipes import their heavy tools lazily

    fields = Fields(path, "", load_yaml_mapping(path))
    schema = fields.get("schema", int, SUITE_SCHEMA)
    if schema != SUITE_SCHEMA:
        raise ConfigError(path, "schema", f"version {schema} is not supported (this EdgeGate reads {SUITE_SCHEMA}); upgrade EdgeGate")
    variants = _variants(fields.sub("variants", required=True), RECIPES)
    reference = fields.get("reference", str)
    if reference not in {spec.name for spec in variants}:
        raise ConfigError(path, "reference", f"names no variant of this suite: {reference!r}")
    measure = fields.sub("measurements")
    base_model = _base_model(fields.sub("base_model", required=True))
    suite = Suite(
        name=_name(fields, "name", path.stem.removeprefix("suite_")),
        path=path,
        base_model=base_model,
        reference=reference,
        variants=variants,
        prefill=_spec(measure.sub("prefill"), PrefillSpec),
        decode=_spec(measure.sub("decode"), DecodeSpec),
        accuracy=_spec(measure.sub("accuracy"), AccuracySpec),
        embed=_spec(measure.sub("embed"), EmbedSpec),
        infer=_infer(measure.sub("infer"), base_model),
        thresholds=parse_thresholds(path, "thresholds", fields.get("thresholds", dict, {})),
        description=fields.get("description", str, ""),
        regressions=_regressions(fields.sub("regressions")),
        disturbance=_spec(fields.sub("disturbance"), DisturbanceSpec),
    )
    measure.finish()
    fields.finish()
    return suite


def _infer(fields: Fields, base_model: BaseModelSpec) -> InferSpec:
    """``measurements.infer``: what a generic model is fed (required for one), and the stopping rule."""
    inputs = parse_generic_inputs(fields)
    if base_model.task == "generic" and inputs is None:
        raise ConfigError(fields.path, fields.prefix, f"a {base_model.kind} base model needs its inputs: "
                                                      f"inputs: {{name: {{shape: [...], dtype: float32}}}} or inputs_npz")
    if base_model.task != "generic" and fields.data:
        raise ConfigError(fields.path, fields.prefix, f"measures generic ONNX models ({', '.join(GENERIC_KINDS)}); "
                                                      f"this base model is a {base_model.kind}")
    return dataclasses.replace(_spec(fields, InferSpec), inputs=inputs)


def _regressions(fields: Fields) -> dict[str, RegressionRule]:
    """The default rules, with the suite's changes: ``{metric: {max_change, alpha, min_abs_change}}``
    or ``{metric: false}`` to turn a rule off."""
    rules = dict(DEFAULT_RULES)
    for metric in list(fields.data):
        if metric not in METRICS:
            raise ConfigError(fields.path, fields.name(metric), f"unknown metric; known: {', '.join(METRICS)}")
        if fields.data[metric] is False:  # `metric: false` turns its rule off
            fields.get(metric, bool)
            rules.pop(metric, None)
            continue
        entry = fields.sub(metric, required=True)
        base = rules.get(metric, RegressionRule(metric, 0.05))
        rules[metric] = RegressionRule(
            metric,
            float(entry.number("max_change", base.max_change, minimum=0)),
            float(entry.number("alpha", base.alpha, minimum=0)),
            float(entry.number("min_abs_change", base.min_abs_change, minimum=0)),
        )
        entry.finish()
    return rules


def _name(fields: Fields, key: str, default: str) -> str:
    value = fields.get(key, str, default)
    if not _NAME.match(value):
        raise ConfigError(fields.path, fields.name(key), f"{value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def _variants(fields: Fields, recipes: dict[str, Any]) -> tuple[VariantSpec, ...]:
    specs = []
    for name in list(fields.data):
        if not _NAME.match(str(name)):
            raise ConfigError(fields.path, fields.name(str(name)), "variant names use letters, digits, '.', '_' and '-' only")
        entry = fields.sub(name, required=True)
        recipe = entry.get("recipe", str)
        if recipe not in recipes:
            raise ConfigError(fields.path, entry.name("recipe"), f"unknown recipe {recipe!r}; known: {', '.join(sorted(recipes))}")
        params = dict(entry.get("params", dict, {}))
        for key in params:
            if key not in recipes[recipe].DEFAULTS:
                known = ", ".join(recipes[recipe].DEFAULTS) or "none"
                raise ConfigError(fields.path, f"{entry.name('params')}.{key}", f"recipe {recipe} has no such parameter; it takes: {known}")
        for key in getattr(recipes[recipe], "PATH_PARAMS", ()):
            if params.get(key) is not None:
                contained_path(fields.path, f"{entry.name('params')}.{key}", params[key])
        specs.append(VariantSpec(
            name=name,
            recipe=recipe,
            params=params,
            thresholds=parse_thresholds(fields.path, entry.name("thresholds"), entry.get("thresholds", dict, {})),
            parent=entry.get("parent", str, None),
            expect=_expectation(entry.sub("expect")) if "expect" in entry.data else None,
        ))
        entry.finish()
    if not specs:
        raise ConfigError(fields.path, fields.prefix, "declares no variant")
    _check_parents(fields, specs, recipes)
    return tuple(specs)


def _expectation(fields: Fields) -> Expectation:
    """``expect: {blocked: "why", strict: false, devices: [...]}``."""
    reason = fields.get("blocked", str)
    if not reason.strip():
        raise ConfigError(fields.path, fields.name("blocked"), "give the reason the variant is expected to be blocked")
    expectation = Expectation(reason, fields.get("strict", bool, False), fields.string_list("devices", []))
    fields.finish()
    return expectation


def _check_parents(fields: Fields, specs: list[VariantSpec], recipes: dict[str, Any]) -> None:
    """A ``parent:`` names another variant, of a recipe that takes a parent, without a cycle."""
    by_name = {spec.name: spec for spec in specs}
    for spec in specs:
        where = f"{fields.name(spec.name)}.parent"
        if spec.parent is not None and (spec.parent not in by_name or spec.parent == spec.name):
            raise ConfigError(fields.path, where, f"names no other variant of this suite: {spec.parent!r}")
        if spec.parent is not None and recipes[spec.recipe].PARENT is None:
            raise ConfigError(fields.path, where, f"recipe {spec.recipe} builds from the base model and takes no parent")
    for spec in specs:
        if spec.parent is None:
            continue
        where = f"{fields.name(spec.name)}.parent"
        seen, step = {spec.name}, by_name[spec.parent]
        while step.parent is not None:
            if step.parent in seen:
                raise ConfigError(fields.path, where, f"parents form a cycle through {step.parent!r}")
            seen.add(step.name)
            step = by_name[step.parent]


def _base_model(fields: Fields) -> BaseModelSpec:
    kind = fields.get("kind", str)
    if kind not in BASE_MODEL_KINDS:
        raise ConfigError(fields.path, fields.name("kind"), f"must be one of {', '.join(BASE_MODEL_KINDS)}, got {kind!r}")
    from_package = kind.endswith("_package")
    spec = BaseModelSpec(
        kind=kind,
        package=fields.get("package", str) if from_package else None,
        file=fields.get("file", str) if kind.startswith("gguf") or kind == "onnx_package" else None,
        path=_contained_path(fields, "path") if not from_package else None,
        note=fields.get("note", str, ""),
        folder=fields.get("folder", str) if kind == "sentence_transformers_package" else None,
    )
    if spec.folder is not None and (Path(spec.folder).is_absolute() or ".." in Path(spec.folder).parts):
        raise ConfigError(fields.path, fields.name("folder"), f"must be a folder inside the package, got {spec.folder!r}")
    if spec.kind == "onnx_package" and (Path(spec.file or "").is_absolute() or ".." in Path(spec.file or "").parts
                                        or not (spec.file or "").endswith(".onnx")):
        raise ConfigError(fields.path, fields.name("file"), f"must be an .onnx file inside the package, got {spec.file!r}")
    if spec.kind.startswith("gguf") and spec.file is not None and (Path(spec.file).name != spec.file
                                                                   or spec.file in ("", ".", "..")):
        raise ConfigError(fields.path, fields.name("file"), f"must be a plain file name, got {spec.file!r}")
    fields.finish()
    return spec


def _contained_path(fields: Fields, key: str) -> Path:
    """A path relative to the suite's folder that must not escape it."""
    return contained_path(fields.path, fields.name(key), fields.get(key, str))


ZERO_ALLOWED = ("warmup", "retries")


def disturbance_overrides(fields: Fields) -> dict[str, Any]:
    """The ``disturbance`` keys a device profile sets, checked like a suite's; the rest stay the suite's."""
    given = set(fields.data)
    spec = _spec(fields, DisturbanceSpec)
    return {name: getattr(spec, name) for name in DisturbanceSpec.__dataclass_fields__ if name in given}


def _spec(fields: Fields, spec_type: type) -> Any:
    """A measurement spec from its fields: whole numbers >= 1 (warm-up, retries >= 0), fractions >= 0."""
    defaults = spec_type()
    values: dict[str, Any] = {}
    for name, field_info in spec_type.__dataclass_fields__.items():
        if field_info.type not in ("int", "float"):  # e.g. InferSpec.inputs: read by its own parser
            continue
        whole = field_info.type == "int"
        value = fields.number(name, getattr(defaults, name), minimum=1 if whole and name not in ZERO_ALLOWED else 0)
        if whole and value != int(value):
            raise ConfigError(fields.path, fields.name(name), f"must be a whole number, got {value!r}")
        values[name] = int(value) if whole else float(value)
    fields.finish()
    spec = spec_type(**values)
    if getattr(spec, "max_samples", 1) < getattr(spec, "min_samples", 0):
        raise ConfigError(fields.path, fields.name("max_samples"), "must be at least min_samples")
    return spec
