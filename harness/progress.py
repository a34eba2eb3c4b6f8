"""What a run shows while it builds, uploads and measures: bars in a terminal, lines elsewhere.

The code that does the work opens a task (``with progress.task("build", "int8 (fused_decoder)") as
step:``), advances it, and finishes it with its result line ("built int8 (fused_decoder) in 12.3 s").
Where the lines and bars go is the active ``Display``'s business, which the pytest plugin sets up:

- ``BarSink``: rich's progress bars, redrawn in place, for an interactive terminal;
- ``LineSink``: one line per finished step and no redraws, for CI logs and pipes.

Verbosity follows pytest's -q/-v: each line has the lowest verbosity that still shows it
(WARNING at -q, NORMAL by default, DETAIL at -v). With no display active (the CLI, a bench
script, a test calling the factory), a task writes its detail and result lines to the ``log``
callable it was given, as the code did before this module.

A build task also sends what the build's tools print to the display's build log
(harness/buildlog.py), and a failed build shows that log's last lines. A measurement's result
line counts the timed regions the runner measured again because they were disturbed.

Labels: uploads and measurements happen below the code that knows the variant's name, so the
factory names each artifact folder (``name_folder``) and the transports look the name up.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import PurePath
from types import TracebackType
from typing import Any

from .buildlog import BuildLog

WARNING, NORMAL, DETAIL = -1, 0, 1  # the lowest pytest verbosity that shows the line
PREFIX = "[edgegate] "
_NORMAL_MARKERS = ("no baseline yet", "not a baseline", " is ready", " is not ready", "  - ",
                   "limits not judged", "decode not paired")
_DETAIL_MARKERS = ("decode not paired: no baseline run",)  # "no baseline yet" says it already
# On a first run every item says it: the first on each device by default, every one with -v.
ONCE_PER_DEVICE = ("no baseline yet, thresholds only",)
_WARNING_MARKERS = ("LEASE LOST", " is leased by ", "took over the expired lease", "could not release the lease",
                    "could not renew the lease", "no longer ours")


def bars_wanted(is_tty: bool, environ: Mapping[str, str]) -> bool:
    """Bars only on an interactive terminal: not in CI (``CI`` set, as every CI service does), not TERM=dumb."""
    in_ci = environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return is_tty and not in_ci and environ.get("TERM") != "dumb"


def level_of(line: str) -> int:
    """The verbosity a plain log line of the run needs: its warnings always, the facts its verdicts
    rest on by default, the rest (what is being built or measured, how) only with -v. The run's
    lines carry no level yet, hence the markers: each names a line of session, judging, lease or
    devicecheck."""
    if any(marker in line for marker in _WARNING_MARKERS):
        return WARNING
    if any(marker in line for marker in _DETAIL_MARKERS):
        return DETAIL
    return NORMAL if any(marker in line for marker in _NORMAL_MARKERS) else DETAIL


class LineSink:
    """Lines only: a task shows nothing until its result line. A variant's build line waits for
    its measurement's, and the two are written as one: one line per item in a CI log."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self._built: tuple[str, str] | None = None  # (variant, the build's line) not yet written

    def line(self, text: str) -> None:
        built = _BUILT.match(text)
        measured = _MEASURED.match(text)
        if self._built is not None and measured and measured.group("variant") == self._built[0]:
            text, self._built = f"{self._built[1]}; {measured.group('rest')}", None
        self.flush()
        if built:
            self._built = (built.group("variant"), text)
        else:
            self.write(text)

    def flush(self) -> None:
        """Write a build's line still waiting for its measurement's (the item ended without one)."""
        if self._built is not None:
            self.write(self._built[1])
            self._built = None

    def start(self, task: Task) -> None:
        pass

    def update(self, task: Task) -> None:
        pass

    def stop(self, task: Task) -> None:
        pass

    def close(self) -> None:
        self.flush()


_BUILT = re.compile(rf"^{re.escape(PREFIX)}built (?P<variant>\S+)[ (]")
_MEASURED = re.compile(rf"^{re.escape(PREFIX)}(?P<rest>measured (?P<variant>\S+) on .*)$")


