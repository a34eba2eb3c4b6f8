"""A generic ONNX model's inputs: declared in the suite (shape, dtype, value range) or shipped as
an ``.npz``, checked against the graph's own inputs, drawn from a seeded generator, packed for the job.

The suite reads ``measurements.infer``'s input keys here for their form only; the checks against
the graph (names, rank, fixed dimensions, dtypes) need the model file, so they run when a job or
a calibration set is made. Every problem is a ConfigError naming the suite file and the field.

The host draws the values (numpy's PCG64 ``Generator``, seeded from the suite) and the device only
reads them from the job: a device's numpy cannot change what a variant is fed, and every variant
and every run gets the same values.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import Fields, contained_path
from .errors import ConfigError

FIELD = "measurements.infer"
FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64")
DTYPES = (*FLOAT_DTYPES, *INT_DTYPES, "bool")
DEFAULT_RANGE = (0.0, 1.0)  # floats: uniform in [0, 1); ints: 0 or 1
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
Shape = tuple[int | str, ...]


@dataclass(frozen=True)
class InputSpec:
    """One declared input: its shape (whole numbers, or names given values under ``dims``), dtype
    and the range its values are drawn from (ints: both ends included)."""

    name: str
    shape: Shape
    dtype: str = "float32"
    value_range: tuple[float, float] = DEFAULT_RANGE


@dataclass(frozen=True)
class GenericInputs:
    """What a generic model is fed: declared inputs drawn with ``seed``, or the arrays of ``npz``."""

    suite_file: Path
    specs: tuple[InputSpec, ...] = ()
    dims: tuple[tuple[str, int], ...] = ()
    seed: int = 0
    npz: Path | None = None
    field: str = FIELD  # where errors point: measurements.infer, or a recipe's params (its calibration file)
    npz_key: str = "inputs_npz"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.suite_file, f"{self.field}.{key}", problem)


@dataclass(frozen=True)
class GraphInput:
    dtype: str
    shape: tuple[int | str | None, ...]  # a whole number where the graph fixes it, else its name (or None)

    def describe(self) -> str:
        return f"[{', '.join('?' if d is None else str(d) for d in self.shape)}] {self.dtype}"


def parse(fields: Fields) -> GenericInputs | None:
    """``inputs`` or ``inputs_npz``, with ``dims`` and ``seed``, from ``measurements.infer``; None
    when neither is given. The timing keys are left to the caller (and its ``finish``)."""
    has_inputs, has_npz = "inputs" in fields.data, "inputs_npz" in fields.data
    if has_inputs and has_npz:
        raise ConfigError(fields.path, fields.name("inputs_npz"), "give inputs or inputs_npz, not both")
    for key in ("dims", "seed"):
        if key in fields.data and not has_inputs:
            raise ConfigError(fields.path, fields.name(key), "applies to declared inputs only (an inputs_npz fixes "
                                                             "shapes and values): give inputs")
    if not (has_inputs or has_npz):
        return None
    dims = _dims(fields.sub("dims"))
    seed = fields.number("seed", 0, minimum=0)
    if seed != int(seed):
        raise ConfigError(fields.path, fields.name("seed"), f"must be a whole number, got {seed!r}")
    if has_npz:
        return GenericInputs(fields.path, (), dims, int(seed), _npz_path(fields))
    return GenericInputs(fields.path, _specs(fields.sub("inputs", required=True)), dims, int(seed))


def _npz_path(fields: Fields) -> Path:

    path = contained_path(fields.path, fields.name("inputs_npz"), fields.get("inputs_npz", str))
    if not path.is_file():
        raise ConfigError(fields.path, fields.name("inputs_npz"),
                          f"{fields.data['inputs_npz']!r} does not exist ({path})")
    return path


def _dims(fields: Fields) -> tuple[tuple[str, int], ...]:
    values = []
    for name in list(fields.data):
        value = fields.number(str(name), minimum=1)
        if value != int(value):
            raise ConfigError(fields.path, fields.name(str(name)), f"must be a whole number, got {value!r}")
        values.append((str(name), int(value)))
    fields.finish()
    return tuple(values)


def _specs(fields: Fields) -> tuple[InputSpec, ...]:
    specs = []
    for name in list(fields.data):
        entry = fields.sub(str(name), required=True)
        dtype = entry.get("dtype", str, "float32")
        if dtype not in DTYPES:
            raise ConfigError(entry.path, entry.name("dtype"), f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        specs.append(InputSpec(str(name), _shape(entry), dtype, _range(entry, dtype)))
        entry.finish()
    if not specs:
        raise ConfigError(fields.path, fields.prefix, "declares no input")
    return tuple(specs)


def _shape(entry: Fields) -> Shape:
    raw = entry.get("shape", list)
    for index, dim in enumerate(raw):
        whole = isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1
        if not whole and not (isinstance(dim, str) and _DIM_NAME.match(dim)):
            raise ConfigError(entry.path, f"{entry.name('shape')}[{index}]",
                              f"expected a whole number >= 1 or a dimension name, got {dim!r}")
    return tuple(raw)


def _range(entry: Fields, dtype: str) -> tuple[float, float]:
    if "range" not in entry.data:
        return DEFAULT_RANGE
    where = entry.name("range")
    if dtype == "bool":
        raise ConfigError(entry.path, where, "a bool input takes no range (its values are drawn False or True)")
    raw = entry.get("range", list)
    numbers = len(raw) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    if not numbers or not np.all(np.isfinite(raw)) or raw[0] > raw[1] or (dtype in FLOAT_DTYPES and raw[0] == raw[1]):
        raise ConfigError(entry.path, where, f"expected [low, high] with low < high, got {raw!r}")
    if dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        if raw[0] != int(raw[0]) or raw[1] != int(raw[1]) or raw[0] < info.min or raw[1] > info.max:
            raise ConfigError(entry.path, where, f"an {dtype} input needs whole numbers within "
                                                 f"[{info.min}, {info.max}], got {raw!r}")
    return float(raw[0]), float(raw[1])


def graph_inputs(model: Path) -> dict[str, GraphInput]:
    """The graph's inputs (initializers excluded), in its order, with dtypes and declared dimensions."""
    stat = model.stat()
    return dict(_graph_inputs(str(model), stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=16)
def _graph_inputs(path: str, _size: int, _mtime: int) -> tuple[tuple[str, GraphInput], ...]:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(path, load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    found = []
    for value in graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        # a dim_value <= 0 (older exporters write -1 for a free batch) fixes nothing
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                     for d in tensor.shape.dim)
        found.append((value.name, GraphInput(str(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))), dims)))
    return tuple(found)


