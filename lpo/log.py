"""Logging setup for lpo, TensorFlow's start-up noise, and the progress bar (``rich.progress``).

Library modules log to ``logging.getLogger(__name__)`` (under ``lpo``); only the CLI
calls :func:`configure_logging`, which sends lpo's records to stderr as
``lpo: message``. :func:`progress` draws a bar on stderr only when stderr is a
terminal and output is not quiet; otherwise it is silent and logs one summary
line at DEBUG when done.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
from typing import IO, Iterable, Iterator, Optional, Union

from lpo.fsutil import human_bytes


ROOT = "lpo"

_state = {"quiet": False}


class _Formatter(logging.Formatter):
    """``lpo: message``; ``lpo: warning: message`` for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            msg = f"error: {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"warning: {msg}"
        elif record.levelno <= logging.DEBUG:
            msg = f"[{record.name}] {msg}"
        text = f"lpo: {msg}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (works under capture)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: Union[int, str] = logging.INFO, quiet: bool = False) -> None:
    """Send ``lpo`` log records to stderr as ``lpo: message`` (for the CLI).

    ``quiet`` raises the level to WARNING and silences progress bars. Calling it
    again replaces the previous configuration. TensorFlow's Python loggers are
    limited to errors (warnings at DEBUG).
    """
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    if quiet:
        level = max(level, logging.WARNING)
    _state["quiet"] = bool(quiet)
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, _StderrHandler):
            logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING if level <= logging.DEBUG else logging.ERROR)


# TensorFlow's native start-up noise: absl's pre-InitializeLog banner, the oneDNN banner
# ("oneDNN custom operations are on ...", printed at import on CPUs where oneDNN is on by
# default), every other INFO line, and the CUDA probing of the GPU wheel on a machine
# without a GPU. TF_CPP_MIN_LOG_LEVEL does not silence these (they are logged before TF's
# log level is read).
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ [\w.-]+\.cc:\d+\] .*"
    r"|[WE]\d{4} [\d:.]+ +\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn"
    r"|cuda_fft|cuda_blas|dso_loader|cpu_feature_guard|cpu_utils|port)\.cc:\d+\] .*"
    # oneDNN's one-time note that a dtype (DT_HALF on CPUs without AVX512_FP16, DT_BOOL/DT_INT64 on
    # AVX2 with oneDNN forced on) runs on Eigen instead: logged at ERROR level, so TF_CPP_MIN_LOG_LEVEL=2
    # keeps it; it says nothing about lpo's forms (16-bit weights are cast to float32 either way)
    r"|E\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_\w+ only on platforms with AVX-512\..*"
    # the continuation line of cpu_feature_guard's message
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$")


