"""Tests of lpo.validation.validator and lpo.validation.report (small iteration counts to stay fast)."""
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

from lpo.errors import ConfigError, DataError, ValidationFailed
from lpo.validation.report import write_report
from lpo.validation.validator import DEFAULT_THRESHOLDS, ValidationReport, validate

FAST = dict(batch_sizes=(1, 64), warmup=1, iters=3, max_rows=2000)


@pytest.fixture(scope="module")
def perturbed(sample_resource, tmp_path_factory):
    """A copy of the sample model with a perturbed checkpoint and a fake lpo manifest."""
    from lpo.samples.tf1 import perturb_checkpoint

    dst = str(tmp_path_factory.mktemp("pert") / "model")
    shutil.copytree(sample_resource.model_path, dst)
    perturb_checkpoint(sample_resource.model_path, os.path.join(dst, "variables", "variables"),
                       seed=3, scale=0.02)
    os.makedirs(os.path.join(dst, "assets.extra"), exist_ok=True)
    manifest = {"format": 1, "lpo_version": "0.1.0", "data_type": "BF16", "conversions": [
        {"kind": "embedding", "node": "dlrm/embeddings/C1", "dtype": "BF16",
         "scheme": "per_dim", "variables": []},
        {"kind": "dense", "node": "dlrm/top_mlp/layer0/MatMul", "dtype": "BF16", "scheme": "cast",
         "variables": []}]}
    with open(os.path.join(dst, "assets.extra", "lpo_manifest.json"), "w") as f:
        json.dump(manifest, f)
    return dst


def _check_files(files):
    assert set(files) == {"json", "markdown", "html"}
    for p in files.values():
        assert os.path.getsize(p) > 0
    text = open(files["html"], encoding="utf-8").read()
    assert "data:image/png;base64," in text
    # self-contained: no external resources of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "<script" not in text and "@import" not in text
    md = open(files["markdown"], encoding="utf-8").read()
    assert "| Metric | Original | Optimized | Delta |" in md
    return text


def test_validate_against_itself(sample_resource, tmp_path):
    m = sample_resource.model_path
    rep = validate(m, m, sample_resource.heldout_path, report_dir=tmp_path / "r", **FAST)
    assert rep.passed and rep.breaches == [] and rep.rows == 2000
    out = rep.outputs["probabilities"]
    assert out["max_abs_diff"] == 0 and out["mean_abs_diff"] == 0 and out["p99_abs_diff"] == 0
    assert rep.prediction_output == "probabilities"
    assert rep.accuracy["auc_delta"] == 0 and rep.accuracy["logloss_delta"] == 0
    assert 0.6 < rep.accuracy["auc_original"] < 1
    assert [e["batch_size"] for e in rep.latency] == [1, 64]
    for e in rep.latency:
        for k in ("original", "optimized"):
            assert e[k]["p50_ms"] > 0 and e[k]["p99_ms"] >= e[k]["p50_ms"]
            assert e[k]["throughput_rows_s"] > 0
    assert rep.size["variables_ratio"] == 1.0 and rep.size["total_ratio"] == 1.0
    assert rep.optimized_nodes == [] and any("lpo_manifest.json" in n for n in rep.notes)
    env = rep.environment["TF_ENABLE_ONEDNN_OPTS"]
    assert env == os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (default)")
    text = _check_files(rep.report_files)
    assert "PASS" in text
    with open(rep.report_files["json"]) as f:
        assert json.load(f) == json.loads(json.dumps(rep.to_dict()))
    assert json.loads(json.dumps(rep.to_dict(), allow_nan=False))["passed"] is True


def test_zero_threshold_fails_on_perturbed(sample_resource, perturbed, tmp_path):
    rd = tmp_path / "r"
    with pytest.raises(ValidationFailed) as ei:
        validate(sample_resource.model_path, perturbed, sample_resource.heldout_path,
                 max_abs_diff=0.0, max_auc_drop=None, report_dir=rd, **FAST)
    rep = ei.value.report
    assert isinstance(rep, ValidationReport) and not rep.passed
    assert "max_abs_diff" in str(ei.value) and "probabilities" in str(ei.value)
    (b,) = rep.breaches
    assert b["threshold"] == "max_abs_diff" and b["limit"] == 0 and b["actual"] > 0
    assert ei.value.exit_code == 3
    # the report was written before raising, and says FAIL
    text = _check_files(rep.report_files)
    assert "FAIL" in text and (rd / "report.json").exists()
    d = json.loads((rd / "report.json").read_text())
    assert d["passed"] is False and d["breaches"][0]["threshold"] == "max_abs_diff"
    assert [n["node"] for n in d["optimized_nodes"]] == ["dlrm/embeddings/C1",
                                                         "dlrm/top_mlp/layer0/MatMul"]
    assert d["optimized_nodes"][0]["dtype"] == "BF16"
    assert "dlrm/top_mlp/layer0/MatMul" in text


def test_all_breaches_listed_without_raising(sample_resource, perturbed):
    rep = validate(sample_resource.model_path, perturbed, sample_resource.heldout_path,
                   max_abs_diff=1e-9, max_auc_drop=-0.0, min_size_reduction=0.4,
                   max_latency_ratio=1e-6, raise_on_fail=False, batch_sizes=(8,), warmup=0,
                   iters=2, max_rows=500)
    names = {b["threshold"] for b in rep.breaches}
    assert {"max_abs_diff", "min_size_reduction", "max_latency_ratio"} <= names
    assert not rep.passed and rep.summary().startswith("FAIL")
    assert rep.outputs["probabilities"]["max_abs_diff"] > 0