def arrays(inputs: GenericInputs, model: Path, seed: int | None = None) -> dict[str, np.ndarray]:
    """The arrays ``model`` is fed, checked against its graph; ``seed`` replaces the suite's
    (a calibration set is drawn apart from the measured inputs)."""
    graph = graph_inputs(model)
    if inputs.npz is not None:
        return _from_npz(inputs, graph)
    shapes = _resolved_shapes(inputs, graph)
    rng = np.random.default_rng(inputs.seed if seed is None else seed)
    return {spec.name: _draw(rng, spec, shapes[spec.name]) for spec in inputs.specs}


def _resolved_shapes(inputs: GenericInputs, graph: dict[str, GraphInput]) -> dict[str, tuple[int, ...]]:
    declared = {spec.name: spec for spec in inputs.specs}
    for name in declared:
        if name not in graph:
            raise inputs.error(f"inputs.{name}", f"the model has no input {name!r}; its inputs: {_listing(graph)}")
    missing = [name for name in graph if name not in declared]
    if missing:
        raise inputs.error("inputs", f"the model's input(s) {', '.join(missing)} are not declared; "
                                     f"its inputs: {_listing(graph)}")
    values = dict(inputs.dims)
    used = {dim for spec in inputs.specs for dim in spec.shape if isinstance(dim, str)}
    for name in values:
        if name not in used:
            raise inputs.error(f"dims.{name}", f"names no dimension of the declared shapes (they use: "
                                               f"{', '.join(sorted(used)) or 'none'})")
    shapes = {}
    for spec in inputs.specs:
        for index, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim not in values:
                raise inputs.error(f"inputs.{spec.name}.shape", f"dimension {dim!r} (position {index}) has no "
                                                                f"value: give it under {FIELD}.dims")
        shape = tuple(values[d] if isinstance(d, str) else d for d in spec.shape)
        _check_against_graph(inputs, f"inputs.{spec.name}", spec.name, shape, spec.dtype, graph[spec.name])
        shapes[spec.name] = shape
    return shapes


