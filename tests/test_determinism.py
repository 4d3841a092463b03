"""Determinism (issue 6): the same inputs and options give byte-identical outputs.

One run in this process, one in a fresh interpreter with a different hash seed (set and dict
iteration orders differ there), for BF16 on the resource sample and INT8 (calibrated) on the
partitioned one (sliced saver, scale variables per part). Every file of the two outputs must be byte-identical, so
pipeline caching (KFP/Airflow) sees the same artifact. refresh() is checked the same way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import lpo

CONFIGS = [("resource", {"data_type": "BF16"}), ("partitioned", {"data_type": "INT8"})]


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _assert_identical(a, b):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert {"saved_model.pb", "variables/variables.index"} <= set(fa)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, f"files differ between runs: {differ}"


@pytest.fixture(scope="module")
def runs(sample_resource, sample_partitioned, tmp_path_factory):
    """Optimize each config here and in a subprocess with another PYTHONHASHSEED."""
    samples = {"resource": sample_resource, "partitioned": sample_partitioned}
    root = tmp_path_factory.mktemp("determinism")
    jobs = []
    for i, (variant, kw) in enumerate(CONFIGS):
        s = samples[variant]
        kw = dict(kw, calib_file=s.calib_path, quiet=True)
        jobs.append((s.model_path, str(root / f"a{i}"), str(root / f"b{i}"), kw))
    script = textwrap.dedent("""
        import json, sys
        import lpo
        for model, _a, b, kw in json.loads(sys.argv[1]):
            lpo.optimize(model, b, **kw)
    """)
    env = dict(os.environ, PYTHONHASHSEED="4242", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(jobs)], env=env, cwd=str(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for model, a, _b, kw in jobs:
            lpo.optimize(model, a, **kw)
    finally:
        _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return jobs


@pytest.mark.parametrize("i", range(len(CONFIGS)), ids=[f"{v}-{kw['data_type']}" for v, kw in CONFIGS])
def test_optimize_is_byte_identical_across_processes(runs, i):
    _model, a, b, _kw = runs[i]
    _assert_identical(a, b)


def test_refresh_and_convert_ckpt_are_byte_identical(runs, sample_partitioned, tmp_path):
    from lpo.samples.tf1 import perturb_checkpoint

    _model, opt, _b, _kw = runs[1]  # partitioned INT8
    ckpt = perturb_checkpoint(sample_partitioned.model_path, str(tmp_path / "ckpt" / "model.ckpt-7"), seed=7)
    lpo.refresh(opt, ckpt, str(tmp_path / "r1"), quiet=True)
    lpo.refresh(opt, ckpt, str(tmp_path / "r2"), quiet=True)
    _assert_identical(tmp_path / "r1", tmp_path / "r2")
    (tmp_path / "c").mkdir()
    lpo.convert_ckpt(ckpt, str(tmp_path / "c" / "v"), opt, quiet=True)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(tmp_path / "c" / f"v{suffix}", "rb") as f, \
                open(tmp_path / "r1" / "variables" / f"variables{suffix}", "rb") as g:
            assert f.read() == g.read(), suffix
