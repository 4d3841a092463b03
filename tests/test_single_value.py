"""Fused single-value lookups on the TF1 samples: equivalence on fuzzed inputs, nodes per run, refresh.

The samples feed 26 hashed string columns (``[None]``, dim 16) through ``input_layer``; every
column is fused (lpo/passes/single_value.py). Fused FP32 must be within 1e-6 of the original,
fused INT8 within 1e-6 of unfused INT8, and a refresh of a fused model must equal a
re-optimization bit for bit.
"""
import filecmp
import os
import shutil

import numpy as np
import pytest

import lpo
from lpo.core.plan import read_manifest
from lpo.samples.tf1 import SPARSE_NAMES, perturb_checkpoint, predict

NUM_COLUMNS = len(SPARSE_NAMES)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("single_value")


def fuzzed(sample, rows: int, seed: int = 0) -> dict:
    """Held-out rows (drawn with repeats) with empty strings and one value repeated in some columns."""
    data = dict(np.load(sample.heldout_path))
    data.pop("label", None)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data["C1"]), rows)
    data = {k: v[pick].copy() for k, v in data.items()}
    for i, name in enumerate(SPARSE_NAMES):
        col = data[name].astype(object)
        if i % 3 == 0:
            col[rng.random(rows) < 0.3] = b""
        if i % 5 == 2:
            col[:] = col[0]  # one value repeated over the batch
        if i == 7:
            col[:] = b""  # a column empty in every row
        data[name] = col.astype(bytes)
    return data


def _oov(data):
    """Never-seen values in a few columns (hashed to some bucket like any other string)."""
    for name in SPARSE_NAMES[1::3]:
        col = data[name].astype(object)
        col[::4] = [f"never seen {j}".encode() for j in range(len(col[::4]))]
        data[name] = col.astype(bytes)
    return data


@pytest.mark.parametrize("variant", ["resource", "ref", "ref_gather"])
def test_fp32_fused_equals_the_original(request, optimized_sample, variant):
    sample = request.getfixturevalue(f"sample_{variant}")
    path = optimized_sample(sample, opt_config={})
    plan = read_manifest(path)
    assert plan.conversions == [] and len(plan.structural["single_value"]) == NUM_COLUMNS
    assert {e["combiner"] for e in plan.structural["single_value"]} == {"mean"}
    for rows in (1, 7, 2048):
        data = _oov(fuzzed(sample, rows, seed=rows))
        np.testing.assert_allclose(predict(path, data), predict(sample.model_path, data), rtol=0, atol=1e-6)


def test_partitioned_tables_are_left_alone(sample_partitioned, optimized_sample):
    path = optimized_sample(sample_partitioned, opt_config={})
    assert read_manifest(path).structural == {}


@pytest.mark.parametrize("kw", [{"data_type": "INT8", "int8_dense": "weight_only"},
                                {"data_type": "INT8", "embedding_scheme": "per_row"},  # calibrated dense layers
                                {"data_type": "INT4", "int8_dense": "weight_only"},
                                {"data_type": "BF16"}], ids=["int8", "int8-calibrated", "int4", "bf16"])
def test_low_precision_fused_equals_unfused(sample_resource, optimized_sample, kw):
    # the single-value pass alone (grouping the fused tables is the next test's subject)
    fused = optimized_sample(sample_resource, group_tables=False, **kw)
    unfused = optimized_sample(sample_resource, folds=False, group_tables=False, **kw)
    assert len(read_manifest(fused).structural["single_value"]) == NUM_COLUMNS
    assert read_manifest(unfused).structural == {}
    a, b = read_manifest(fused), read_manifest(unfused)
    assert [(c.node, c.dtype, c.scheme) for c in a.conversions] == [(c.node, c.dtype, c.scheme) for c in b.conversions]
    assert [c.activation_range for c in a.conversions] == [c.activation_range for c in b.conversions]
    for rows in (1, 512):
        data = _oov(fuzzed(sample_resource, rows, seed=rows + 1))
        np.testing.assert_allclose(predict(fused, data), predict(unfused, data), rtol=0, atol=1e-6)
    # a structural pass changes no variable: both checkpoints are byte-identical
    names = sorted(os.listdir(os.path.join(fused, "variables")))
    assert names == sorted(os.listdir(os.path.join(unfused, "variables")))
    _same, diff, errors = filecmp.cmpfiles(os.path.join(fused, "variables"), os.path.join(unfused, "variables"), names,
                                           shallow=False)
    assert not diff and not errors


