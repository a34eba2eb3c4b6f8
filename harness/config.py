"""Reading YAML into validated values, so every complaint names its file and field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse ``path`` and insist that the document is a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    try:
        data = _parse(text)
    except DuplicateKeyError as exc:
        raise ConfigError(path, exc.field, f"given twice (line {exc.line}); keep one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, "", f"not valid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {_kind(data)}")
    return data


def _parse(text: str) -> Any:
    """``yaml.safe_load``, except that a key given twice in one mapping is an error, not "last wins"."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicate = _duplicate_key(node, "", set())
        if duplicate is not None:
            raise DuplicateKeyError(*duplicate)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, field: str, line: int) -> None:
        super().__init__(f"{field} given twice")
        self.field = field
        self.line = line


def _duplicate_key(node: yaml.Node, prefix: str, visited: set[int]) -> tuple[str, int] | None:
    """The dotted name and line of the first key that repeats within its mapping, if any."""
    if id(node) in visited:  # an alias: already walked
        return None
    visited.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = f"{prefix}.{key_node.value}" if prefix else key_node.value
            if key_node.value in seen:
                return name, key_node.start_mark.line + 1
            seen.add(key_node.value)
            children.append((name, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{prefix}[{index}]", item) for index, item in enumerate(node.value)]
    for name, child in children:
        found = _duplicate_key(child, name, visited)
        if found is not None:
            return found
    return None


class Fields:
    """A mapping being read field by field; leftovers are reported as unknown keys."""

    def __init__(self, path: Path, prefix: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, prefix, f"expected a mapping, got {_kind(data)}")
        self.path = path
        self.prefix = prefix
        self.data = dict(data)
        self._seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any = ...) -> Any:
        """The value of ``key`` checked against ``kind``; required unless a default is given."""
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise ConfigError(self.path, self.name(key), "is required")
            return default
        value = self.data[key]
        if not _is_instance(value, kind):
            raise ConfigError(
                self.path, self.name(key), f"expected {_kind_name(kind)}, got {_kind(value)} {value!r}"
            )
        return value

    def number(self, key: str, default: Any = ..., minimum: float | None = None,
               maximum: float | None = None) -> Any:
        value = self.get(key, (int, float), default)
        if value is None or value is default:
            return value
        if not math.isfinite(value):
            raise ConfigError(self.path, self.name(key), f"must be a finite number, got {value}")
        if minimum is not None and value < minimum:
            raise ConfigError(self.path, self.name(key), f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(self.path, self.name(key), f"must be at most {maximum}, got {value}")
        return value

    def sub(self, key: str, required: bool = False) -> Fields:
        raw = self.get(key, dict, ... if required else {})
        return Fields(self.path, self.name(key), raw)

    def string_list(self, key: str, default: list[str] | None = None) -> tuple[str, ...]:
        value = self.get(key, list, default if default is not None else ...)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.path, f"{self.name(key)}[{index}]", f"expected a string, got {_kind(item)}")
        return tuple(value)

    def finish(self) -> None:
        """Complain about keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(str(key) for key in set(self.data) - self._seen)
        if unknown:
            raise ConfigError(self.path, self.name(unknown[0]), f"unknown key (known here: {', '.join(sorted(self._seen))})")


def _is_instance(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a number", float: "a number", str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def contained_path(suite_file: Path, field_name: str, raw: Any) -> Path:
    """``raw`` resolved against ``suite_file``'s folder; ConfigError if it is not a string or escapes it."""
    if not isinstance(raw, str) or not raw:
        raise ConfigError(suite_file, field_name, f"expected a path relative to the suite file, got {raw!r}")
    folder = suite_file.parent.resolve()
    resolved = (folder / raw).resolve()
    if Path(raw).is_absolute() or not resolved.is_relative_to(folder):
        raise ConfigError(suite_file, field_name, f"{raw!r} escapes the suite's folder {folder}")
    return resolved