def _check_against_graph(inputs: GenericInputs, key: str, name: str, shape: tuple[int, ...], dtype: str,
                         expected: GraphInput) -> None:
    """The rank and fixed dimensions the graph declares, and its dtype."""
    where = f"{key}.shape" if inputs.npz is None else key
    if len(shape) != len(expected.shape):
        raise inputs.error(where, f"{list(shape)} has {len(shape)} dimensions; the model's input {name!r} "
                                  f"has {len(expected.shape)}: {expected.describe()}")
    for index, (have, fixed) in enumerate(zip(shape, expected.shape)):
        if isinstance(fixed, int) and fixed > 0 and have != fixed:
            raise inputs.error(where, f"dimension {index} is {have}; the model's input {name!r} fixes it at "
                                      f"{fixed}: {expected.describe()}")
    if dtype != expected.dtype:
        raise inputs.error(f"{key}.dtype" if inputs.npz is None else key,
                           f"{dtype} given; the model's input {name!r} takes {expected.dtype}")


def _draw(rng: np.random.Generator, spec: InputSpec, shape: tuple[int, ...]) -> np.ndarray:
    low, high = spec.value_range
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.dtype in INT_DTYPES:
        return rng.integers(int(low), int(high), size=shape, endpoint=True, dtype=np.dtype(spec.dtype))
    return rng.uniform(low, high, size=shape).astype(spec.dtype)


def _from_npz(inputs: GenericInputs, graph: dict[str, GraphInput]) -> dict[str, np.ndarray]:
    assert inputs.npz is not None
    try:
        with np.load(inputs.npz, allow_pickle=False) as archive:
            found = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise inputs.error(inputs.npz_key, f"cannot read {inputs.npz.name} as an .npz of arrays: {exc}") from None
    unknown = [name for name in found if name not in graph]
    missing = [name for name in graph if name not in found]
    if unknown or missing:
        parts = ([f"has no array for {', '.join(missing)}"] if missing else []) + \
                ([f"holds {', '.join(unknown)}, which the model does not take"] if unknown else [])
        raise inputs.error(inputs.npz_key, f"{inputs.npz.name} {' and '.join(parts)}; the model's inputs: "
                                           f"{_listing(graph)}")
    for name, array in found.items():
        _check_against_graph(inputs, f"{inputs.npz_key}[{name}]", name, array.shape, str(array.dtype), graph[name])
    return {name: found[name] for name in graph}


def _listing(graph: dict[str, GraphInput]) -> str:
    return "; ".join(f"{name} {shape.describe()}" for name, shape in graph.items()) or "none"


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as the bytes of an ``.npz`` (uncompressed: random values do not compress)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def batch_size(arrays: dict[str, np.ndarray]) -> int:
    """Items per call, for throughput: the leading dimension of the first input (1 for a scalar)."""
    first = next(iter(arrays.values()))
    return int(first.shape[0]) if first.ndim else 1


def describe(arrays: dict[str, np.ndarray]) -> str:
    """E.g. ``x [8, 3, 48, 192] float32``, for notes."""
    return "; ".join(f"{name} {list(a.shape)} {a.dtype}" for name, a in arrays.items())


def digest(inputs: GenericInputs | None) -> str:
    """What identifies the inputs: their declaration and the shipped file's content (a cache key part)."""
    if inputs is None:
        return ""
    text = repr((inputs.specs, inputs.dims, inputs.seed))
    if inputs.npz is not None:
        text += hashlib.sha256(inputs.npz.read_bytes()).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()