@contextlib.contextmanager
def filter_native_stderr(pattern: "re.Pattern[str]" = NATIVE_NOISE):
    """Drop lines matching ``pattern`` that native code writes to file descriptor 2.

    Python's ``sys.stderr`` keeps writing straight to the real stderr; only what
    C++ code writes to fd 2 passes through a pipe and a filter thread. Does
    nothing when ``sys.stderr`` does not write to fd 2 (e.g. captured by pytest);
    an Airflow task's stderr (a stream over fd 2 to the supervisor) is filtered.
    """
    try:
        to_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        to_fd2 = False
    if not to_fd2:
        yield
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        r, w = os.pipe()
    except (OSError, ValueError, AttributeError):
        yield
        return
    old = sys.stderr
    os.dup2(w, 2)
    os.close(w)
    sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(real), "w"), encoding=old.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True)

    def pump() -> None:
        with open(r, "rb", closefd=True) as f:
            for line in f:
                if not pattern.match(line.decode("utf-8", "replace").rstrip("\r\n")):
                    try:
                        os.write(real, line)
                    except OSError:
                        pass

    thread = threading.Thread(target=pump, name="lpo-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        replacement, sys.stderr = sys.stderr, old
        os.dup2(real, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            replacement.close()
        if not thread.is_alive():
            os.close(real)


@contextlib.contextmanager
def quiet_tensorflow():
    """Keep TensorFlow's native start-up noise out of a task's log (Airflow operators, KFP components).

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment sets it (C++ INFO and
    WARNING off; errors still pass) -- effective only if TF is not loaded yet, so
    enter it before ``import lpo`` -- and drops the known start-up lines that are
    printed before that level is read (:data:`NATIVE_NOISE`, via
    :func:`filter_native_stderr`). TensorFlow's Python deprecation warnings go to
    the ``tensorflow`` logger at WARNING, which is limited to errors here.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    if level < logging.ERROR:
        tf_logger.setLevel(logging.ERROR)
    try:
        with filter_native_stderr():
            yield
    finally:
        tf_logger.setLevel(level)


_process_quiet: list = []


def quiet_tensorflow_process() -> None:
    """:func:`quiet_tensorflow` for the rest of a one-shot process (a KFP step); undone at exit.

    Call it first thing, before ``import lpo`` loads TensorFlow. Calling it again does nothing.
    """
    if _process_quiet:
        return
    import atexit

    cm = quiet_tensorflow()
    cm.__enter__()
    _process_quiet.append(cm)
    atexit.register(cm.__exit__, None, None, None)


def _rich_bar(stream: IO[str]):
    """A ``rich.progress.Progress`` drawing on ``stream``: description, bar, n/total, %, bytes, time."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn)
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class BytesColumn(ProgressColumn):
        """``done/total`` bytes of a task that counts them (blank otherwise)."""

        def render(self, task) -> Text:
            total, done = task.fields.get("total_bytes"), task.fields.get("nbytes", 0)
            if not total and not done:
                return Text("")
            return Text(f"{human_bytes(done)}/{human_bytes(total)}" if total else human_bytes(done))

    return RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                        TaskProgressColumn(), BytesColumn(), TimeElapsedColumn(),
                        console=Console(file=stream, force_terminal=True), transient=False)


class Progress:
    """A progress bar (``rich.progress``) over an iterable, or a counter updated by hand.

    Iterate over it to advance one item at a time, or call :meth:`update`. Use it as a
    context manager (or call :meth:`close`) to finish the line. Drawn only on a terminal
    and when neither ``quiet`` nor the CLI's ``--quiet`` is set; always logs one DEBUG
    summary line when done.
    """

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", total_bytes: Optional[int] = None, quiet: bool = False,
                 stream: Optional[IO[str]] = None):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = 0
        self.nbytes = 0
        s = stream if stream is not None else sys.stderr
        try:
            tty = bool(s.isatty())
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and not quiet and not _state["quiet"]
        self._start = time.monotonic()
        self._closed = False
        self._bar = None
        if self.enabled:
            self._bar = _rich_bar(s)
            self._task = self._bar.add_task(desc, total=total, total_bytes=total_bytes, nbytes=0)
            self._bar.start()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar counts by hand: call update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        """Advance by ``n`` items and ``nbytes`` bytes."""
        self.n += n
        self.nbytes += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=n, nbytes=self.nbytes)

    def close(self) -> None:
        """Finish the bar (final redraw and newline) and log a DEBUG summary."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
        extra = f", {human_bytes(self.nbytes)}" if self.nbytes else ""
        logging.getLogger("lpo.progress").debug("%s: %d items%s in %.2fs", self.desc or "progress", self.n, extra,
                                                time.monotonic() - self._start)


def progress(iterable_or_total: Union[Iterable, int, None], desc: str = "",
             total_bytes: Optional[int] = None, quiet: bool = False,
             stream: Optional[IO[str]] = None) -> Progress:
    """Return a :class:`Progress` over an iterable, or a manual counter for an int total."""
    if iterable_or_total is None or isinstance(iterable_or_total, int):
        return Progress(None, total=iterable_or_total, desc=desc, total_bytes=total_bytes, quiet=quiet,
                        stream=stream)
    try:
        total = len(iterable_or_total)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return Progress(iterable_or_total, total=total, desc=desc, total_bytes=total_bytes, quiet=quiet,
                    stream=stream)
