"""Which runtimes a device needs for a suite, and `devices setup` installing one on a real
OpenSSH device in a network namespace (tests/sshdevices.py), then the runner using it there."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgegate import devicesetup, runtimes
from edgegate.errors import RunnerError
from edgegate.profiles import load_profile
from edgegate.suites import load_suite

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES_SUITE = ROOT / "suites" / "runtimes" / "suite_runtimes.yaml"


def test_the_runtimes_suite_needs_all_five_runtimes_onnxruntime_first() -> None:
    backends = runtimes.suite_backends([load_suite(RUNTIMES_SUITE)])
    assert backends[0] == "onnxruntime"
    assert sorted(backends) == ["executorch", "litert", "litert_lm", "llama_cpp", "onnxruntime"]


def test_every_backend_names_its_packages_and_oldest_python() -> None:
    for backend in ("onnxruntime", "litert", "litert_lm", "executorch", "llama_cpp"):
        needed = runtimes.needs(backend)
        assert needed.requires and all(isinstance(r, str) and r for r in needed.requires), backend
        assert (3, 6) <= needed.python_min <= (3, 14), backend


def test_a_python_too_old_for_a_runtime_is_refused_with_a_sentence_the_others_planned() -> None:
    old = "3.6.9"  # JetPack 4.6, the Jetson Nano's last release
    plan = devicesetup.plan(["onnxruntime", "litert", "executorch"], old)
    for label in plan.refused:
        assert f"the device has Python {old}" in plan.refused[label] and "or newer" in plan.refused[label]
    assert set(plan.refused) == {n.label for n in map(runtimes.needs, ["onnxruntime", "litert", "executorch"])
                                 if n.python_min > (3, 6)}
    fresh = devicesetup.plan(["onnxruntime", "litert", "executorch"], "3.11.7")
    assert not fresh.refused and {"numpy", "psutil", "onnxruntime"} <= set(fresh.requirements)
    assert all(r in fresh.requirements for b in ("litert", "executorch") for r in runtimes.needs(b).requires)


def test_a_source_only_package_for_another_platform_says_how_to_build_it_on_the_device(tmp_path: Path) -> None:
    from edgegate.errors import TransportError

    with pytest.raises(TransportError, match=r"llama-cpp-python==0.3.36 publishes no wheels.*aarch64.*"
                                             r"CMAKE_ARGS=.*pip install llama-cpp-python==0.3.36"):
        devicesetup.fetch_wheels("3.11.7", "aarch64", ["glibc", "2.36"], tmp_path, ["llama-cpp-python==0.3.36"])


sshdevices = pytest.importorskip("sshdevices")


@pytest.fixture(scope="module")
def litert_device(tmp_path_factory: pytest.TempPathFactory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    with sshdevices.SshDeviceFarm(tmp_path_factory.mktemp("farm"), prefix="egr") as farm:
        device = farm.start("rt")
        profile = tmp_path_factory.mktemp("profile") / "rt.yaml"
        profile.write_text(device.profile_yaml())
        yield device, load_profile(profile), tmp_path_factory.mktemp("wheels")


def _load_error(transport, backend: str) -> str:
    job = {"model": "absent.model", "backend": backend, "providers": ["CPUExecutionProvider"], "threads": 1,
           "measurements": {}}
    events: list[dict] = []
    with pytest.raises(RunnerError, match="exited with 1"):  # the runner exits 1 when the model will not load
        events.extend(transport.run_job(job, timeout_s=120))
    errors = [e for e in events if e.get("event") == "error" and e.get("measurement") == "load"]
    assert errors, events
    return errors[0]["message"]


@pytest.mark.slow
def test_setup_installs_a_suites_runtime_and_the_runner_says_what_is_missing_otherwise(litert_device) -> None:
    from edgegate.transport.ssh import SshTransport

    _, profile, wheels = litert_device
    transport = SshTransport(profile, connect_attempts=2, command_timeout_s=120)
    plain = devicesetup.setup_device("rt", transport, wheels, log=lambda _: None)
    assert plain.ready, plain.explain()
    transport.ensure_runner()
    missing = _load_error(transport, "litert")
    assert "ModuleNotFoundError" in missing and "edgegate devices setup" in missing
    report = devicesetup.setup_device("rt", transport, wheels, log=lambda _: None, backends=["litert"])
    assert report.ready and report.facts["ai_edge_litert"], report.explain()
    assert "ai_edge_litert" in report.explain()
    installed = _load_error(transport, "litert")  # the runtime imports now; only the file is absent
    assert "ModuleNotFoundError" not in installed and "devices setup" not in installed
    transport.close()


def test_executorch_is_installed_without_its_export_tooling() -> None:
    planned = devicesetup.plan(["onnxruntime", "executorch"], "3.11.2")
    assert planned.without_deps == ("executorch==1.5.1",)
    assert "torch==2.13.0" in planned.with_deps and "executorch==1.5.1" not in planned.with_deps


@pytest.mark.parametrize(("machine", "libc", "advice"), [
    ("armv7l", ["glibc", "2.36"], "onnxruntime publishes Linux wheels for x86_64 and aarch64 only: install the "
                                  "board's 64-bit (aarch64) OS"),
    ("aarch64", ["", ""], "its C library is not glibc, and onnxruntime publishes manylinux (glibc) wheels only"),
])
def test_a_device_pypi_has_no_wheel_for_gets_one_sentence_with_what_to_do(tmp_path: Path, machine: str,
                                                                          libc: list[str], advice: str) -> None:
    from edgegate.errors import TransportError

    with pytest.raises(TransportError) as caught:  # pip really asks PyPI, for the device's platform tags
        devicesetup.fetch_wheels("3.11.2", machine, libc, tmp_path)
    message = str(caught.value)
    assert message.startswith("PyPI has no wheel of ") and f"for CPython 3.11 on {machine}" in message
    assert advice in message and "\n" not in message


def test_an_old_glibc_gets_the_old_onnxruntime_and_the_numpy_it_was_built_for(tmp_path: Path) -> None:
    wheels = devicesetup.fetch_wheels("3.11.2", "aarch64", ["glibc", "2.17"], tmp_path)  # pip really resolves
    (runtime,) = [w.name for w in wheels if w.name.startswith("onnxruntime-")]
    assert devicesetup.numpy_pin(wheels) == ("numpy<2",), runtime  # onnxruntime 1.16.3: the last for glibc 2.17
    assert any(w.name.startswith("numpy-1.") for w in wheels)
    assert devicesetup.numpy_pin([tmp_path / "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl"]) == ()
