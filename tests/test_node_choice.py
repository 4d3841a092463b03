"""Per-node variants in opt_config: "INT8:per_row", "INT8:weight_only", {"dtype": ..., "scheme": ...}."""
import json
import os

import pytest

import lpo
from lpo import options as opts
from lpo.errors import ConfigError


@pytest.mark.parametrize("value, dtype, variant", [
    ("INT8", "INT8", None),
    ("int8:per-row", "INT8", "per_row"),
    ("INT8:weight_only", "INT8", "weight_only"),
    ("bf16:Compute", "BF16", "compute"),
    ("FP32", "FP32", None),
    ({"dtype": "int8", "scheme": "per_dim"}, "INT8", "per_dim"),
    ({"dtype": "FP16", "mode": "weight_only"}, "FP16", "weight_only"),
])
def test_node_choice_parses(value, dtype, variant):
    node = opts.normalize_node_choice(value)
    assert (node.dtype, node.variant) == (dtype, variant)
    assert opts.normalize_node_choice(str(node)) == node  # str() is the opt_config spelling


@pytest.mark.parametrize("value, match", [
    ("INT8:per_col", "per_dim"),            # did-you-mean the closest variant
    ("BF16:per_row", "variant"),            # 16-bit has no scale scheme
    ("FP32:per_row", "takes no variant"),
    ("INT9:per_row", "INT8"),
    ({"dtype": "INT8", "scheme": "per_row", "mode": "static"}, "at most one"),
    ({"scheme": "per_row"}, "dtype"),
])
def test_bad_node_choice_is_a_config_error(value, match):
    with pytest.raises(ConfigError, match=match):
        opts.normalize_node_choice(value)


def test_node_options_override_only_their_field():
    base = opts.OPTIMIZE
    assert opts.node_options(base, opts.NodeChoice("INT8")) is base
    assert opts.node_options(base, opts.NodeChoice("INT8", "per_row")).embedding_scheme == "per_row"
    assert opts.node_options(base, opts.NodeChoice("INT8", "weight_only")).int8_dense == "weight_only"
    got = opts.node_options(base, opts.NodeChoice("BF16", "compute"))
    assert (got.dense_mode, got.int8_dense, got.embedding_scheme) == ("compute", base.int8_dense,
                                                                      base.embedding_scheme)


def _kinds(model_path):
    cands = lpo.inspect_model(model_path).candidates
    return [c.name for c in cands if c.kind == "embedding"], [c.name for c in cands if c.kind == "dense"]


def test_per_node_variants_reach_the_manifest_and_checkpoint(sample_keras, tmp_path):
    import tensorflow as tf

    embs, dense = _kinds(sample_keras.model_path)
    cfg = {embs[0]: "INT8:per_row", embs[1]: "INT8", embs[2]: {"dtype": "INT8", "scheme": "per_row"},
           dense[0]: "INT8:weight_only", dense[1]: "INT8:static", dense[2]: "BF16:compute"}
    out = tmp_path / "m"
    lpo.optimize(sample_keras.model_path, str(out), opt_config=cfg, calib_file=sample_keras.calib_path,
                 embedding_scheme="per_dim", int8_dense="static", quiet=True, group_tables=False)
    manifest = json.load(open(out / "assets.extra" / "lpo_manifest.json"))
    got = {c["node"]: (c["dtype"], c["scheme"], c["mode"]) for c in manifest["conversions"]}
    assert got == {embs[0]: ("INT8", "per_row", ""), embs[1]: ("INT8", "per_dim", ""),
                   embs[2]: ("INT8", "per_row", ""), dense[0]: ("INT8", "per_channel", "weight_only"),
                   dense[1]: ("INT8", "per_channel", "simulate"), dense[2]: ("BF16", "cast", "compute")}
    shapes = tf.train.load_checkpoint(os.path.join(out, "variables", "variables")).get_variable_to_shape_map()
    scales = {k: v for k, v in shapes.items() if k.endswith("/lpo_scale")}
    assert sorted(v for k, v in scales.items() if any(k.startswith(e) for e in embs)) == [[16], [1000, 1], [1000, 1]]
    # grouped: the two per_row tables form one group, the per_dim one stays alone
    grouped = tmp_path / "g"
    lpo.optimize(sample_keras.model_path, str(grouped), opt_config=cfg, calib_file=sample_keras.calib_path,
                 embedding_scheme="per_dim", int8_dense="static", group_tables=True, quiet=True)
    convs = json.load(open(grouped / "assets.extra" / "lpo_manifest.json"))["conversions"]
    assert [(c["dtype"], c["scheme"], sorted(c["targets"]["tables"])) for c in convs if c["kind"] == "group"] == [
        ("INT8", "per_row", sorted([embs[0], embs[2]]))]
    assert [c["node"] for c in convs if c["kind"] == "embedding"] == [embs[1]]


@pytest.mark.parametrize("which, value", [("embedding", "INT8:weight_only"), ("embedding", "BF16:compute"),
                                          ("dense", "INT8:per_row")])
def test_variant_of_the_other_kind_is_a_config_error(sample_keras, tmp_path, which, value):
    embs, dense = _kinds(sample_keras.model_path)
    node = embs[0] if which == "embedding" else dense[0]
    with pytest.raises(ConfigError, match="does not apply to this"):
        lpo.optimize(sample_keras.model_path, str(tmp_path / "m"), opt_config={node: value},
                     calib_file=sample_keras.calib_path, quiet=True)
    assert not (tmp_path / "m").exists()
