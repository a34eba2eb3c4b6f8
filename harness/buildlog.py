"""The build log: what third-party tools print while a variant builds goes to a file, not the terminal.

Quantizers, exporters and converters talk a lot (onnxruntime's quantizer calls logging.basicConfig
when imported and logs every tensor at INFO; transformers and torch warn; tqdm draws bars on
stderr; C++ libraries write to file descriptors 1 and 2). During a build, ``capture()`` sends all
of it to one file, ``<cache>/logs/build-<run id>.log``, and puts everything back afterwards:

- fds 1 and 2 are dup2'ed onto the file, so C code and subprocesses that inherit them follow;
- sys.stdout and sys.stderr are replaced too: under pytest they are its capture files, not fds 1/2;
- every logging.StreamHandler writes to the file meanwhile. A handler made during the build (a
  basicConfig at import) still points at the file afterwards: it is pointed at sys.stderr, never
  left on a closed file. pytest's own handlers are muted meanwhile, or a failed item's report
  would replay the chatter;
- warnings are formatted into the file (pytest would otherwise list them in its summary).

Whoever writes to the terminal during a build does it inside ``paused()``, which undoes the
redirection of fds and streams for that moment (pytest's capture toggles the same fds).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

STD_FDS = (1, 2)
LOG_FORMAT = "%(asctime)s %(name)s [%(levelname)s] %(message)s"


def _mute(record: logging.LogRecord) -> bool:
    return False


@dataclass
class _Redirected:
    """What ``capture()`` replaced, to put back."""

    saved_fds: dict[int, int] = field(default_factory=dict)
    streams: tuple[Any, Any] = (None, None)
    handlers: dict[logging.StreamHandler[Any], Any] = field(default_factory=dict)
    muted: list[logging.Handler] = field(default_factory=list)
    added: logging.Handler | None = None


class BuildLog:
    """One run's build log file; ``capture(title)`` routes a build's output into a section of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.section_start = 0  # where the last build's section begins (bytes)
        self._file: TextIO | None = None
        self._redirected: _Redirected | None = None

    @contextmanager
    def capture(self, title: str) -> Iterator[None]:
        if self._file is not None:  # a build inside a build: its output is already in the file
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115 - closed below
        # All anyone else gets: a tool may close what it is handed, the stream or its fd.
        self._views = (_Unclosable(self._file, 1), _Unclosable(self._file, 2))
        self._view = self._views[1]
        self.section_start = self._file.tell()
        self._file.write(f"==== {title} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ====\n")
        try:
            with warnings.catch_warnings():
                warnings.showwarning = self._warning
                self._redirected = _Redirected()
                self._redirect_streams()
                self._redirect_logging()
                try:
                    yield
                finally:
                    try:
                        self._restore_streams()
                    finally:
                        self._restore_logging()
                        self._redirected = None
        finally:
            _close(self._file)
            self._file = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """fds 1/2 and sys.stdout/stderr as they were before the build, for a line to the terminal."""
        if self._redirected is None:
            yield
            return
        self._restore_streams()
        try:
            yield
        finally:
            self._redirect_streams()

    def tail(self, lines: int = 12) -> list[str]:
        """The last lines of the last build's section (empty when there is no file)."""
        try:
            with open(self.path, "rb") as log:
                log.seek(self.section_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines()[1:] if line.strip()][-lines:]

    def _warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
        assert self._file is not None
        self._view.write(warnings.formatwarning(message, category, filename, lineno, line))

    def _redirect_streams(self) -> None:
        assert self._file is not None and self._redirected is not None
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        self._redirected.streams = (sys.stdout, sys.stderr)
        self._redirected.saved_fds = {fd: os.dup(fd) for fd in STD_FDS}
        for fd in STD_FDS:
            os.dup2(self._file.fileno(), fd)
        sys.stdout, sys.stderr = self._views  # type: ignore[assignment]

    def _restore_streams(self) -> None:
        assert self._file is not None and self._redirected is not None
        _flush(self._file)
        for fd, saved in self._redirected.saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._redirected.saved_fds = {}
        sys.stdout, sys.stderr = self._redirected.streams

    def _redirect_logging(self) -> None:
        assert self._file is not None and self._redirected is not None
        redirected = self._redirected
        for handler in _handlers():
            if isinstance(handler, logging.FileHandler):  # a file someone asked for (pytest's --log-file too)
                continue
            if _is_pytests(handler):
                handler.addFilter(_mute)
                redirected.muted.append(handler)
            elif isinstance(handler, logging.StreamHandler):
                redirected.handlers[handler] = handler.stream
                _set_stream(handler, self._view)
        root = logging.getLogger()
        if not any(handler in redirected.handlers for handler in root.handlers):  # else records reach no file
            redirected.added = logging.StreamHandler(self._view)
            redirected.added.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(redirected.added)

    def _restore_logging(self) -> None:
        assert self._redirected is not None
        redirected = self._redirected
        if redirected.added is not None:
            logging.getLogger().removeHandler(redirected.added)
        for handler, stream in redirected.handlers.items():
            _set_stream(handler, stream)
        for handler in _handlers():  # made during the build, on the file that is about to close
            if isinstance(handler, logging.StreamHandler) and handler.stream in self._views:
                _set_stream(handler, sys.stderr)
        for handler in redirected.muted:
            handler.removeFilter(_mute)


def _handlers() -> list[logging.Handler]:
    """Every handler of every logger, each once."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return list(dict.fromkeys(handler for logger in loggers for handler in logger.handlers))


def _is_pytests(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


def _set_stream(handler: logging.StreamHandler[Any], stream: Any) -> None:
    try:
        handler.setStream(stream)
    except (OSError, ValueError):  # flushing its old stream failed (closed): replace it all the same
        handler.stream = stream


def _close(file: TextIO) -> None:
    try:
        file.close()
    except OSError:  # its buffer could not be written: the fd under it was closed by someone
        pass


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):
        pass


class _Unclosable(io.TextIOBase):
    """sys.stdout and sys.stderr during a build: writes go to the build log, and a tool that
    closes sys.stdout (seen in an ExecuTorch export) does not close the log under the build.
    ``fileno()`` is fd 1 or 2, which point at the log meanwhile: a tool that closes or re-points
    that fd touches a standard fd (put back afterwards), never the log's own."""

    def __init__(self, target: TextIO, fd: int) -> None:
        self._target = target
        self._fd = fd

    def write(self, text: str) -> int:
        try:
            return 0 if self._target.closed else self._target.write(text)
        except OSError:
            return 0

    def flush(self) -> None:
        _flush(self._target)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target.encoding

    def close(self) -> None:
        pass
