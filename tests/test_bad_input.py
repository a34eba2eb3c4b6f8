"""The bad-input corpus: every case gives one clear line naming its file and field, no traceback.

The cases are files in ``tests/bad_input/``: device profiles in ``profiles/``, suites in
``suites/``, and command-line mistakes in ``commands.yaml``. Each case file starts with
comment lines saying what its error must name::

    # field: ssh.port                 (empty: the file as a whole, e.g. broken YAML)
    # says: must be at most 65535
    # phase: connect                  (load by default; connect: the profile loads, connecting
                                        fails; build: the suite loads, building the variant fails)
    # make: keys/encrypted.key        (a file this test creates in its copy of the corpus)
    # env: NAME=value                 (set while the case runs)
    # known-gap: why                  (not handled yet: expected to fail until it is)

Each case is checked through the library loaders, through ``pytest suites/ --device ...`` on a
small project, and through the ``edgegate`` command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import LOCAL_PROFILE
from edgegate.cli.__main__ import main as edgegate_main
from edgegate.errors import ConfigError
from edgegate.profiles import load_profile
from edgegate.suites import load_suite
from edgegate.transport.ssh import PASSPHRASE_ENV, SshTransport
from edgegate.variants.factory import VariantFactory

CORPUS = Path(__file__).resolve().parent / "bad_input"
RIGHT_PASSPHRASE = "corpus-Passphrase-2718"


@dataclass(frozen=True)
class Case:
    path: Path
    field: str
    says: str
    phase: str = "load"
    make: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    known_gap: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    def at(self, root: Path) -> Case:
        """The same case in a copy of the corpus."""
        return Case(root / self.path.relative_to(CORPUS), self.field, self.says, self.phase, self.make, self.env,
                    self.known_gap)


def read_case(path: Path) -> Case:
    header: dict[str, list[str]] = {}
    for line in path.read_bytes().decode("latin-1").splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(":")
        header.setdefault(key.strip(), []).append(value.strip())
    env = dict(item.split("=", 1) for item in header.get("env", []))
    return Case(path, header["field"][0], header["says"][0], header.get("phase", ["load"])[0],
                tuple(header.get("make", [])), env, header.get("known-gap", [""])[0])


PROFILE_CASES = [read_case(p) for p in sorted((CORPUS / "profiles").glob("*.yaml"))]
SUITE_CASES = [read_case(p) for p in sorted((CORPUS / "suites").glob("suite_*.yaml"))]
COMMAND_CASES = yaml.safe_load((CORPUS / "commands.yaml").read_text())


def test_the_corpus_has_at_least_40_cases_each_saying_what_it_expects() -> None:
    cases = PROFILE_CASES + SUITE_CASES
    assert len(cases) + len(COMMAND_CASES) >= 40
    assert all(case.says and case.phase in ("load", "connect", "build") for case in cases)
    assert len({case.name for case in cases}) == len(cases)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A copy of the corpus with the files cases ask for made, and the tiny model beside the suites."""
    root = tmp_path_factory.mktemp("corpus") / "bad_input"
    shutil.copytree(CORPUS, root)
    shutil.copytree(tiny_model_dir, root / "suites" / "tiny_model")
    keys = root / "profiles" / "keys"
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", RIGHT_PASSPHRASE, "-f", str(keys / "encrypted.key")],
                       check=True, capture_output=True)
    (keys / "unreadable.key").write_text("the test makes this file unreadable\n")
    (keys / "unreadable.key").chmod(0)
    return root


