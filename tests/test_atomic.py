"""Atomic outputs and no shared temp state (issue 6), with real ``lpo optimize`` processes.

* SIGKILL at several points of a running ``lpo optimize`` (INT8, so calibration runs too): by time
  (start-up, model loading, calibration) and at stages observed on the file system (checkpoint
  shards being written, destination renamed), plus a SIGTERM once the temp dir exists. After every
  signal the destination is absent or complete (loads and predicts); a SIGTERM leaves no temp; a
  re-run then succeeds and no temp sibling is left.
* Every CLI run has an empty temp directory as its cwd and as TMPDIR; both stay empty.
* Concurrency: two different models optimized at once into the same parent directory; two
  processes racing for the same destination.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpo.fsutil import tree_checksum

BF16_BOUND = 5e-3


def _env(tmpdir: Path) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cmd(sample, out, *extra):
    # weight_only: 16-bit weights, float32 MatMul (the library default; the CLI defaults to compute)
    return [sys.executable, "-m", "lpo", "optimize", sample.model_path, str(out), "--quiet",
            "--dense-mode", "weight_only", *extra]


def _int8(sample):
    return ["--data-type", "INT8", "--calib", sample.calib_path]


def _temps(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.lpo-tmp-"))


def _heldout(sample, rows=1000):
    data = dict(np.load(sample.heldout_path))
    data.pop("label")
    return {k: v[:rows] for k, v in data.items()}


def _predict(model, sample):
    from lpo.samples.tf1 import predict

    return np.asarray(predict(str(model), _heldout(sample))).reshape(-1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """An empty cwd and TMPDIR for the subprocesses; asserted empty at the end."""
    root = tmp_path_factory.mktemp("atomic")
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    yield cwd, tmp
    assert list(cwd.iterdir()) == [], "lpo wrote into its current directory"
    assert list(tmp.iterdir()) == [], "lpo left files in TMPDIR"


def _stage_reached(stage: str, parent: Path, name: str) -> bool:
    dest = parent / name
    temps = [parent / t for t in _temps(parent, name) if "-old" not in t]
    if stage == "temp-created":
        return bool(temps)
    if stage == "shards-written":
        return any(any((t / ".lpo-shards").glob("*")) for t in temps if (t / ".lpo-shards").is_dir())
    if stage == "variables-written":
        return any((t / "variables" / "variables.index").exists() for t in temps)
    if stage == "renamed":
        return (dest / "saved_model.pb").exists()
    raise AssertionError(stage)


def _run_and_signal(cmd, cwd, env, parent, name, point, sig) -> dict:
    """Start ``cmd`` and send ``sig`` at ``point`` (seconds, or a file-system stage)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    hit = False
    try:
        while proc.poll() is None and time.monotonic() - t0 < 240:
            if isinstance(point, (int, float)):
                if time.monotonic() - t0 >= point:
                    hit = True
                    break
                time.sleep(0.02)
            else:
                if _stage_reached(point, parent, name):
                    hit = True
                    break
                time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(sig)
    finally:
        _, err = proc.communicate(timeout=120)
    return {"point": point, "sig": int(sig), "hit": hit, "rc": proc.returncode, "t": round(time.monotonic() - t0, 2),
            "stderr": err.decode(errors="replace")[-2000:]}


# (point, signal): seconds after start, or a stage seen on the file system
SIGNAL_POINTS = [(1.0, signal.SIGKILL), (3.0, signal.SIGKILL), (6.0, signal.SIGKILL),
                 ("temp-created", signal.SIGTERM), ("shards-written", signal.SIGKILL), ("renamed", signal.SIGKILL)]


