"""Tests of lpo.samples.tf1: the sample SavedModels, their data and perturb_checkpoint."""
import csv
import os

import numpy as np
import pytest

from lpo.samples import tf1 as samples
from lpo.validation.metrics import auc as rank_auc

# Expected op types on the path embedding table -> ... -> SparseSegmentMean.
EXPECTED_LOOKUP_OPS = {
    "resource": {"VarHandleOp", "ResourceGather", "Unique", "SparseSegmentMean"},
    "ref": {"VariableV2", "Identity", "SparseSegmentMean"},
    "partitioned": {"VarHandleOp", "DynamicPartition", "ResourceGather",
                    "ParallelDynamicStitch", "Unique", "SparseSegmentMean"},
}
ABSENT_OPS = {
    "resource": {"VariableV2", "DynamicPartition"},
    "ref": {"VarHandleOp", "ResourceGather", "DynamicPartition"},
    "partitioned": {"VariableV2"},
}
TRAINING_OPS = {"ApplyAdam", "ResourceApplyAdam", "ResourceSparseApplyAdam",
                "SparseApplyAdam", "ResourceScatterAdd", "ScatterAdd"}


@pytest.fixture(params=["resource", "ref", "partitioned"])
def sample(request):
    return request.getfixturevalue(f"sample_{request.param}")


def _run_signatures(model_path, data, n=4096):
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    out = {}
    with v1.Session(graph=g) as sess:
        mg = v1.saved_model.load(sess, ["serve"], model_path)
        assert set(mg.signature_def) >= {"serving_default", "predict_logits"}
        for sig_name, out_name in samples.SIGNATURES.items():
            sig = mg.signature_def[sig_name]
            assert set(sig.inputs) == set(samples.INPUT_NAMES)
            assert list(sig.outputs) == [out_name]
            feed = {g.get_tensor_by_name(sig.inputs[k].name): data[k][:n] for k in sig.inputs}
            out[sig_name] = sess.run(g.get_tensor_by_name(sig.outputs[out_name].name), feed)
    return out


@pytest.mark.slow
def test_heldout_auc_and_signatures(sample):
    with np.load(sample.heldout_path) as z:
        data = {k: z[k] for k in z.files}
    assert set(data) == set(samples.INPUT_NAMES) | {"label"}
    assert len(data["label"]) >= 20000
    out = _run_signatures(sample.model_path, data)
    probs, logits = out["serving_default"], out["predict_logits"]
    assert probs.shape == (4096,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    auc = rank_auc(data["label"][:4096], probs)
    assert 0.72 < auc < 0.9, auc
    assert 0.72 < sample.auc < 0.9, sample.auc


def test_lookup_ops(sample):
    ops = samples.graph_op_types(sample.model_path)
    assert EXPECTED_LOOKUP_OPS[sample.variant] <= ops, EXPECTED_LOOKUP_OPS[sample.variant] - ops
    assert not (ABSENT_OPS[sample.variant] & ops)
    assert not (TRAINING_OPS & ops)
    assert {"MatMul", "BiasAdd", "Relu", "Sigmoid"} <= ops


def test_data_files(sample):
    with np.load(sample.calib_path) as z:
        assert set(z.files) == set(samples.INPUT_NAMES)
        assert len(z["I1"]) == 2048 and z["I1"].dtype == np.float32
        assert z["C1"].dtype.kind == "S"
    with open(sample.train_csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", *samples.INPUT_NAMES]
    assert len(rows) > 1000
    assert rows[1][0] in ("0", "1") and rows[1][-1].startswith("c26_")


def test_perturb_checkpoint(sample, tmp_path):
    import tensorflow as tf

    src = os.path.join(sample.model_path, "variables", "variables")
    out = samples.perturb_checkpoint(sample.model_path, str(tmp_path / "ckpt" / "model"))
    a, b = tf.train.load_checkpoint(src), tf.train.load_checkpoint(out)
    shapes = a.get_variable_to_shape_map()
    assert b.get_variable_to_shape_map() == shapes
    assert b.get_variable_to_dtype_map() == a.get_variable_to_dtype_map()
    emb = sample.embedding_variables[0]
    for key in (emb, sample.dense_kernels[0]):
        x, y = a.get_tensor(key), b.get_tensor(key)
        assert not np.array_equal(x, y)
        rel = np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x ** 2))
        assert 0.001 < rel < 0.05, rel


def test_perturbed_checkpoint_restores_into_model(sample_partitioned, tmp_path):
    """Same keys and slices: the serving graph's own saver restores it."""
    import tensorflow as tf

    v1 = tf.compat.v1
    out = samples.perturb_checkpoint(sample_partitioned.model_path, str(tmp_path / "p"))
    with v1.Session(graph=tf.Graph()) as sess:
        mg = v1.saved_model.load(sess, ["serve"], sample_partitioned.model_path)
        sess.run(mg.saver_def.restore_op_name, {mg.saver_def.filename_tensor_name: out})


def test_write_tfrecord(sample_resource, tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "h.tfrecord")
    n = samples.write_tfrecord(sample_resource.heldout_path, path, max_rows=10)
    assert n == 10
    recs = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    ex = tf.train.Example.FromString(recs[0])
    assert set(ex.features.feature) == set(samples.INPUT_NAMES) | {"label"}
    assert len(ex.features.feature["C3"].bytes_list.value) == 1


def test_generate_data_deterministic():
    a = samples.generate_data(500, seed=3, stream=1)
    b = samples.generate_data(500, seed=3, stream=1)
    c = samples.generate_data(500, seed=3, stream=0)
    for k in samples.INPUT_NAMES + ("label",):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["C1"], c["C1"])
    assert (a["I2"] < 0).any()


def test_cached_sample_reuses(sample_resource):
    again = samples.cached_sample("resource", cache_dir=os.path.dirname(sample_resource.root))
    assert again.to_dict() == sample_resource.to_dict()


@pytest.mark.slow
def test_ref_gather_lookup_small_build(tmp_path):
    """variant='ref', lookup='gather': VariableV2 -> Identity -> GatherV2 -> SparseSegmentMean."""
    s = samples.build_sample(str(tmp_path / "s"), variant="ref", lookup="gather",
                             train_rows=4096, heldout_rows=1000, calib_rows=64,
                             csv_rows=10, epochs=1)
    ops = samples.graph_op_types(s.model_path)
    assert {"VariableV2", "GatherV2", "Unique", "SparseSegmentMean"} <= ops
    assert s.lookup == "gather" and os.path.isfile(os.path.join(s.root, "sample.json"))
    # the patch is scoped to the build
    from tensorflow.python.compat import compat
    from tensorflow.python.ops import embedding_ops
    assert embedding_ops.compat is compat
    for bad in (dict(variant="partitioned", lookup="fast"),
                dict(variant="resource", lookup="fast"), dict(variant="nope")):
        with pytest.raises(ValueError):
            samples.build_sample(str(tmp_path / "q"), **bad)
