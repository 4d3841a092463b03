"""Task logs stay free of TensorFlow's native start-up noise (lpo.log.quiet_tensorflow).

Each case imports TensorFlow in a fresh process whose stderr is a pipe, the way an
Airflow 3 task process sees it (``sys.stderr`` re-opened over fd 2 by the supervisor)
and a KFP executor sees it (the plain fd 2). A line written to fd 2 by native code that
is not known noise (a real error) must still come through.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

NOISE = re.compile(r"oneDNN custom operations|cuda|cpu_feature_guard|absl::InitializeLog|rebuild TensorFlow"
                   r"|only on platforms with AVX-512")

CHILD = r"""
import io, os, sys
if sys.argv[1] == "airflow":  # what airflow.sdk.execution_time.supervisor does in the task process
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
from lpo.log import quiet_tensorflow
ctx = quiet_tensorflow() if sys.argv[2] == "quiet" else __import__("contextlib").nullcontext()
with ctx:
    import tensorflow as tf
    with tf.compat.v1.Session() as s:
        s.run(tf.constant(1.0) + 1.0)
        # a float16 MatMul: oneDNN's "supports DT_HALF only on platforms with AVX-512" note on CPUs
        # without AVX512_FP16 (what the README demo's FP16 step printed)
        s.run(tf.matmul(tf.ones([4, 4], tf.float16), tf.ones([4, 4], tf.float16)))
    os.write(2, b"E0000 00:00:1.0 1 some_op.cc:1] a real native error\n")
    print("python stderr line", file=sys.stderr, flush=True)
print("done", flush=True)
"""


def _child(how, mode):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"  # oneDNN on, as on AVX512 CPUs by default
    return subprocess.run([sys.executable, "-c", CHILD, how, mode], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_quiet_tensorflow_drops_startup_noise_keeps_errors():
    quiet = _child("airflow", "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "done"
    assert [ln for ln in quiet.stderr.splitlines() if NOISE.search(ln)] == []
    assert "a real native error" in quiet.stderr and "python stderr line" in quiet.stderr
    loud = _child("plain", "loud")  # the control: the same process without it
    assert loud.returncode == 0, loud.stderr
    if not NOISE.search(loud.stderr):
        pytest.skip("this TensorFlow build prints no start-up noise here (nothing to filter)")
    assert "a real native error" in loud.stderr
