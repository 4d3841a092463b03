"""The interaction-mask structural pass end to end on the DeepRec-shaped DLRM sample (``arch='dot'``).

The folded model's outputs equal the original's bit for bit at FP32; the manifest's ``structural``
and the result list the folded site; refresh/convert_ckpt of a folded model equal a re-optimization.
"""
import os
from collections import Counter

import numpy as np
import pytest

import lpo
from lpo.core.plan import read_manifest
from lpo.samples.tf1 import graph_op_types, predict, retrained_model

pytestmark = pytest.mark.slow  # builds and runs the DLRM sample

ROWS = 1024
GATHER = "dlrm/Op_dot_layer/boolean_mask/GatherV2"


@pytest.fixture(scope="module")
def dot_sample():
    from conftest import SAMPLE_CACHE

    from lpo.samples.tf1 import cached_sample

    return cached_sample("resource", cache_dir=SAMPLE_CACHE, arch="dot")


@pytest.fixture(scope="module")
def data(dot_sample):
    d = dict(np.load(dot_sample.heldout_path))
    d.pop("label")
    return {k: v[:ROWS] for k, v in d.items()}


@pytest.fixture(scope="module")
def folded(dot_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("fold") / "fp32"
    # the structural passes alone: grouping the fused tables is tests/test_grouping.py's subject
    return lpo.optimize(dot_sample.model_path, str(out), data_type="FP32", group_tables=False, quiet=True)


def _op_counts(model_path, *, single_value=False) -> Counter:
    """Op counts of the model's graph (``single_value``: after the single-value pass alone, as ``optimize`` runs it)."""
    from lpo.core.savedmodel import read_saved_model, select_meta_graph
    from lpo.passes.single_value import fuse_single_value_lookups
    from lpo.passes.surgery import Surgery

    mg = select_meta_graph(read_saved_model(model_path))
    if single_value:
        surgery = Surgery(mg)
        assert fuse_single_value_lookups(surgery)
        mg = surgery.finish()
    return Counter(n.op for n in mg.graph_def.node)


def test_sample_has_deeprecs_dot_interaction(dot_sample):
    ops = graph_op_types(dot_sample.model_path)
    assert {"OnesLike", "MatrixBandPart", "Where", "BatchMatMulV2", "StringToHashBucketFast"} <= ops
    assert len(dot_sample.embedding_variables) == 26 and len(dot_sample.dense_kernels) == 7
    assert dot_sample.auc > 0.65  # it learned something (the Bayes AUC is ~0.89)


def test_fp32_fold_is_bit_equal_and_recorded(dot_sample, folded, data):
    assert [n.line() for n in folded.fused if n.kind == "interaction"] == [f"Fold interaction mask (exact): {GATHER}"]
    assert folded.optimized == [] and folded.kept_fp32 and folded.size_ratio == pytest.approx(1.0, abs=1e-3)
    plan = read_manifest(folded.save_path)
    (entry,) = plan.structural["interaction"]
    assert (plan.data_type, plan.conversions, entry["node"]) == ("FP32", [], GATHER)
    assert entry["shape"] == [27, 27] and entry["kept"] == 351 and entry["complement"] is True
    assert not {"OnesLike", "MatrixBandPart"} & graph_op_types(folded.save_path)
    before, after = _op_counts(dot_sample.model_path, single_value=True), _op_counts(folded.save_path)
    assert after["Where"] == before["Where"] - 1 and after["GatherV2"] == before["GatherV2"]  # the mask's Where went
    a, b = predict(dot_sample.model_path, data), predict(folded.save_path, data)
    assert np.array_equal(a, b)
    for batch in (1, 7):  # a batch smaller than the model's 27 features, and odd sizes
        small = {k: v[:batch] for k, v in data.items()}
        assert np.array_equal(predict(dot_sample.model_path, small), predict(folded.save_path, small))


def test_low_precision_folds_before_find_and_equals_unfolded(dot_sample, data, tmp_path):
    kw = {"data_type": "INT8", "int8_dense": "weight_only", "group_tables": False, "quiet": True}
    res = lpo.optimize(dot_sample.model_path, str(tmp_path / "int8"), **kw)
    plan = read_manifest(res.save_path)
    assert [e["node"] for e in plan.structural["interaction"]] == [GATHER] and plan.options["folds"] is True
    assert {c.kind for c in plan.conversions} == {"embedding", "dense"}
    assert "MatrixBandPart" not in graph_op_types(res.save_path)
    unfolded = lpo.optimize(dot_sample.model_path, str(tmp_path / "int8-unfolded"), folds=False, **kw)
    plan = read_manifest(unfolded.save_path)
    assert plan.structural == {} and plan.options["folds"] is False
    assert "MatrixBandPart" in graph_op_types(unfolded.save_path)
    assert np.array_equal(predict(res.save_path, data), predict(unfolded.save_path, data))


def test_refresh_and_convert_ckpt_of_a_folded_model_equal_a_reoptimization(dot_sample, folded, data, tmp_path):
    prefix, fp32 = retrained_model(dot_sample.model_path, str(tmp_path / "retrained"))
    again = lpo.optimize(fp32, str(tmp_path / "again"), data_type="FP32", group_tables=False, quiet=True)
    refreshed = lpo.refresh(folded.save_path, prefix, str(tmp_path / "refreshed"), quiet=True)
    want = predict(again.save_path, data)
    assert np.array_equal(predict(refreshed.save_path, data), want)
    assert not np.array_equal(want, predict(folded.save_path, data))  # the new weights are in use
    conv = lpo.convert_ckpt(prefix, str(tmp_path / "conv" / "variables"), folded.save_path, quiet=True)
    assert conv.tensors_converted == 0
    for ext in (".index", ".data-00000-of-00001"):
        with open(conv.save_prefix + ext, "rb") as f, open(os.path.join(again.save_path, "variables", "variables" + ext),
                                                            "rb") as g:
            assert f.read() == g.read(), ext


def test_samples_cli_writes_the_dot_sample(dot_sample, tmp_path, monkeypatch, capsys):
    from conftest import SAMPLE_CACHE

    from lpo.cli import main

    monkeypatch.setenv("LPO_CACHE_DIR", SAMPLE_CACHE)
    assert main(["samples", "model", str(tmp_path / "m"), "--arch", "dot", "--data", str(tmp_path / "d")]) == 0
    assert "MatrixBandPart" in graph_op_types(str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path / "d")) == ["calibration.csv", "heldout.npz"]
