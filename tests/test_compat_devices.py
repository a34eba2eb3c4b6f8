"""A variant the device cannot run is found from the device's probe before anything of it is
uploaded, skipped with the reason, and shown as "unsupported on this device" in the report.

The devices are real sshd devices in network namespaces (tests/sshdevices.py) whose venv holds an
older onnxruntime, from PyPI's wheels: 1.18.1 (knows opset 21 and MatMulNBits, has no kernel for
GatherBlockQuantized, which the int4 recipe's embedding uses) and 1.16.3 (opsets up to 19, ONNX
IR up to 9: the tiny model's opset-21, IR-10 files are beyond it).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from edgegate import compat, devicesetup
from edgegate.deploy import deploy_tree
from edgegate.profiles import load_profile
from edgegate.transport.ssh import SshTransport

sshdevices = pytest.importorskip("sshdevices")
pytestmark = pytest.mark.slow

OLD_RUNTIMES = {"ort118": "onnxruntime==1.18.1", "ort116": "onnxruntime==1.16.3"}


def test_a_python_too_old_for_the_runner_makes_every_variant_unsupported_with_what_to_do() -> None:
    facts = {"python": "3.6.9", "executable": "/usr/bin/python3", "onnxruntime": None}  # JetPack 4.6's Python
    (reason,) = compat.unsupported("jetson-nano", facts, "onnxruntime", None)
    assert "needs Python 3.9 or newer for EdgeGate's runner" in reason and "Python 3.6.9" in reason
    assert "set `python:` in the profile" in reason


def test_a_python_too_old_for_the_variants_runtime_names_the_runtime() -> None:
    (reason,) = compat.unsupported("pi", {"python": "3.9.2", "executable": "python3"}, "litert", None)
    assert reason.startswith("LiteRT needs Python 3.10 or newer") and "the device has Python 3.9.2" in reason


def test_an_older_pinned_runtime_is_unsupported_and_a_missing_one_is_a_setup_step() -> None:
    facts = {"python": "3.11.2", "distributions": {"llama-cpp-python": "0.3.2"}}
    (reason,) = compat.unsupported("pi", facts, "llama_cpp", None)
    assert "needs llama-cpp-python 0.3.36" in reason and "the device has 0.3.2" in reason
    assert compat.not_installed({"python": "3.11.2", "distributions": {}}, "litert") == "ai-edge-litert"
    assert compat.not_installed(facts, "llama_cpp") is None


def test_the_probe_still_runs_on_python_3_6() -> None:
    import ast

    from edgegate.devicecheck import PROBE

    ast.parse(PROBE, feature_version=(3, 6))  # the Nano's Python must get an answer, not a SyntaxError


@pytest.fixture(scope="module")
def old_devices(tmp_path_factory: pytest.TempPathFactory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    scratch = tmp_path_factory.mktemp("old-runtimes")
    with sshdevices.SshDeviceFarm(scratch / "farm", prefix=f"egc{os.getpid() % 10000}") as farm:
        if not farm.uses_namespaces:
            pytest.skip("needs root and `ip netns` for namespace devices")
        profiles = {}
        for name, runtime in OLD_RUNTIMES.items():
            device = farm.start(name)
            profiles[name] = _install(device, runtime, scratch)
        yield profiles


def _install(device, runtime: str, scratch: Path) -> str:
    """A venv on the device with ``runtime`` (and a numpy it was built for), from wheels sent from here."""
    path = scratch / f"{device.name}.yaml"
    path.write_text(device.profile_yaml())
    transport = SshTransport(load_profile(path), connect_attempts=2, command_timeout_s=300)
    wheels = devicesetup.fetch_wheels("3.11", "x86_64", ["glibc", "2.36"], scratch / f"wheels-{device.name}",
                                      [runtime, "numpy<2", "psutil"])
    pushed = deploy_tree(transport, {w.name: w for w in wheels}, "wheels")
    venv = transport.device_path("venv")
    transport.run(["python3", "-m", "venv", venv], timeout_s=300, check=True)
    transport.run([f"{venv}/bin/pip", "install", "-q", "--no-index", "--find-links", pushed.remote_dir, runtime,
                   "numpy<2", "psutil"], timeout_s=300, check=True)
    transport.close()
    return device.profile_yaml(python=f"{venv}/bin/python")


def test_old_onnxruntimes_get_per_variant_unsupported_verdicts_before_any_upload(
        pytester: pytest.Pytester, tiny_project: Path, shared_cache: Path, old_devices: dict[str, str]) -> None:
    for name, text in old_devices.items():
        (tiny_project / "device_profiles" / f"{name}.yaml").write_text(text)
    result = pytester.runpytest_subprocess("suites/", "--device", "ort118", "--device", "ort116", "-rs",
                                           "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider",
                                           timeout=900)
    result.assert_outcomes(passed=2, skipped=4)
    result.stdout.fnmatch_lines([
        "*unsupported on this device: int4 on ort118: needs onnxruntime kernels for com.microsoft.GatherBlockQuantized "
        "(opset 1), which onnxruntime 1.18.1 on the device lacks (providers: CPUExecutionProvider); onnxruntime 1.* "
        "here, which built and checked the variant, has them: fix: `edgegate devices setup ort118` installs*"])
    result.stdout.fnmatch_lines(["*fp32 on ort116: the file is ONNX IR version 10; onnxruntime 1.16.3 on the device "
                                 "reads up to IR 9 (it knows ai.onnx opsets up to 19); the graph imports ai.onnx "
                                 "opset 21 (it knows up to 19), which onnxruntime 1.16.3 on the device does not know: "
                                 "fix: `edgegate devices setup ort116`*"])
    assert "MatMulNBits" not in result.stdout.str().split("int4 on ort118")[1].split("\n")[0]  # 1.18 has MatMulNBits
    int4_model = _model_sha256(shared_cache, "int4_weight_only")
    for name, text in old_devices.items():
        assert int4_model not in _device_files_sha256(tiny_project, name), f"int4's file was uploaded to {name}"
    _check_history_and_report(tiny_project)
    refused = _load_there(tiny_project, "ort118", next((shared_cache / "variants").glob("int4_weight_only-*/model.onnx")))
    assert "GatherBlockQuantized" in refused  # the reason given is the one the runtime itself has


def _load_there(project: Path, name: str, model: Path) -> str:
    """Send a model anyway and open it with the device's onnxruntime: what the runtime says."""
    transport = SshTransport(load_profile(project / "device_profiles" / f"{name}.yaml"), command_timeout_s=120)
    folder = deploy_tree(transport, {"model.onnx": model}, "probe-anyway").remote_dir
    opened = transport.run([transport.python(), "-c", "import sys, onnxruntime as o; o.InferenceSession(sys.argv[1])",
                            f"{folder}/model.onnx"])
    transport.close()
    assert opened.exit_status != 0, f"{name}'s onnxruntime opened the model the check called unsupported"
    return str(opened.stderr)


