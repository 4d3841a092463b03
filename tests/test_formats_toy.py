"""A storage form added in one module (tests/toy_format.py), registered at test time, is optimized,
converted by convert_ckpt and simulated by AUTO on the TF1 sample without any other file knowing it."""
import os

import numpy as np
import pytest

import lpo
from lpo import formats, options as opts
from lpo.samples.tf1 import predict

import toy_format as toy

ROWS = 512


@pytest.fixture
def registered():
    formats.register(toy)
    yield toy
    formats.unregister(toy.NAME)


def _rows(sample):
    data = dict(np.load(sample.heldout_path))
    data.pop("label", None)
    return {k: v[:ROWS] for k, v in data.items()}


def test_a_toy_form_in_one_module_optimizes_converts_and_simulates(sample_resource, registered, tmp_path):
    import tensorflow as tf

    from lpo.core.optimizer import _find, _load_model
    from lpo.core.savedmodel import variable_specs, variables_prefix
    from lpo.tune.auto import _reader
    from lpo.tune.simulate import SimulatedModel
    from lpo.tune.space import node_space

    src = variables_prefix(sample_resource.model_path)
    sm, mg = _load_model(sample_resource.model_path, None)
    tables = [c for c in _find(mg, src) if c.kind == "embedding"]
    assert tables
    config = {c.name: "toy8" for c in tables}  # case-insensitive like every opt_config data type
    out = str(tmp_path / "toy")
    lpo.optimize(sample_resource.model_path, out, opt_config=config, quiet=True)

    plan = lpo.core.plan.read_manifest(out)
    assert {(c.dtype, c.scheme) for c in plan.conversions} == {("TOY8", "per_dim")}
    written = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    fp32 = tf.train.load_checkpoint(src)
    for c in plan.conversions:
        for vc in c.variables:  # the checkpoint holds exactly the toy numerics of the FP32 values
            q, scale = toy.quantize(fp32.get_tensor(vc.key))
            assert np.array_equal(written.get_tensor(vc.key), q)
            assert np.array_equal(written.get_tensor(vc.scale_key), scale)

    # convert_ckpt replays the plan bit for bit
    again = str(tmp_path / "again" / "variables")
    lpo.convert_ckpt(src, again, out, quiet=True)
    replay = tf.train.load_checkpoint(again)
    assert sorted(replay.get_variable_to_shape_map()) == sorted(written.get_variable_to_shape_map())
    for k in written.get_variable_to_shape_map():
        assert np.array_equal(replay.get_tensor(k), written.get_tensor(k)), k

    # AUTO's ladder takes the form, and its simulation equals the built model
    read = _reader(src)
    spaces = [node_space(c, read, opts.OPTIMIZE, ladder=["TOY8", "FP32"]) for c in tables]
    assert all([f.choice for f in s.forms] == ["TOY8", "FP32"] for s in spaces)
    data = _rows(sample_resource)
    with SimulatedModel(sample_resource.model_path, {(v.key, v.slice): v.node for v in variable_specs(mg).values()},
                        read) as sim:
        sim.apply(spaces, {s.name: "TOY8" for s in spaces})
        simulated = next(iter(sim.predict([data]).values())).reshape(-1)
    built = predict(out, data).reshape(-1)
    assert np.max(np.abs(simulated - built)) <= 1e-6
    assert np.max(np.abs(built - predict(sample_resource.model_path, data).reshape(-1))) > 0  # it did quantize
