from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinymodel import build_suite, build_tiny_llama

pytest_plugins = ["pytester"]

# pytest plugins that executorch and litert-torch pull into the venv; none is used here, and
# loading them costs each pytest run these tests start about 1.5 s (hypothesis alone 1.2 s).
UNRELATED_PLUGINS = ("hypothesispytest", "hydra_pytest", "kgb", "anyio", "jaxtyping")


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's pytester, whose runs leave out the unrelated plugins (pytester clears PYTEST_ADDOPTS
    when it is made, so this sets it after)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(f"-p no:{name}" for name in UNRELATED_PLUGINS))
    return pytester
# Broken profiles and suites on purpose, read by tests/test_bad_input.py; not suites to collect.
collect_ignore = ["bad_input"]

LOCAL_PROFILE = """\
schema: 1
name: local
transport: local
python: auto
work_dir: {work_dir}
threads: 1
"""

TINY_SUITE = """\
schema: 1
name: tiny
base_model: {{kind: hf_dir, path: tiny_model}}
reference: fp32
variants:
  fp32: {{recipe: export_fp32}}
  int8: {{recipe: int8_dynamic}}
  int4: {{recipe: int4_weight_only, params: {{block_size: 32}}{int4_thresholds}}}
measurements:
  prefill: {{prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}}
  decode: {{prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}}
  accuracy: {{windows: 2, window_tokens: 32}}
thresholds:
  perplexity: {{max_ratio: 1.5}}
  top1_agreement: {{min: 0.5}}
# The tiny model's sub-millisecond timings move 10-80% between processes: these tests check other
# things, so its latency rules are off (tests/test_gating_end_to_end.py tests the rules).
regressions: {{decode_ms: false, prefill_ms: false, ttft_ms: false}}
"""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny_model")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One variant cache for the whole test session, so the tiny model is exported once."""
    return tmp_path_factory.mktemp("edgegate-cache")


@pytest.fixture
def tiny_project(pytester: pytest.Pytester, tiny_model_dir: Path) -> Path:
    """A project folder with a local profile and a suite over the tiny model."""
    root = pytester.path
    pytester.makeini("[pytest]\n")  # pins pytest's rootdir, where profiles and reports are found
    shutil.copytree(tiny_model_dir, root / "suites" / "tiny_model")
    (root / "device_profiles").mkdir()
    (root / "device_profiles" / "local.yaml").write_text(LOCAL_PROFILE.format(work_dir=root / "device-work"))
    write_tiny_suite(root)
    return root


def write_tiny_suite(root: Path, int4_thresholds: str = "") -> Path:
    path = root / "suites" / "suite_tiny.yaml"
    extra = f", thresholds: {{{int4_thresholds}}}" if int4_thresholds else ""
    path.write_text(TINY_SUITE.format(int4_thresholds=extra))
    return path


@pytest.fixture(scope="session")
def tiny_suite_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny-suite")
    shutil.copytree(tiny_model_dir, root / "suites" / "tiny_model")
    return write_tiny_suite(root)


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_suite_file: Path, shared_cache: Path) -> dict:
    """The tiny suite's variants, built once through the real factory."""
    return build_suite(tiny_suite_file, shared_cache)

