"""The run's terminal: one line per step in CI, bars in a terminal, build chatter in the build log, -q/-v.

Each test runs pytest on the tiny suite in a subprocess, as a user would: through pipes with
``CI=true`` (the CI mode), or on a pseudo terminal (the interactive mode). The project's
conftest makes the int8 recipe talk the way quantizers do (logging on a handler it adds
mid-build, print, a write to fd 2, a warning, a tqdm bar) so that where that output lands is
checked on every run, not only on a machine whose tools happen to be chatty.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import LOCAL_PROFILE, write_tiny_suite
from edgegate import progress
from edgegate.deploy import deploy_tree
from edgegate.profiles import load_profile

pytestmark = pytest.mark.slow

CHATTY_RECIPE = '''
import logging, os, sys, warnings

from edgegate.variants.recipes import RECIPES

recipe = RECIPES["int8_dynamic"]
real_build = recipe.build


def chatter(what):  # composed at run time: a failure's traceback shows this source, not the words
    return "CHAT" + "TER-" + what


def build(ctx):
    logger = logging.getLogger("neural_compressor")
    logger.addHandler(logging.StreamHandler(sys.stderr))  # what a basicConfig at import does
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info(chatter("LOGGING start to quantize"))
    print(chatter("STDOUT"))
    os.write(2, chatter("FD2\\n").encode())
    warnings.warn(chatter("WARNING"))
    from tqdm import tqdm
    for _ in tqdm(range(3), desc=chatter("TQDM Writing model shards")):
        pass
    if ctx.params["per_channel"]:
        print(chatter("LAST-WORDS the quantizer gives up"))
        raise RuntimeError("the quantizer crashed")
    return real_build(ctx)


recipe.build = build
'''
# Run by path on the pseudo terminal: one variant more to build, one whose build fails.
EXTRA_SUITE = """\
schema: 1
name: extra
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  int4b: {recipe: int4_weight_only, params: {block_size: 16}}
  broken: {recipe: int8_dynamic, params: {per_channel: true}}
measurements:
  prefill: {prompt_tokens: 16, warmup: 1, min_samples: 3, max_samples: 3, target_ci: 0}
  decode: {prompt_tokens: 8, tokens: 4, warmup: 1, min_samples: 8, max_samples: 8, target_ci: 0}
  accuracy: {windows: 2, window_tokens: 32}