def _model_sha256(cache: Path, recipe: str) -> str:
    (manifest,) = (cache / "variants").glob(f"{recipe}-*/manifest.json")
    return json.loads(manifest.read_text())["files"]["model.onnx"]["sha256"]


def _device_files_sha256(project: Path, name: str) -> set[str]:
    """The sha256 of every file under the device's work dir, read over SSH (the device's own disk)."""
    transport = SshTransport(load_profile(project / "device_profiles" / f"{name}.yaml"), command_timeout_s=120)
    listing = transport.run(["sh", "-c", 'find "$1" -type f -name "*.onnx" -exec sha256sum {} +', "sh",
                             transport.device_path()], check=True).stdout
    transport.close()
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _check_history_and_report(project: Path) -> None:
    with sqlite3.connect(project / "reports" / "history.sqlite") as db:
        rows = db.execute("SELECT device, variant, verdict, passed, unsupported FROM verdicts").fetchall()
    unsupported = {(d, v) for d, v, verdict, passed, why in rows if verdict == "unsupported" and not passed and why}
    assert unsupported == {("ort118", "int4"), ("ort116", "fp32"), ("ort116", "int8"), ("ort116", "int4")}
    html = (project / "reports" / "latest.html").read_text()
    assert html.count(">unsupported on this device<") == 4 and 'id="unsupported"' in html
    assert 'id="overall" class="verdict ship"' in html  # fp32 and int8 ship on ort118; nothing measured regressed

