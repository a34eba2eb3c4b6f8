"""The run's display in pytest's terminal: bars on an interactive terminal, lines otherwise, -q/-v.

pytest captures fds 1/2 while an item runs, and its terminal reporter reaches the terminal only
with that capture suspended. Lines are written so, inside the build log's ``paused()`` as well:
suspending pytest's capture rewrites the same fds the build log has redirected. Bars are redrawn
by rich's thread at any moment, so they get their own duplicate of the terminal's fd, taken
while pytest's capture is suspended (the fd then is the terminal, not a capture file).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edgegate.buildlog import BuildLog
from edgegate.progress import BarSink, Display, LineSink, bars_wanted

from .workers import is_worker


def open_display(config: pytest.Config, run_id: str, cache_dir: Path) -> Display:
    """Bars when pytest's output is an interactive terminal (not CI, not an xdist worker), else lines."""
    worker = f"-{config.workerinput['workerid']}" if is_worker(config) else ""  # type: ignore[attr-defined]
    build_log = BuildLog(cache_dir / "logs" / f"build-{run_id}{worker}.log")  # one writer per file
    verbosity = config.get_verbosity()
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return Display(LineSink(lambda _: None), verbosity, build_log)
    console = None if is_worker(config) else _terminal_console(capture, config.getoption("color") == "no")
    if console is None:
        return Display(LineSink(_reporter_lines(capture, reporter, build_log)), verbosity, build_log)
    return Display(BarSink(console, lambda: _end_pytests_line(reporter, console)), verbosity, build_log)


def _terminal_console(capture: Any, no_color: bool) -> Any:
    """A rich console on a duplicate of the terminal's fd; None when the output is no terminal."""
    with capture.global_and_fixture_disabled():
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # pytester's in-process runs: a StringIO
            return None
        if not bars_wanted(os.isatty(fd), os.environ):
            return None
        columns = _columns(fd)
        handle = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1)
    from rich.console import Console

    return Console(file=handle, force_terminal=True, no_color=no_color, width=columns)


def _columns(fd: int) -> int:
    try:
        return os.get_terminal_size(fd).columns or 80
    except OSError:
        return 80


def _reporter_lines(capture: Any, reporter: Any, build_log: BuildLog) -> Callable[[str], None]:
    """Lines through pytest's terminal writer. Without -v they leave pytest's "suites/x.yaml "
    as its current file, so the item's "." follows them instead of the file's name being written
    again for every item (two lines an item less); with -v pytest writes the item's name again
    before its PASSED, as it does after any plugin's line."""

    def write(line: str) -> None:
        with build_log.paused(), capture.global_and_fixture_disabled():
            if reporter.showlongtestinfo:
                reporter.write_line(line)
                return
            writer = reporter.config.get_terminal_writer()
            if writer.width_of_current_line:
                writer.line()
            writer.line(line)
            writer.flush()

    return write


def _end_pytests_line(reporter: Any, console: Any) -> None:
    """pytest leaves "suites/x.yaml " (or an item's name with -v) open for the item's result: end it,
    and have pytest write the prefix again, as its own ``ensure_newline`` does."""
    if reporter.currentfspath:
        console.file.write("\n")
        console.file.flush()
        reporter.currentfspath = None