regressions: {decode_ms: false, prefill_ms: false, ttft_ms: false}
"""
REDRAW = ("\x1b[2K", "\x1b[?25l")  # rich's erase-line and hide-cursor: a bar being redrawn in place
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pytest", "--device", "local", "--edgegate-cache", str(self.cache),
                "-p", "no:cacheprovider", "-p", "no:randomly", *args]

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
        return {**env, "COLUMNS": "120", **extra}

    def run_ci(self, *args: str) -> str:
        """pytest with CI=true through pipes: its stdout and stderr together."""
        done = subprocess.run(self.command("suites/suite_tiny.yaml", *args), cwd=self.root, env=self.env(CI="true"),
                              capture_output=True, text=True, timeout=400, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Project:
    root = tmp_path_factory.mktemp("progress")
    shutil.copytree(tiny_model_dir, root / "suites" / "tiny_model")
    (root / "device_profiles").mkdir()
    (root / "device_profiles" / "local.yaml").write_text(LOCAL_PROFILE.format(work_dir=root / "device-work"))
    write_tiny_suite(root)
    (root / "suites" / "suite_extra.yaml").write_text(EXTRA_SUITE)
    (root / "conftest.py").write_text(CHATTY_RECIPE)
    (root / "pytest.ini").write_text("[pytest]\n")
    return Project(root)


@pytest.fixture(scope="module")
def first_run(project: Project) -> str:
    """The first run in CI mode, on an empty cache: everything is built."""
    assert not project.cache.exists()
    return project.run_ci()


def edgegate_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[edgegate] ")]


def test_ci_mode_prints_one_line_per_step_and_no_redraws(first_run: str) -> None:
    """A variant's build and measurement share one line, unless another line came between them
    (the device's probe after the first build)."""
    assert "\r" not in first_run and "\x1b" not in first_run
    lines = edgegate_lines(first_run)
    again = r"( \(\d+ disturbed timed regions? measured again\))?"  # a busy machine
    built = r"built (?P<built>\S+) \(\w+\) in \d+\.\d s"
    measured = rf"measured (?P<measured>\S+) on local: \d+ metrics in \d+\.\d s{again}"
    forms = (rf"{built}; {measured}", built, measured)
    steps = [next((m for m in (re.fullmatch(rf"\[edgegate\] {form}", line) for form in forms) if m), None)
             for line in lines]
    steps = [step.groupdict() for step in steps if step]
    assert sorted(step["built"] for step in steps if step.get("built")) == ["fp32", "int4", "int8"], lines
    assert sorted(step["measured"] for step in steps if step.get("measured")) == ["fp32", "int4", "int8"], lines
    joined = [step for step in steps if step.get("built") and step.get("measured")]
    assert all(step["built"] == step["measured"] for step in joined) and len(joined) >= 2, lines
    steps_inside = [line for line in lines if re.match(r"\[edgegate\] (building|  \w+ \(\w+\): )", line)]
    assert not steps_inside  # what a build does, step by step: -v only


def test_build_chatter_goes_to_the_build_log_named_in_one_line(project: Project, first_run: str) -> None:
    named = [line for line in edgegate_lines(first_run) if "output of the build tools: " in line]
    assert len(named) == 1
    log = Path(named[0].split("output of the build tools: ")[1])
    assert log.parent == project.cache / "logs" and re.fullmatch(r"build-\S+\.log", log.name)
    text = log.read_text()
    for chatter in ("CHATTER-LOGGING", "CHATTER-STDOUT", "CHATTER-FD2", "CHATTER-WARNING", "CHATTER-TQDM"):
        assert chatter in text, chatter
    assert "CHATTER" not in first_run
    assert "[edgegate] built int8 (int8_dynamic) in " in first_run  # the build's own result line stays


def test_quiet_prints_less_and_verbose_more(project: Project, first_run: str) -> None:
    quiet, default, verbose = project.run_ci("-q"), project.run_ci(), project.run_ci("-v")
    assert len(quiet.splitlines()) < len(default.splitlines()) < len(verbose.splitlines())
    assert not edgegate_lines(quiet) and "verdicts: 3 ship" in quiet and "report: " in quiet
    assert "[edgegate] measured int4 on local: " in default and "measuring int4 on local" not in default
    assert "[edgegate] measuring int4 on local" in verbose and "[edgegate] measured int4 on local: " in verbose
    assert not [line for line in edgegate_lines(default) if line.startswith("[edgegate] built")]  # all cached


def test_a_terminal_gets_bars_and_a_failed_build_shows_its_log(project: Project, first_run: str) -> None:
    output = run_on_terminal(project.command("suites/suite_extra.yaml"), project.root, project.env())
    assert all(code in output for code in REDRAW), output[-2000:]
    plain = ANSI.sub("", output).replace("\r\n", "\n")
    assert "building int4b (int4_weight_only)" in plain and "measuring fp32 on local" in plain  # the bars
    assert "[edgegate] built int4b (int4_weight_only) in " in plain
    failed = plain.split("[edgegate] building broken (int8_dynamic) failed after ")[1].splitlines()
    assert failed[0].endswith(": the quantizer crashed") and "its build log: " in failed[1]
    log_tail = [line for line in failed[2:] if line.startswith("[edgegate]   | ")]
    assert log_tail and "CHATTER-LAST-WORDS the quantizer gives up" in log_tail[-1]
    assert not [line for line in plain.splitlines() if "CHATTER" in line and not line.startswith("[edgegate]   | ")]
    lines = [line for line in plain.splitlines() if line.strip()]
    verdicts = next(i for i, line in enumerate(lines) if line.startswith("verdicts: "))
    assert lines[verdicts + 1].startswith("report: ") and "1 failed, 2 passed" in lines[-1]
    assert not [line for line in lines[verdicts:] if line.startswith("[edgegate]")]
    assert not any(code in output[output.index("verdicts: "):] for code in REDRAW)  # no bar left drawing


def run_on_terminal(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 300) -> str:
    """What ``command`` writes to a 120x40 pseudo terminal, as it came (ANSI codes, CR LF)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, cwd=cwd, env={**env, "TERM": "xterm"}, stdin=slave, stdout=slave,
                               stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            pytest.fail(f"pytest on the terminal still running after {timeout_s:.0f} s")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_an_upload_shows_its_bytes_and_rate(tmp_path: Path) -> None:
    """Through the real SSH transport (an sshd the test starts): bytes advance the bar chunk by chunk."""
    sshdevices = pytest.importorskip("sshdevices")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    from edgegate.transport.ssh import SshTransport
    from rich.console import Console

    blob = tmp_path / "model.onnx"
    blob.write_bytes(os.urandom(6 << 20))
    frames = tmp_path / "frames.txt"
    lines: list[str] = []
    with sshdevices.SshDeviceFarm(tmp_path / "farm", prefix="egprog") as farm:
        if not farm.uses_namespaces:
            pytest.skip("needs network namespaces (root) to slow the link so that the bar is drawn mid-way")
        (tmp_path / "dev.yaml").write_text(farm.start("dev", rate_mbit=80).profile_yaml())  # 6 MB: about 0.7 s
        transport = SshTransport(load_profile(tmp_path / "dev.yaml"), connect_attempts=2, command_timeout_s=60)
        with frames.open("w") as drawn:
            bars = progress.Display(progress.BarSink(Console(file=drawn, force_terminal=True, width=120)))
            progress.activate(bars)
            try:
                deploy_tree(transport, {"model.onnx": blob}, "artifacts", label="int8")
            finally:
                progress.deactivate(bars)
        in_ci = progress.Display(progress.LineSink(lines.append), verbosity=progress.DETAIL)
        progress.activate(in_ci)
        try:
            deploy_tree(transport, {"model.onnx": blob}, "artifacts", label="int8")  # already there
        finally:
            progress.deactivate(in_ci)
            transport.close()
    shown = ANSI.sub("", frames.read_text())
    partial = {float(done) for done in re.findall(r"(\d+\.\d)/6\.3 MB, [\d.]+ MB/s", shown)}
    assert "uploading int8 to dev" in shown and partial - {0.0, 6.3}, shown[-1500:]  # drawn mid-way too
    assert re.search(r"\[edgegate\] uploaded int8 to dev: 6\.3 MB in \d+\.\d s \([\d.]+ MB/s\)", shown)
    assert lines == ["[edgegate] int8 to dev: already there, verified (0 bytes sent)"]
