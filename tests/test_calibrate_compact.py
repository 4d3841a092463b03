"""Bounded-memory calibration (lpo.core.calibrate) equals whole-model calibration on every sample.

The reference is the whole model loaded in a session (SignatureRunner) fetching the same
activations; the compact model has no tables in its graph and reads only the looked-up rows.
"""
import numpy as np
import pytest

from lpo import options as opts
from lpo.core.calibrate import CompactRunner, compact_meta_graph
from lpo.core.optimizer import _find, _load_model
from lpo.core.signature import load_signature_specs
from lpo.core.tf2 import lowered_model_dir
from lpo.data.calibration import load_calibration
from lpo.validation.runner import SignatureRunner

VARIANTS = ["sample_resource", "sample_ref", "sample_ref_gather", "sample_partitioned", "sample_keras",
            "sample_dcn"]


def _setup(sample):
    sm, mg = _load_model(sample.model_path, None)
    found = _find(mg)
    tables = [c for c in found if getattr(c, "lookups", None)]
    dense = [c for c in found if c.kind == "dense"]
    return sm, mg, tables, dense


@pytest.mark.parametrize("fixture", VARIANTS)
def test_compact_activations_equal_the_whole_model(request, fixture):
    sample = request.getfixturevalue(fixture)
    sm, mg, tables, dense = _setup(sample)
    assert tables and dense
    tensors = [c.activation if ":" in c.activation else c.activation + ":0" for c in dense]
    with lowered_model_dir(sample.model_path, sm) as full_dir:
        specs = load_signature_specs(full_dir, tags=opts.DEFAULT_TAGS)
        batches = load_calibration(sample.calib_path, {k: (v.dtype, tuple(v.shape)) for k, v in specs.items()},
                                   batch_size=128, max_batches=3)
        with SignatureRunner(full_dir) as full:
            want = [full.fetch(b, tensors) for b in batches]
    with CompactRunner(sample.model_path, sm, mg, tables, batches) as compact:
        got = list(compact.fetch(tensors))
    assert len(got) == len(want) == len(batches)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_compact_graph_has_no_tables(sample_partitioned):
    sm, mg, tables, _dense = _setup(sample_partitioned)
    compact, lookups = compact_meta_graph(mg, tables)
    names = {n.name for n in compact.graph_def.node}
    parts = [p.node for t in tables for p in t.parts]
    assert parts and not any(p in names for p in parts)
    assert len(lookups) >= len(parts)
    ops = {n.op for n in compact.graph_def.node}
    assert not ops & {"ResourceGather"} and "RestoreV2" in ops



@pytest.mark.parametrize("fixture", ["sample_resource", "sample_keras"])
def test_optimize_ranges_equal_whole_model_calibration(request, fixture, tmp_path, monkeypatch):
    """optimize(INT8 static) calibrates through the compact model: the same ranges as loading everything."""
    import lpo
    import lpo.core.calibrate as cal
    from lpo.core.plan import read_manifest

    sample = request.getfixturevalue(fixture)
    lpo.optimize(sample.model_path, str(tmp_path / "compact"), data_type="INT8", calib_file=sample.calib_path,
                 int8_dense="simulate", quiet=True)  # every dense layer calibrated, whatever the CPU

    def refuse(*_a, **_k):
        raise ValueError("forced whole-model calibration")

    monkeypatch.setattr(cal.CompactRunner, "__init__", refuse)
    lpo.optimize(sample.model_path, str(tmp_path / "whole"), data_type="INT8", calib_file=sample.calib_path,
                 int8_dense="simulate", quiet=True)
    a = {c.node: c.activation_range for c in read_manifest(str(tmp_path / "compact")).conversions if c.kind == "dense"}
    b = {c.node: c.activation_range for c in read_manifest(str(tmp_path / "whole")).conversions if c.kind == "dense"}
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
