"""``lpo profile`` / ``lpo.profile`` and the validation report's profile section, on real runs of the DLRM sample."""
import json

import numpy as np
import pytest

import lpo
from lpo.cli import main
from lpo.core.signature import load_signature_specs
from lpo.validation.profile import batch_inputs

pytestmark = pytest.mark.slow  # runs the DLRM sample

BATCH = 64


@pytest.fixture(scope="module")
def dot_sample():
    from conftest import SAMPLE_CACHE

    from lpo.samples.tf1 import cached_sample

    return cached_sample("resource", cache_dir=SAMPLE_CACHE, arch="dot")


@pytest.fixture(scope="module")
def folded(dot_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "fp32"
    return lpo.optimize(dot_sample.model_path, str(out), data_type="FP32", quiet=True).save_path


@pytest.fixture(scope="module")
def compared(dot_sample, folded):
    return lpo.profile(dot_sample.model_path, folded, batch_size=BATCH, runs=3, data=dot_sample.calib_path, top=40)


def test_profile_counts_the_nodes_of_a_run(compared):
    a, b = compared.model, compared.compare
    for m in (a, b):
        assert m.batch_size == BATCH and m.runs == 3 and m.op_ms > 0 and m.p50_ms > 0
        assert sum(o.nodes for o in m.op_types) == m.nodes_per_run
        assert [o.us for o in m.op_types] == sorted((o.us for o in m.op_types), reverse=True)
    ops = a.by_op()
    # the feature-column plumbing of 26 single-value string columns and DeepRec's mask, as the graph has them
    assert ops["StringToHashBucketFast"].nodes == 26 and ops["SparseSegmentMean"].nodes == 26
    assert ops["MatrixBandPart"].nodes == 1 and ops["OnesLike"].nodes == 1
    assert a.lpo_nodes == 0 and a.nodes_per_run > 1000


def test_compare_shows_the_structural_passes(compared):
    a, b = compared.model, compared.compare
    after = b.by_op()
    assert "MatrixBandPart" not in after and "OnesLike" not in after  # the interaction mask, folded
    assert "SparseSegmentMean" not in after and after["StringToHashBucketFast"].nodes == 26  # single-value lookups
    # two Wheres per column's sparse plumbing and the mask's: all gone
    assert a.by_op()["Where"].nodes == 2 * 26 + 1 and "Where" not in after
    assert b.nodes_per_run < a.nodes_per_run and b.lpo_nodes >= 3  # lpo's Reshape, GatherV2, Reshape
    rows = {r["op"]: r for r in compared.rows()}
    assert (rows["MatrixBandPart"]["nodes"], rows["MatrixBandPart"]["nodes_compare"]) == (1, 0)
    text = compared.summary()
    assert "nodes per run" in text and f"{a.nodes_per_run:,}" in text and "MatrixBandPart" in text
    json.dumps(compared.to_dict())


def test_batch_inputs_from_data_repeat_rows_and_synthetic_are_seeded(dot_sample):
    specs = load_signature_specs(dot_sample.model_path)
    calib = dict(np.load(dot_sample.calib_path, allow_pickle=False))
    n = len(calib["I1"])
    got = batch_inputs(specs, n + 3, dot_sample.calib_path)
    assert got["C1"].shape == (n + 3,) and list(got["C1"][n:]) == list(calib["C1"][:3])
    a, b = batch_inputs(specs, 5), batch_inputs(specs, 5)
    assert all(np.array_equal(a[k], b[k]) for k in specs) and a["I1"].dtype == np.float32


def test_cli_profile_json_and_table(dot_sample, folded, capsys):
    assert main(["profile", dot_sample.model_path, "--compare", folded, "--batch", "8", "--runs", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"]["nodes_per_run"] > d["compare"]["nodes_per_run"] and d["settings"]["data"] == "synthetic"
    assert main(["profile", folded, "--batch", "8", "--runs", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "nodes per run" in out and "top 3 op types" in out


def test_cli_profile_user_error_is_one_line(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lpo: error:")


def test_validation_report_has_the_profile_section(dot_sample, folded, tmp_path):
    rep = lpo.validate(dot_sample.model_path, folded, dot_sample.heldout_path, batch_sizes=(32,), iters=2,
                       max_rows=256, profile_runs=2, report_dir=tmp_path)
    prof = rep.profile
    assert prof["batch_size"] == 32 and prof["runs"] == 2
    assert prof["optimized"]["nodes_per_run"] < prof["original"]["nodes_per_run"]
    assert any(r["op"] == "MatrixBandPart" and r["nodes_compare"] == 0 for r in prof["rows"])
    md = (tmp_path / "report.md").read_text()
    assert "## Profile at batch 32" in md and "| MatrixBandPart | 1 | 0 |" in md
    html = (tmp_path / "report.html").read_text()
    assert "Profile at batch 32" in html
    if "matplotlib is not installed" not in html:
        assert "alt='Time per op type'" in html
    assert json.loads((tmp_path / "report.json").read_text())["profile"]["rows"]
    off = lpo.validate(dot_sample.model_path, folded, dot_sample.heldout_path, batch_sizes=(8,), iters=1, max_rows=64,
                       profile_runs=0)
    assert off.profile == {}
