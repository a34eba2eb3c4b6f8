"""The build log survives what build tools do to stdout and stderr, and puts the terminal back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgegate.buildlog import BuildLog


def _tool_that_closes_its_streams() -> None:
    print("exporter: lowering graph")
    sys.stdout.close()
    os.close(sys.stderr.fileno())  # as a tool that owns "its" fd would


def _tool_that_redirects_stderr_at_fd_level(tmp_path: Path) -> None:
    """What sentencepiece's _LogStream does with the fd behind sys.stderr."""
    target = sys.stderr.fileno()
    with open(tmp_path / "elsewhere.txt", "w") as elsewhere:
        saved = os.dup(target)
        os.dup2(elsewhere.fileno(), target)
        os.close(target)
        os.dup2(saved, target)
        os.close(saved)


def test_a_tool_closing_stdout_and_its_fd_neither_loses_the_log_nor_the_next_build(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = BuildLog(tmp_path / "build.log")
    with log.capture("building a"):
        _tool_that_closes_its_streams()
    with log.capture("building b"):
        _tool_that_redirects_stderr_at_fd_level(tmp_path)
        print("converter: done")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'from C++ on fd 2\\n')"], check=True)
        logging.getLogger("some.tool").warning("a warning from a library")
    print("to the terminal")
    os.write(2, b"fd 2 is the terminal's again\n")
    text = (tmp_path / "build.log").read_text()
    assert "exporter: lowering graph" in text
    assert "==== building b" in text and "converter: done" in text
    assert "from C++ on fd 2" in text and "a warning from a library" in text
    out, err = capfd.readouterr()
    assert "to the terminal" in out and "fd 2 is the terminal's again" in err
    assert "converter" not in out + err
