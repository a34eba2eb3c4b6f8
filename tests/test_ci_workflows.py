"""The nightly workflows are valid for their CI systems (check-jsonschema against the schemas
GitHub Actions and GitLab CI publish, vendored in the package: no network), a broken copy is
caught, and the commands they run are ones EdgeGate accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = {"vendor.github-workflows": ROOT / ".github" / "workflows" / "nightly.yml",
             "vendor.gitlab-ci": ROOT / "docs" / "ci" / "gitlab-ci.yml"}
CHECKER = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
needs_checker = pytest.mark.skipif(CHECKER is None, reason="check-jsonschema is not installed (pip install '.[test]')")


def _check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    assert CHECKER is not None
    return subprocess.run([CHECKER, "--builtin-schema", schema, str(path)], capture_output=True, text=True,
                          timeout=120, check=False)


@needs_checker
@pytest.mark.parametrize("schema", sorted(WORKFLOWS))
def test_the_nightly_workflow_is_valid_for_its_ci_system(schema: str) -> None:
    done = _check(schema, WORKFLOWS[schema])
    assert done.returncode == 0, done.stdout + done.stderr


@needs_checker
def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOWS["vendor.github-workflows"].read_text())
    del workflow["jobs"]["gate"]["runs-on"]
    workflow["jobs"]["gate"]["strategy"]["fail-fast"] = "sometimes"
    broken = tmp_path / "nightly.yml"
    broken.write_text(yaml.safe_dump(workflow))
    assert _check("vendor.github-workflows", broken).returncode != 0


def test_the_workflows_run_the_gate_on_each_device_with_the_shared_history() -> None:
    from edgegate.cli.__main__ import parser

    github = yaml.safe_load(WORKFLOWS["vendor.github-workflows"].read_text())
    gate = github["jobs"]["gate"]
    assert "edge-lab" in gate["runs-on"] and gate["env"]["EDGEGATE_HISTORY"] == "${{ secrets.EDGEGATE_HISTORY }}"
    commands = " ".join(step.get("run", "") for step in gate["steps"])
    assert 'pytest suites/ --device "${{ matrix.device }}"' in commands and "--junitxml" in commands
    gitlab = yaml.safe_load(WORKFLOWS["vendor.gitlab-ci"].read_text())["gate"]
    assert any('--device "$DEVICE"' in line for line in gitlab["script"])
    parser().parse_args(["devices", "setup", "jetson-nano"])  # the subcommand both run exists