def test_signals_leave_nothing_or_a_complete_model_then_rerun_succeeds(sample_resource, sandbox, tmp_path):
    from lpo.validation.metrics import auc

    cwd, tmpdir = sandbox
    env = _env(tmpdir)
    parent = tmp_path / "outs"
    parent.mkdir()
    dest = parent / "model"
    cmd = _cmd(sample_resource, dest, *_int8(sample_resource), "--overwrite")
    model_sum = tree_checksum(sample_resource.model_path)
    outcomes = []
    for point, sig in SIGNAL_POINTS:
        r = _run_and_signal(cmd, cwd, env, parent, "model", point, sig)
        outcomes.append(r)
        if r["rc"] != 0:
            assert r["rc"] in (-signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM), r
        if sig == signal.SIGTERM and r["rc"] != 0:
            assert "Traceback" not in r["stderr"], r["stderr"]
            assert _temps(parent, "model") == [], "SIGTERM left its temp dir behind"
        # the destination is absent or complete (it loads and predicts)
        if dest.exists():
            assert (dest / "saved_model.pb").is_file() and (dest / "variables" / "variables.index").is_file()
            p = _predict(dest, sample_resource)
            assert p.shape == (1000,) and np.isfinite(p).all()
        # at most the temp of this killed run is left: earlier ones were cleaned at its start
        assert len(_temps(parent, "model")) <= 1, _temps(parent, "model")
        assert all(n == "model" or n.startswith(".model.lpo-tmp-") for n in os.listdir(parent))
    summary = [(r["point"], r["sig"], r["hit"], r["rc"], r["t"]) for r in outcomes]
    print("signal outcomes:", summary)
    signalled = [r for r in outcomes if r["rc"] != 0]
    assert len(signalled) >= 4, summary
    assert any(isinstance(r["point"], str) and r["rc"] == -signal.SIGKILL for r in outcomes), summary

    # a re-run succeeds, cleans the stale temps and leaves a complete, accurate model
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _temps(parent, "model") == []
    assert sorted(os.listdir(parent)) == ["model"]
    label = np.load(sample_resource.heldout_path)["label"][:1000]
    base = _predict(sample_resource.model_path, sample_resource)
    assert abs(auc(label, _predict(dest, sample_resource)) - auc(label, base)) <= 2e-3
    assert tree_checksum(sample_resource.model_path) == model_sum


def test_concurrent_processes(sample_resource, sample_ref, sandbox, tmp_path):
    """Three processes at once in one parent dir, one cwd, one TMPDIR.

    Two different models (resource, ref) into two destinations: both correct. A second
    process races the first for the same destination: one wins, the other fails cleanly
    with exit 2 (or, if it finished first, both succeed) and nothing else is left.
    """
    cwd, tmpdir = sandbox
    env = _env(tmpdir)
    parent = tmp_path / "outs"
    parent.mkdir()
    jobs = [(sample_resource, parent / "resource"), (sample_ref, parent / "ref"), (sample_resource, parent / "resource")]
    procs = [subprocess.Popen(_cmd(s, out, "--data-type", "BF16"), cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for s, out in jobs]
    errs = [p.communicate(timeout=400)[1].decode(errors="replace") for p in procs]
    rcs = [p.returncode for p in procs]
    assert rcs[1] == 0, errs[1][-3000:]
    assert sorted(rcs[::2]) in ([0, 0], [0, 2]), (rcs, errs)
    for rc, err in zip(rcs, errs):
        if rc == 2:
            assert "already exists" in err and "Traceback" not in err, err
    assert sorted(os.listdir(parent)) == ["ref", "resource"]
    for s, out in jobs[:2]:
        base = _predict(s.model_path, s)
        assert np.abs(_predict(out, s) - base).max() <= BF16_BOUND


def test_sigterm_right_after_temp_dir_creation_leaves_no_temp(tmp_path):
    """Deterministic version of the race the stage-signal test hit: SIGTERM just after mkdir(tmp)."""
    code = (
        "import os, signal, sys\n"
        "import lpo.fsutil as fs\n"
        "real = os.mkdir\n"
        "def mkdir(p, *a, **k):\n"
        "    real(p, *a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "fs.os.mkdir = mkdir\n"
        "with fs.atomic_output_dir(sys.argv[1]) as t:\n"
        "    (t / 'x').write_text('never')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, proc.stderr[-2000:])
    assert os.listdir(tmp_path) == []