class BarSink:
    """rich progress bars on ``console`` (its own handle on the terminal); they vanish when done,
    leaving the result line. ``before_drawing`` ends a half-written line of pytest's first."""

    def __init__(self, console: Any, before_drawing: Callable[[], None] = lambda: None) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.before_drawing = before_drawing
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                             TextColumn("{task.fields[figure]}"), TimeElapsedColumn(), console=console,
                             transient=True, redirect_stdout=False, redirect_stderr=False, refresh_per_second=8)
        self.ids: dict[Task, Any] = {}

    def line(self, text: str) -> None:
        if self.console.file.closed:  # after the run (a lease released late): nowhere to draw
            return
        self.before_drawing()
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, task: Task) -> None:
        if not self.ids:
            self.before_drawing()
            self.bars.start()
        self.ids[task] = self.bars.add_task(task.description(), total=task.total, figure="")
        self.bars.refresh()  # drawn now, not at the next tick: a short build shows too

    def update(self, task: Task) -> None:
        if task in self.ids:
            self.bars.update(self.ids[task], completed=task.done, figure=task.figure())

    def stop(self, task: Task) -> None:
        if task not in self.ids:
            return
        self.bars.remove_task(self.ids.pop(task))
        if not self.ids:
            self.bars.stop()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for task in list(self.ids):
            self.stop(task)
        if not self.console.file.closed:
            self.console.file.close()


class Display:
    """Where a run's lines and bars go, at which verbosity; builds capture into ``build_log``."""

    def __init__(self, sink: LineSink | BarSink, verbosity: int = NORMAL, build_log: BuildLog | None = None,
                 prefix: str = PREFIX) -> None:
        self.sink = sink
        self.verbosity = verbosity
        self.build_log = build_log
        self.prefix = prefix
        self._lock = threading.RLock()  # lease renewals log from their own thread
        self._log_named = False
        self._said: set[tuple[str, str]] = set()  # (ONCE_PER_DEVICE line, device) shown by default
        self.open: list[Task] = []  # started, not yet ended: the innermost last

    def say(self, text: str, level: int = NORMAL) -> None:
        if self.verbosity < level:
            return
        with self._lock:
            for line in text.splitlines() or [""]:
                self.sink.line(f"{self.prefix}{line}")

    def message(self, line: str) -> None:
        """A plain log line of the run, shown at the verbosity ``level_of`` gives it."""
        level = level_of(line)
        once = next((kind for kind in ONCE_PER_DEVICE if line.endswith(kind)), None)
        if once is not None and level == NORMAL:  # "<variant> on <device>: <kind>"
            said = (once, line.split(": ")[0].rpartition(" on ")[2])
            if said in self._said:
                level = DETAIL
            else:
                self._said.add(said)
                line += f" (likewise any other variant on {said[1]} without one: -v names each)"
        self.say(line, level)

    def task(self, kind: str, label: str, total: float | None = None) -> Task:
        return Task(self, kind, label, total)

    def end_of_item(self) -> None:
        """An item ended: nothing of it may wait for a later item's lines."""
        with self._lock:
            self.sink.flush()

    def close(self) -> None:
        with self._lock:
            self.sink.close()

    def _captured(self, task: Task, stack: ExitStack) -> None:
        """A build's third-party output goes to the build log, named once per run."""
        if task.kind != "build" or self.build_log is None:
            return
        if not self._log_named:
            self._log_named = True
            self.say(f"output of the build tools: {self.build_log.path}")
        stack.enter_context(self.build_log.capture(f"building {task.label}"))


