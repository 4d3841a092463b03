"""Data source -> calibration -> INT8 optimize -> validate, on the sample model, as a user runs it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.errors import ValidationFailed
from lpo.samples.tf1 import write_tfrecord


@pytest.mark.parametrize("source", ["csv", "tfrecord"])
def test_source_to_int8_to_validated_model(sample_resource, tmp_path, source):
    if source == "csv":
        src = sample_resource.train_csv_path
    else:
        src = str(tmp_path / "heldout.tfrecord")
        write_tfrecord(sample_resource.heldout_path, src, max_rows=3000)
    calib = tmp_path / "calib.npz"
    cal = lpo.make_calibration(src, str(calib), sample_resource.model_path, num_rows=512, seed=7)
    assert cal.rows == 512
    out = tmp_path / "int8"
    res = lpo.optimize(sample_resource.model_path, str(out), data_type="INT8", calib_file=str(calib), quiet=True)
    assert res.size_ratio <= 0.27
    rep = lpo.validate(sample_resource.model_path, str(out), sample_resource.heldout_path, batch_sizes=(64,),
                       iters=5, warmup=1, max_auc_drop=5e-4, min_size_reduction=0.7,
                       report_dir=str(tmp_path / "report"))
    d = rep.to_dict()
    assert d["passed"] and abs(d["accuracy"]["auc_delta"]) <= 5e-4
    assert len(d["optimized_nodes"]) == 31 and {n["dtype"] for n in d["optimized_nodes"]} == {"INT8"}
    manifest = json.load(open(out / "assets.extra" / "lpo_manifest.json"))
    assert all(c["activation_range"] for c in manifest["conversions"] if c["kind"] == "dense"
               and c["mode"] in ("compute", "simulate"))
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_gate_fails_on_a_visibly_worse_model(sample_resource, tmp_path):
    """Per-row INT8 with min-max ranges on every layer, gated with a zero diff threshold: must fail."""
    out = tmp_path / "bad"
    lpo.optimize(sample_resource.model_path, str(out), data_type="INT8", calib_file=sample_resource.calib_path,
                 calib_method="minmax", quiet=True)
    with pytest.raises(ValidationFailed) as e:
        lpo.validate(sample_resource.model_path, str(out), sample_resource.heldout_path, batch_sizes=(64,),
                     iters=3, warmup=1, max_abs_diff=0.0, report_dir=str(tmp_path / "rep"))
    assert "max_abs_diff" in str(e.value)
    assert e.value.report is not None and not e.value.report.passed
    assert json.load(open(tmp_path / "rep" / "report.json"))["passed"] is False


def test_cli_chain_and_gate_exit_code(sample_resource, tmp_path):
    """The same chain through the CLI: calibrate, optimize, validate; a breached gate exits 3."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    lpo_cmd = [sys.executable, "-m", "lpo", "--quiet"]

    def run(*args):
        return subprocess.run(lpo_cmd + list(args), capture_output=True, text=True, env=env, timeout=600)

    calib = tmp_path / "calib.npz"
    r = run("calibrate", sample_resource.train_csv_path, str(calib), "--model", sample_resource.model_path,
            "--rows", "256")
    assert r.returncode == 0, r.stderr
    r = run("optimize", sample_resource.model_path, str(tmp_path / "m"), "--data-type", "int8", "--calib", str(calib))
    assert r.returncode == 0, r.stderr
    assert np.load(calib)["I1"].shape == (256,)
    r = run("validate", sample_resource.model_path, str(tmp_path / "m"), sample_resource.heldout_path,
            "--max-abs-diff", "0", "--batch-sizes", "64", "--iters", "3", "--warmup", "1")
    assert r.returncode == 3
    assert r.stderr.strip().splitlines()[-1].startswith("lpo: error:") and "Traceback" not in r.stderr
