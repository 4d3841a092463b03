"""Tests of lpo.log: logger naming, CLI log format, progress bar."""
from __future__ import annotations

import io
import logging

import pytest

from lpo import log as lpolog


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def restore_lpo_logger():
    logger = logging.getLogger("lpo")
    saved = (list(logger.handlers), logger.level, logger.propagate, dict(lpolog._state))
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    lpolog._state.update(saved[3])


def test_configure_logging_format(restore_lpo_logger, capsys):
    lpolog.configure_logging(logging.INFO)
    log = logging.getLogger("lpo.test")
    log.info("Optimization Result: ok")
    log.debug("hidden")
    log.warning("careful")
    err = capsys.readouterr().err.splitlines()
    assert err == ["lpo: Optimization Result: ok", "lpo: warning: careful"]


def test_configure_logging_quiet_and_idempotent(restore_lpo_logger, capsys):
    lpolog.configure_logging("DEBUG")
    lpolog.configure_logging(logging.INFO, quiet=True)
    log = logging.getLogger("lpo.x")
    log.info("info hidden")
    log.error("shown once")
    assert capsys.readouterr().err.splitlines() == ["lpo: error: shown once"]


def test_progress_silent_when_not_a_tty():
    stream = io.StringIO()
    items = list(lpolog.progress(range(5), "work", stream=stream))
    assert items == [0, 1, 2, 3, 4]
    assert stream.getvalue() == ""


def test_progress_draws_on_tty():
    stream = FakeTTY()
    bar = lpolog.progress(range(3), "convert", stream=stream)
    assert list(bar) == [0, 1, 2]
    out = stream.getvalue()
    assert "\n" in out  # the final line stays on screen
    assert "convert" in out and "3/3" in out and "100%" in out


def test_progress_quiet_on_tty_is_silent(restore_lpo_logger):
    stream = FakeTTY()
    list(lpolog.progress([1, 2], "x", quiet=True, stream=stream))
    assert stream.getvalue() == ""
    lpolog.configure_logging(logging.INFO, quiet=True)  # the CLI's --quiet
    list(lpolog.progress([1, 2], "x", stream=stream))
    assert stream.getvalue() == ""


def test_progress_manual_total_with_bytes(caplog):
    stream = FakeTTY()
    caplog.set_level(logging.DEBUG, logger="lpo")
    logging.getLogger("lpo").propagate = True
    with lpolog.progress(4, "tensors", total_bytes=4096, stream=stream) as bar:
        for _ in range(4):
            bar.update(1, nbytes=1024)
    out = stream.getvalue()
    assert "4/4" in out and "4.0 KiB/4.0 KiB" in out
    assert any("tensors: 4 items, 4.0 KiB" in r.getMessage() for r in caplog.records)


def test_progress_generator_without_len():
    stream = FakeTTY()
    gen = (i for i in range(3))
    assert sum(lpolog.progress(gen, "gen", stream=stream)) == 3
    assert "gen" in stream.getvalue() and "3/?" in stream.getvalue()


def test_progress_close_is_idempotent():
    stream = FakeTTY()
    bar = lpolog.progress(2, "x", stream=stream)
    bar.update(2)
    bar.close()
    once = stream.getvalue()
    bar.close()
    assert stream.getvalue() == once and "\n" in once


def test_filter_native_stderr_drops_tf_noise_only():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = r"""
import os, sys
from lpo.log import filter_native_stderr
with filter_native_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795630571.932471   10183 cudart_stub.cc:31] Could not find cuda drivers\n")
    os.write(2, b"E0000 00:00:1.5 1 real_kernel.cc:9] a real native error\n")
    print("python line", file=sys.stderr)
print("after", file=sys.stderr)
os.write(2, b"fd2 restored\n")
"""
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "cudart_stub" not in r.stderr and "InitializeLog" not in r.stderr
    assert sorted(lines) == sorted(["E0000 00:00:1.5 1 real_kernel.cc:9] a real native error",
                                    "python line", "after", "fd2 restored"])