class Task:
    """One build, upload or measurement: started on ``with``, advanced, finished with its result line."""

    def __init__(self, display: Display, kind: str, label: str, total: float | None = None) -> None:
        self.display = display
        self.kind = kind
        self.label = label
        self.total = total
        self.done = 0.0
        self.text = ""
        self.started = time.perf_counter()
        self.finished = False
        self._stack = ExitStack()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __enter__(self) -> Task:
        self.started = time.perf_counter()
        self.display._captured(self, self._stack)
        with self.display._lock:
            self.display.open.append(self)
            self.display.sink.start(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        with self.display._lock:
            self.display.open.remove(self)
            self.display.sink.stop(self)
        self._stack.close()  # the build log's capture ends before anything is said about a failure
        if error is not None and not self.finished:
            self._failed(error)

    def advance(self, amount: float = 1.0, text: str | None = None) -> None:
        self.done += amount
        if text is not None:
            self.text = text
        with self.display._lock:
            self.display.sink.update(self)

    def detail(self, line: str) -> None:
        """A step inside the task: the bar's text, and a line at -v."""
        self.text = line
        self.display.say(f"  {self.label}: {line}", DETAIL)
        with self.display._lock:
            self.display.sink.update(self)

    def finish(self, summary: str, level: int = NORMAL) -> None:
        self.finished = True
        with self.display._lock:
            self.display.sink.stop(self)
        self.display.say(summary, level)

    def description(self) -> str:
        verb = {"build": "building", "upload": "uploading", "measure": "measuring"}.get(self.kind, self.kind)
        return f"{verb} {self.label}"

    def figure(self) -> str:
        if self.kind == "upload" and self.total:
            rate = self.done / max(self.elapsed, 1e-6) / 1e6
            return f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, {rate:.1f} MB/s"
        if self.kind == "measure":
            return f"{self.done:.0f} metrics" + (f", last {self.text}" if self.text else "")
        return self.text[:60]

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, GeneratorExit):  # the consumer stopped early; it reports why
            self.display.say(f"{self.description()} stopped after {self.elapsed:.1f} s", DETAIL)
            return
        why = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        # a build's failure shows at -q too, with its log; the others' errors are the item's failure
        self.display.say(f"{self.description()} failed after {self.elapsed:.1f} s: {why}",
                         WARNING if self.kind == "build" else NORMAL)
        log = self.display.build_log
        if self.kind == "build" and log is not None:
            tail = log.tail()
            self.display.say(f"its build log: {log.path}" + (", last lines:" if tail else " (empty)"), WARNING)
            if tail:
                self.display.say("\n".join(f"  | {line[:300]}" for line in tail), WARNING)


_active: list[Display] = []
_folder_names: dict[str, str] = {}


def activate(display: Display) -> None:
    _active.append(display)


def deactivate(display: Display) -> None:
    if display in _active:
        _active.remove(display)
    display.close()


def current() -> Display | None:
    return _active[-1] if _active else None


def task(kind: str, label: str, total: float | None = None, log: Callable[[str], None] | None = None) -> Task:
    """A task on the active display; with none, its detail and result lines go to ``log``."""
    display = current()
    if display is None:
        display = Display(LineSink(log or (lambda _: None)), verbosity=DETAIL, prefix="")
    return display.task(kind, label, total)


def advance(kind: str, amount: float) -> None:
    """Advance the innermost open task of ``kind`` (an upload's bytes, from deep in a transport)."""
    display = current()
    if display is None:
        return
    with display._lock:
        found = next((task for task in reversed(display.open) if task.kind == kind), None)
    if found is not None:
        found.advance(amount)


def say(line: str, level: int = NORMAL) -> None:
    display = current()
    if display is not None:
        display.say(line, level)


def name_folder(folder: PurePath | str, name: str) -> None:
    """Remember that ``folder`` (an artifact's, here or on a device) holds variant ``name``."""
    _folder_names[str(folder)] = name


def name_of(folder: PurePath | str) -> str:
    """The variant name for a folder, else the folder's own name."""
    return _folder_names.get(str(folder)) or PurePath(str(folder)).name


def measuring(events: Iterable[dict[str, Any]], label: str) -> Iterator[dict[str, Any]]:
    """The runner's events, passed on, as a measurement task advanced by each metric. Each retry
    of a disturbed timed region is counted into the result line (the session's line on it, with
    the why, is a detail)."""
    retries = 0
    with task("measure", label) as measured:
        for event in events:
            if event.get("event") == "metric":
                measured.advance(text=str(event.get("name")))
            elif event.get("event") == "retry":
                retries += 1
                measured.advance(0, text="disturbed, measuring again")
            yield event
        again = f" ({retries} disturbed timed region{'s' if retries > 1 else ''} measured again)" if retries else ""
        measured.finish(f"measured {label}: {measured.done:.0f} metrics in {measured.elapsed:.1f} s{again}")