@pytest.mark.parametrize("kw", [
    {"max_auc_drop": -0.1}, {"max_auc_drop": float("nan")}, {"max_abs_diff": -1},
    {"max_abs_diff": float("inf")}, {"max_latency_ratio": 0}, {"min_size_reduction": 1.0},
    {"min_size_reduction": -0.2}, {"max_auc_drop": True}, {"max_abs_diff": "0.1"},
    {"iters": 0}, {"batch_sizes": (0,)}, {"warmup": -1}, {"max_rows": 0},
])
def test_bad_thresholds(kw, tmp_path):
    # rejected before any model is read
    with pytest.raises(ConfigError):
        validate(tmp_path / "a", tmp_path / "b", tmp_path / "d.npz", **kw)


def test_defaults_documented():
    import inspect

    sig = inspect.signature(validate)
    for k, v in DEFAULT_THRESHOLDS.items():
        assert sig.parameters[k].default == v
    assert sig.parameters["batch_sizes"].default == (1, 64, 512)


def test_data_errors(sample_resource, tmp_path):
    m = sample_resource.model_path
    with pytest.raises(DataError, match="not found"):
        validate(m, m, tmp_path / "none.npz", **FAST)
    with np.load(sample_resource.heldout_path) as z:
        d = {k: z[k][:50] for k in z.files if k != "C4"}
    np.savez(tmp_path / "d.npz", **d)
    with pytest.raises(DataError, match="'C4'"):
        validate(m, m, tmp_path / "d.npz", **FAST)


def test_no_labels_and_no_matplotlib(sample_resource, tmp_path, monkeypatch):
    m = sample_resource.model_path
    with np.load(sample_resource.heldout_path) as z:
        d = {k: z[k][:40] for k in z.files if k != "label"}
    np.savez(tmp_path / "d.npz", **d)
    rep = validate(m, m, tmp_path / "d.npz", batch_sizes=(4,), warmup=0, iters=2)
    assert rep.passed and rep.accuracy is None
    assert any("AUC" in n or "label" in n for n in rep.notes)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    files = write_report(rep, tmp_path / "r")
    html = open(files["html"], encoding="utf-8").read()
    assert "matplotlib is not installed" in html and "data:image" not in html
    assert math.isfinite(rep.timings["total_s"])


def test_calibration_metrics_and_the_activation_gate(sample_resource, perturbed, tmp_path):
    """Reliability, mean prediction vs CTR and |Δp| percentiles; a calibrated INT8 layer over the gate fails."""
    from lpo import options as opts

    model = str(tmp_path / "model")
    shutil.copytree(perturbed, model)
    path = os.path.join(model, "assets.extra", "lpo_manifest.json")
    m = json.load(open(path))
    over = {"clipped": 0.0, "rel_rmse": 0.01, "output_rel_rmse": 4 * opts.ACTIVATION_GATE.max_output_rel_rmse}
    m["conversions"] = [
        {"kind": "dense", "node": "top", "dtype": "INT8", "scheme": "per_channel", "mode": "simulate", "variables": [],
         "activation_range": [0.0, 2.0], "calib_method": "minmax", "calib_error": dict(over, gate="over")},
        {"kind": "dense", "node": "bottom", "dtype": "INT8", "scheme": "per_channel", "mode": "weight_only",
         "variables": [], "calib_method": "minmax",
         "calib_error": dict(over, gate="fallback", fallback_from="compute")}]
    json.dump(m, open(path, "w"))
    rep = validate(sample_resource.model_path, model, sample_resource.heldout_path, raise_on_fail=False,
                   report_dir=tmp_path / "r", **FAST)
    (b,) = rep.breaches  # the weight-only fallback is not gated
    assert b["threshold"] == "activation_gate" and "'top'" in b["message"] and "output error" in b["message"]
    assert [a["node"] for a in rep.activations] == ["top", "bottom"]
    d = rep.prediction["abs_diff"]
    assert list(d) == ["p50", "p90", "p99", "p99.9", "max"] and d["max"] == rep.outputs["probabilities"]["max_abs_diff"]
    assert d["p50"] <= d["p90"] <= d["p99"] <= d["p99.9"] <= d["max"] and d["max"] > 0
    assert rep.prediction["soft_auc_delta"] <= 0
    acc = rep.accuracy
    y = np.load(sample_resource.heldout_path)["label"][:2000]
    assert acc["observed_ctr"] == pytest.approx(float(np.mean(y)))
    for key in ("original", "optimized"):
        bins = acc["reliability"][key]
        assert len(bins) == 10 and sum(r["rows"] for r in bins) == 2000
        assert sum(r["ctr"] * r["rows"] for r in bins) / 2000 == pytest.approx(acc["observed_ctr"])
        assert sum(r["mean_pred"] * r["rows"] for r in bins) / 2000 == pytest.approx(acc[f"mean_pred_{key}"])
        assert [r["mean_pred"] for r in bins] == sorted(r["mean_pred"] for r in bins)
    text = open(rep.report_files["html"], encoding="utf-8").read()
    assert "Reliability curve" in text and "INT8 activations" in text and "from compute" in text
    md = open(rep.report_files["markdown"], encoding="utf-8").read()
    assert "Prediction change" in md and "p99.9" in md and "Reliability" in md