def prepare(case: Case, corpus: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Case:
    """The case in the copy, its environment set; skipped where this machine cannot make it."""
    here = case.at(corpus)
    if here.known_gap:
        request.applymarker(pytest.mark.xfail(reason=f"known gap: {here.known_gap}", strict=True))
    if "keys/unreadable.key" in here.make and os.access(corpus / "profiles" / "keys" / "unreadable.key", os.R_OK):
        pytest.skip("running as root: every file is readable, so an unreadable key cannot be made")
    if "keys/encrypted.key" in here.make and not (corpus / "profiles" / "keys" / "encrypted.key").exists():
        pytest.skip("ssh-keygen is not installed: no encrypted key can be made")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    for name, value in here.env.items():
        monkeypatch.setenv(name, value)
    return here


def variant_of(case: Case) -> str:
    """The variant a build-phase case is about: ``variants.NAME.params...``."""
    return case.field.split(".")[1]


def assert_one_clear_line(case: Case, message: str) -> None:
    """One line, naming the file and the field, saying what the case expects, leaking no secret."""
    assert "\n" not in message.strip() and "Traceback" not in message, message
    where = f"{case.path}: {case.field}: " if case.field else f"{case.path}: "
    assert where in message, (where, message)
    assert case.says in message, (case.says, message)
    for value in case.env.values():
        assert value not in message, "a secret from the environment reached the message"


def profile_error(case: Case) -> ConfigError:
    if case.phase == "load":
        with pytest.raises(ConfigError) as caught:
            load_profile(case.path)
        return caught.value
    profile = load_profile(case.path)
    with pytest.raises(ConfigError) as caught:
        SshTransport(profile, connect_attempts=1).connect()  # fails before any packet is sent
    return caught.value


@pytest.mark.parametrize("case", PROFILE_CASES, ids=lambda case: case.name)
def test_profile_loader(case: Case, corpus: Path, monkeypatch: pytest.MonkeyPatch,
                        request: pytest.FixtureRequest) -> None:
    here = prepare(case, corpus, monkeypatch, request)
    error = profile_error(here)
    assert error.field == here.field
    assert_one_clear_line(here, str(error))


@pytest.mark.parametrize("case", SUITE_CASES, ids=lambda case: case.name)
def test_suite_loader(case: Case, corpus: Path, shared_cache: Path, tiny_artifacts: dict,
                      monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    here = prepare(case, corpus, monkeypatch, request)
    with pytest.raises(ConfigError) as caught:
        suite = load_suite(here.path)
        assert here.phase == "build", "the suite loaded"
        VariantFactory(suite, shared_cache).artifact(suite.variant(variant_of(here)))
    assert caught.value.field == here.field
    assert_one_clear_line(here, str(caught.value))


@pytest.mark.parametrize("case", PROFILE_CASES, ids=lambda case: case.name)
def test_profile_through_the_cli(case: Case, corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    here = prepare(case, corpus, monkeypatch, request)
    assert edgegate_main(["devices", "check", here.name, "--profiles", str(here.path.parent)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("edgegate: ")
    assert_one_clear_line(here, captured.err)


@pytest.mark.parametrize("case", SUITE_CASES, ids=lambda case: case.name)
def test_suite_through_the_cli(case: Case, corpus: Path, shared_cache: Path, tiny_artifacts: dict,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    here = prepare(case, corpus, monkeypatch, request)
    only = ["--only", variant_of(here)] if here.phase == "build" else []
    assert edgegate_main(["variants", "build", str(here.path), "--cache", str(shared_cache), *only]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("edgegate: ")
    assert_one_clear_line(here, captured.err)


def project(root: Path, corpus: Path, suites: list[Case]) -> Path:
    """A pytest project: the given suite cases, the tiny model, a local profile."""
    (root / "suites").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    shutil.copytree(corpus / "suites" / "tiny_model", root / "suites" / "tiny_model")
    shutil.copytree(corpus / "suites" / "models", root / "suites" / "models")
    for case in suites:
        shutil.copy(case.at(corpus).path, root / "suites" / case.path.name)
    (root / "device_profiles").mkdir()
    (root / "device_profiles" / "local.yaml").write_text(LOCAL_PROFILE.format(work_dir=root / "device-work"))
    return root


def run_pytest(root: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "suites/", "--edgegate-cache", str(cache), "-p",
                           "no:cacheprovider", *args], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output[-4000:]
    return output


def expect_lines(output: str, cases: list[Case], folder: Path) -> None:
    """Each case's error is one line of the output naming the file (as it is in ``folder``) and field."""
    for case in cases:
        here = Case(folder / case.path.name, case.field, case.says)
        lines = [line for line in output.splitlines() if str(here.path) in line and case.says in line]
        assert lines, (case.name, output[-3000:])
        assert_one_clear_line(here, lines[0])


def test_broken_suites_through_pytest(corpus: Path, shared_cache: Path, tmp_path: Path) -> None:
    """Each suite that does not load is one collection error, with its one line."""
    loading = [case for case in SUITE_CASES if case.phase == "load"]
    root = project(tmp_path / "loading", corpus, loading)
    expect_lines(run_pytest(root, shared_cache, "--device", "local"), loading, root / "suites")


@pytest.mark.parametrize("case", [c for c in PROFILE_CASES if c.phase == "load"], ids=lambda case: case.name)
def test_profile_through_pytest(case: Case, corpus: Path, shared_cache: Path, pytester: pytest.Pytester,
                                monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """`pytest --device NAME` with a broken profile stops before collecting, with the one line."""
    here = prepare(case, corpus, monkeypatch, request)
    result = pytester.runpytest_inprocess("--device", here.name, "--edgegate-profiles", str(here.path.parent),
                                          "--edgegate-cache", str(shared_cache), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    lines = [line for line in output.splitlines() if str(here.path) in line]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert_one_clear_line(here, lines[0])


def test_build_and_connect_errors_through_pytest(corpus: Path, shared_cache: Path, tiny_artifacts: dict,
                                                 tmp_path: Path) -> None:
    """A variant that cannot be built, and a device whose key or known_hosts cannot be used, fail
    their items with the one line; the rest of the run goes on."""
    building = [case for case in SUITE_CASES if case.phase == "build" and not case.known_gap]
    connecting = [case.at(corpus) for case in PROFILE_CASES if case.phase == "connect" and not case.env]
    connecting = [case for case in connecting if all((corpus / "profiles" / made).exists() for made in case.make)
                  and not ("keys/unreadable.key" in case.make and os.access(corpus / "profiles" / case.make[0], os.R_OK))]
    root = project(tmp_path / "run", corpus, building)
    (root / "suites" / "suite_tiny.yaml").write_text(TINY_LOCAL_SUITE)
    profiles = root / "device_profiles"
    shutil.copytree(corpus / "profiles" / "keys", profiles / "keys")
    for case in connecting:
        shutil.copy(case.path, profiles / case.path.name)
    devices = [arg for case in connecting for arg in ("--device", case.name)]
    env = {key: value for key, value in os.environ.items() if key != PASSPHRASE_ENV}
    done = subprocess.run([sys.executable, "-m", "pytest", "suites/", *devices, "--device", "local", "--edgegate-cache",
                           str(shared_cache), "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)
    output = done.stdout + done.stderr
    variants = [len(yaml.safe_load(case.path.read_text())["variants"]) for case in building]
    items = (sum(variants) + 1) * (len(connecting) + 1)  # each variant on each device, suite_tiny's fp32 too
    passing = 1 + sum(count - 1 for count in variants)  # on local, all but the broken variant of each suite
    at = output.find("Traceback")
    assert at < 0, output[max(0, at - 1500):at + 2500]
    # other installed pytest plugins may add warnings to the summary line (anyio's does)
    assert re.search(rf"{items - passing} failed, {passing} passed(, \d+ warnings?)? in", output), output[-4000:]
    expect_lines(output, building, root / "suites")
    expect_lines(output, connecting, profiles)


TINY_LOCAL_SUITE = """\
schema: 1
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
measurements:
  prefill: {prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}
  decode: {prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}
  accuracy: {windows: 2, window_tokens: 32}
regressions: {decode_ms: false, prefill_ms: false, ttft_ms: false}
"""


@pytest.mark.parametrize("name", sorted(COMMAND_CASES))
def test_command_line_mistakes(name: str, corpus: Path, pytester: pytest.Pytester,
                               capsys: pytest.CaptureFixture[str]) -> None:
    case = COMMAND_CASES[name]
    profiles = corpus / "profiles"
    expected = Case(profiles, case["field"], case["says"])
    result = pytester.runpytest_inprocess(*case["args"], "--edgegate-profiles", str(profiles), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    capsys.readouterr()  # what the pytest run printed
    assert_one_clear_line(expected, next(line for line in output.splitlines() if case["says"] in line))
    device = case["args"][case["args"].index("--device") + 1]
    assert edgegate_main(["devices", "check", device, "--profiles", str(profiles)]) == 1
    assert_one_clear_line(expected, capsys.readouterr().err)


def test_the_installed_command_prints_one_line_and_no_traceback(corpus: Path) -> None:
    """The real process, not the function: what a user at a shell sees."""
    for case in [read_case(CORPUS / "profiles" / "key_file_not_a_key.yaml").at(corpus)]:
        done = subprocess.run([sys.executable, "-m", "edgegate.cli", "devices", "check", case.name, "--profiles",
                               str(case.path.parent)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("edgegate: "), done.stderr
        assert_one_clear_line(case, done.stderr)