@pytest.mark.parametrize("kw", [{"data_type": "INT8", "int8_dense": "weight_only"}, {"data_type": "FP32"}],
                         ids=["int8", "fp32"])
def test_fused_lookups_group_and_equal_the_unfused_model(sample_resource, optimized_sample, kw):
    """Fused lookups are single-value, so their tables group (one gather): outputs stay within 1e-6."""
    fused = optimized_sample(sample_resource, group_tables=True, **kw)
    unfused = optimized_sample(sample_resource, folds=False, group_tables=False, **kw)
    groups = [c for c in read_manifest(fused).conversions if c.kind == "group"]
    assert len(groups) == 1 and len(groups[0].targets["tables"]) == NUM_COLUMNS
    for rows in (1, 512):
        data = _oov(fuzzed(sample_resource, rows, seed=rows + 7))
        np.testing.assert_allclose(predict(fused, data), predict(unfused, data), rtol=0, atol=1e-6)


def nodes_per_run(model_path, data) -> int:
    """Nodes one call runs (RunMetadata FULL_TRACE step_stats), batch of ``data``."""
    import tensorflow as tf

    from lpo.validation.runner import SignatureRunner

    with SignatureRunner(model_path) as runner:
        fetches = [runner.outputs[n] for n in runner.output_names]
        runner.run(data)  # warm up (grappler, kernels)
        meta = tf.compat.v1.RunMetadata()
        runner.session.run(fetches, runner.feed_dict(data), run_metadata=meta,
                           options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
    return sum(len(d.node_stats) for d in meta.step_stats.dev_stats)


def test_fused_graph_runs_far_fewer_nodes(sample_resource, optimized_sample):
    data = fuzzed(sample_resource, 64)
    before = nodes_per_run(sample_resource.model_path, data)
    fp32 = nodes_per_run(optimized_sample(sample_resource, opt_config={}), data)
    int8 = nodes_per_run(optimized_sample(sample_resource, data_type="INT8", int8_dense="weight_only"), data)
    assert fp32 < before / 3, (fp32, before)
    # + per table its scale's VarHandleOp and read, Cast and Mul (dequantization); + the dense layers'
    assert int8 <= fp32 + 4 * NUM_COLUMNS + 10, (int8, fp32)


def test_refresh_of_a_fused_model_equals_reoptimization(sample_resource, optimized_sample, out):
    kw = {"data_type": "INT8", "int8_dense": "weight_only"}
    first = optimized_sample(sample_resource, **kw)
    prefix = perturb_checkpoint(sample_resource.model_path, str(out / "retrained" / "ckpt" / "model.ckpt-9"))
    model = out / "retrained" / "fp32"
    shutil.copytree(sample_resource.model_path, model, ignore=shutil.ignore_patterns("variables"))
    (model / "variables").mkdir()
    for f in os.listdir(out / "retrained" / "ckpt"):
        shutil.copy(out / "retrained" / "ckpt" / f, model / "variables" / f.replace("model.ckpt-9", "variables", 1))
    again = out / "again"
    lpo.optimize(str(model), str(again), quiet=True, **kw)
    refreshed = out / "refreshed"
    lpo.refresh(first, prefix, str(refreshed), quiet=True)
    data = fuzzed(sample_resource, 256)
    assert np.array_equal(predict(str(refreshed), data), predict(str(again), data))

    names = sorted(os.listdir(again / "variables"))
    assert names == sorted(os.listdir(refreshed / "variables"))
    _same, diff, errors = filecmp.cmpfiles(again / "variables", refreshed / "variables", names, shallow=False)
    assert not diff and not errors
    assert filecmp.cmp(again / "saved_model.pb", refreshed / "saved_model.pb", shallow=False)
