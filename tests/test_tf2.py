"""TF2 SavedModels (Keras 3 ``model.export``, ``tf.saved_model.save``): lowering and optimize()."""
import os
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.errors import ConfigError, ModelFormatError
from lpo.validation.metrics import auc
from lpo.samples.keras_models import serve

BOUNDS = {"FP16": 1e-3, "BF16": 1e-2}


def heldout(sample):
    data = dict(np.load(sample.heldout_path))
    label = data.pop("label")
    return data, label


@pytest.fixture(scope="module")
def keras_opt(sample_keras, tmp_path_factory):
    cache = {}

    def get(dtype, **kw):
        key = (dtype, tuple(sorted(kw.items())))
        if key not in cache:
            out = str(tmp_path_factory.mktemp("tf2opt") / "model")
            result = lpo.optimize(sample_keras.model_path, out, data_type=dtype, calib_file=sample_keras.calib_path,
                                  quiet=True, **kw)
            cache[key] = (out, result)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def keras_base(sample_keras):
    data, label = heldout(sample_keras)
    return serve(sample_keras.model_path, data), label


def _served_fp32_bytes(model_path):
    """Bytes of the float32 variables the serving signature reads (Keras also saves a duplicate of each)."""
    from lpo.core.savedmodel import read_saved_model, variable_specs
    from lpo.core.tf2 import lower_tf2

    mg = lower_tf2(read_saved_model(model_path)).meta_graphs[0]
    return sum(int(np.prod(s.shape)) * 4 for s in variable_specs(mg).values())


def test_lowering_keeps_outputs_and_restores_object_keys(sample_keras, tmp_path, keras_base):
    """The lowered graph + the original object-based checkpoint serve exactly the FP32 predictions."""
    from lpo.core.savedmodel import read_saved_model, variable_specs
    from lpo.core.tf2 import lower_tf2, lowered_model_dir

    sm = lower_tf2(read_saved_model(sample_keras.model_path))
    mg = sm.meta_graphs[0]
    assert not mg.object_graph_def.nodes
    assert not [n for n in mg.graph_def.node if n.op in ("StatefulPartitionedCall", "PartitionedCall")]
    specs = variable_specs(mg)
    assert sorted(specs) == sorted(sample_keras.embedding_variables + sample_keras.dense_kernels
                                   + [k.replace("kernel", "bias") for k in sample_keras.dense_kernels])
    assert all(s.key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and s.resource for s in specs.values())
    data, _ = heldout(sample_keras)
    rows = {k: v[:2000] for k, v in data.items()}
    with lowered_model_dir(sample_keras.model_path, sm) as d:
        p = serve(d, rows)
    # the same batch through the original: exact (a larger batch may round the last rows differently
    # on some CPUs: 1 ulp at rows 1998-1999 on an AMD Zen 3 against the 20,000-row baseline)
    np.testing.assert_array_equal(p, serve(sample_keras.model_path, rows))
    np.testing.assert_allclose(p, keras_base[0][:2000], rtol=0, atol=1e-6)


def test_inspect_lists_keras_layers_by_readable_name(sample_keras):
    cands = lpo.inspect_model(sample_keras.model_path).candidates
    emb = sorted(c.name for c in cands if c.kind == "embedding")
    dense = sorted(c.name for c in cands if c.kind == "dense")
    assert emb == sorted(sample_keras.embedding_variables)
    assert dense == sorted(sample_keras.dense_kernels)
    assert all(c.shape == [1000, 16] for c in cands if c.kind == "embedding")
    top1 = next(c for c in cands if c.name == "top_1/kernel")
    assert top1.detail == "MatMul+AddV2"  # Keras Dense bias is AddV2 after MatMul: accepted as the bias


@pytest.mark.parametrize("dtype", ["FP16", "BF16"])
def test_keras_16bit(sample_keras, keras_opt, keras_base, dtype):
    import tensorflow as tf

    out, result = keras_opt(dtype)
    assert {n.node for n in result.optimized} == set(sample_keras.embedding_variables + sample_keras.dense_kernels)
    fn = tf.saved_model.load(out).signatures["serving_default"]
    assert sorted(fn.structured_input_signature[1]) == sorted(sample_keras.input_names)
    assert list(fn.structured_outputs) == [sample_keras.output_name]
    data, _ = heldout(sample_keras)
    p = serve(out, data)
    assert np.abs(p - keras_base[0]).max() <= BOUNDS[dtype]
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    dtypes = {k: v.name for k, v in reader.get_variable_to_dtype_map().items()}
    want = "float16" if dtype == "FP16" else "bfloat16"
    assert sum(v == want for v in dtypes.values()) == 12  # 8 tables + 4 kernels, never frozen


@pytest.mark.parametrize("dtype", ["FP16", "BF16"])
def test_keras_16bit_compute_mode(sample_keras, keras_opt, keras_base, dtype):
    """dense_mode='compute' runs MatMul -> AddV2 (the Keras bias) -> Relu in 16 bit."""
    import tensorflow as tf

    out, _ = keras_opt(dtype, dense_mode="compute")
    data, _ = heldout(sample_keras)
    assert np.abs(serve(out, data) - keras_base[0]).max() <= BOUNDS[dtype]
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    want = "float16" if dtype == "FP16" else "bfloat16"
    assert sum(v.name == want for v in reader.get_variable_to_dtype_map().values()) == 16  # + 4 biases


def test_keras_int8(sample_keras, keras_opt, keras_base):
    import tensorflow as tf

    out, result = keras_opt("INT8")
    data, label = heldout(sample_keras)
    p = serve(out, data)
    assert auc(label, keras_base[0]) - auc(label, p) <= 0.002
    from lpo.fsutil import dir_bytes

    var_bytes = dir_bytes(os.path.join(out, "variables"))
    assert var_bytes / _served_fp32_bytes(sample_keras.model_path) <= 0.30
    assert result.size_ratio <= 0.30
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    dtypes = {k: v.name for k, v in reader.get_variable_to_dtype_map().items()}
    assert sum(v == "int8" for v in dtypes.values()) == 12
    # every signature keeps its input/output keys
    fns = tf.saved_model.load(out).signatures
    assert set(fns) >= {"serving_default", "serve"}


def test_keras_opt_config_and_saved_model_cli(sample_keras, tmp_path):
    out = str(tmp_path / "m")
    r = lpo.optimize(sample_keras.model_path, out, opt_config={"emb_C1/embeddings": "INT8", "top_0/kernel": "BF16"},
                     data_type="FP16", calib_file=sample_keras.calib_path, quiet=True)
    assert sorted((n.node, n.dtype) for n in r.optimized) == [("emb_C1/embeddings", "INT8"), ("top_0/kernel", "BF16")]
    with pytest.raises(ConfigError, match="emb_C1/embeddings"):
        lpo.optimize(sample_keras.model_path, str(tmp_path / "x"), opt_config={"emb_C1/embedding": "INT8"},
                     quiet=True)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--dir", out, "--tag_set", "serve", "--signature_def", "serving_default"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "inputs['C1']" in res.stdout and "outputs['output_0']" in res.stdout


def test_keras_validate(sample_keras, keras_opt):
    out, _ = keras_opt("INT8")
    report = lpo.validate(sample_keras.model_path, out, sample_keras.heldout_path, batch_sizes=(64,))
    assert report.passed, report.to_dict()["breaches"]


def test_tf2_without_saver_is_a_model_format_error(sample_keras, tmp_path):
    import shutil

    from lpo.core.savedmodel import read_saved_model, write_saved_model

    m = str(tmp_path / "m")
    shutil.copytree(sample_keras.model_path, m)
    sm = read_saved_model(m)
    sm.meta_graphs[0].ClearField("saver_def")
    write_saved_model(sm, m)
    with pytest.raises(ModelFormatError, match="TF2"):
        lpo.inspect_model(m)


def _perturbed_copy(model_path, dst, seed=5):
    """Copy of a TF2 SavedModel whose float variables got noise (a "newly trained" checkpoint)."""
    import shutil

    import tensorflow as tf

    shutil.copytree(model_path, dst)
    prefix = os.path.join(model_path, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    keys, values = [], []
    for key, dt in sorted(reader.get_variable_to_dtype_map().items()):
        v = reader.get_tensor(key)
        if dt == tf.float32:  # a function of the values: Keras' duplicate copies stay equal
            v = (v + 0.02 * np.sin(np.arange(v.size).reshape(v.shape) * 0.7 + seed)).astype(np.float32)
        keys.append(key)
        values.append(tf.constant(v, dtype=dt))
    shutil.rmtree(os.path.join(dst, "variables"))
    tf.raw_ops.SaveV2(prefix=os.path.join(dst, "variables", "variables"), tensor_names=keys,
                      shape_and_slices=[""] * len(keys), tensors=values)
    return os.path.join(dst, "variables", "variables")


def test_keras_refresh_equals_reoptimization(sample_keras, keras_opt, tmp_path):
    """refresh() with a new object-based checkpoint == optimize() of the model with that checkpoint."""
    from lpo.fsutil import tree_checksum

    out, _ = keras_opt("BF16")
    new_model = str(tmp_path / "new")
    new_prefix = _perturbed_copy(sample_keras.model_path, new_model)
    refreshed = str(tmp_path / "refreshed")
    lpo.refresh(out, new_prefix, refreshed, quiet=True)
    reopt = str(tmp_path / "reopt")
    lpo.optimize(new_model, reopt, data_type="BF16", quiet=True)
    assert tree_checksum(os.path.join(refreshed, "variables")) == tree_checksum(os.path.join(reopt, "variables"))
    data, _ = heldout(sample_keras)
    data = {k: v[:2000] for k, v in data.items()}
    p_new = serve(refreshed, data)
    assert np.abs(p_new - serve(out, data)).max() > 0  # the new weights are served
    assert np.abs(p_new - serve(new_model, data)).max() <= BOUNDS["BF16"]


@pytest.mark.parametrize("variable_names", [True, False])
def test_tf_module_sample(sample_keras, keras_base, tmp_path, variable_names):
    """A tf.Module saved with tf.saved_model.save: ResourceGather lookups, MatMul+BiasAdd / MatMul+AddV2."""
    import tensorflow as tf

    from lpo.samples.keras_models import build_module_sample

    m = build_module_sample(sample_keras.model_path, str(tmp_path / "module"), variable_names=variable_names)
    data, label = heldout(sample_keras)
    base = serve(m, data)
    np.testing.assert_allclose(base, keras_base[0], atol=1e-5)
    from lpo.core.savedmodel import read_saved_model
    from lpo.core.tf2 import lower_tf2

    ops = {n.op for n in lower_tf2(read_saved_model(m)).meta_graphs[0].graph_def.node}
    assert {"ResourceGather", "BiasAdd", "AddV2", "MatMul"} <= ops and "GatherV2" in ops
    cands = lpo.inspect_model(m).candidates
    names = sorted(c.name for c in cands)
    if variable_names:
        assert names == sorted(sample_keras.embedding_variables + sample_keras.dense_kernels)
    else:  # unnamed tf.Variables ("Variable_3"): named by their object path
        assert names == sorted([f"emb/{i}" for i in range(8)] + [f"{s}/{i}/0" for s in ("bottom", "top")
                                                                  for i in range(2)])
    out = str(tmp_path / "opt")
    lpo.optimize(m, out, data_type="INT8", calib_file=sample_keras.calib_path, quiet=True)
    fn = tf.saved_model.load(out).signatures["serving_default"]
    assert list(fn.structured_outputs) == ["prob"]
    p = serve(out, data)
    assert auc(label, base) - auc(label, p) <= 0.002


def test_keras_optimize_is_deterministic(sample_keras, keras_opt, tmp_path):
    from pathlib import Path

    from lpo.fsutil import tree_checksum

    out, _ = keras_opt("BF16")
    again = str(tmp_path / "again")
    lpo.optimize(sample_keras.model_path, again, data_type="BF16", calib_file=sample_keras.calib_path, quiet=True)
    assert Path(out, "saved_model.pb").read_bytes() == Path(again, "saved_model.pb").read_bytes()
    assert tree_checksum(os.path.join(out, "variables")) == tree_checksum(os.path.join(again, "variables"))


def test_keras_cli_inspect_and_input_untouched(sample_keras, tmp_path):
    import json

    from lpo.fsutil import tree_checksum

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = tree_checksum(sample_keras.model_path)
    r = subprocess.run([sys.executable, "-m", "lpo", "inspect", sample_keras.model_path, "--json"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {c["name"] for c in json.loads(r.stdout)["candidates"]}
    assert names == set(sample_keras.embedding_variables + sample_keras.dense_kernels)
    r = subprocess.run([sys.executable, "-m", "lpo", "optimize", sample_keras.model_path, str(tmp_path / "o"),
                        "--data-type", "fp16", "--json"], capture_output=True, text=True, timeout=300, env=env,
                       cwd=repo)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_checksum(sample_keras.model_path) == before


@pytest.mark.slow
def test_tf_module_with_hash_table(tmp_path):
    """Captured non-variable resources (a StaticHashTable, initialized by the init op) survive the lowering."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            init = tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b", "c"]), tf.constant([0, 1, 2], tf.int64))
            self.table = tf.lookup.StaticHashTable(init, -1)
            rng = np.random.default_rng(0)
            self.emb = tf.Variable(rng.random((4, 8)).astype(np.float32), name="emb_s/embeddings")
            self.w = tf.Variable(rng.random((8, 1)).astype(np.float32), name="out/kernel")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, s):
            ids = self.table.lookup(s) + 1
            return {"y": tf.matmul(tf.nn.embedding_lookup(self.emb, ids), self.w)}

    m, out = str(tmp_path / "m"), str(tmp_path / "o")
    mod = M()
    tf.saved_model.save(mod, m, signatures=mod.__call__)
    assert sorted((c.kind, c.name) for c in lpo.inspect_model(m).candidates) == [
        ("dense", "out/kernel"), ("embedding", "emb_s/embeddings")]
    lpo.optimize(m, out, data_type="FP16", quiet=True)
    x = tf.constant(["a", "c", "zz"])
    a = tf.saved_model.load(m).signatures["serving_default"](s=x)["y"].numpy()
    b = tf.saved_model.load(out).signatures["serving_default"](s=x)["y"].numpy()
    np.testing.assert_allclose(b, a, rtol=2e-3)


@pytest.fixture(scope="module")
def dcn_base(sample_dcn):
    data, label = heldout(sample_dcn)
    return serve(sample_dcn.model_path, data), label


def test_dcn_inspect_finds_cross_layer_chain(sample_dcn):
    """Low-rank cross layer (keras-rs FeatureCross form): the MatMul fed by a MatMul is a candidate too."""
    cands = {c.name: c for c in lpo.inspect_model(sample_dcn.model_path).candidates}
    assert sorted(cands) == sorted(sample_dcn.embedding_variables + sample_dcn.dense_kernels)
    assert cands["cross_0_u/kernel"].detail == "MatMul"  # Dense(use_bias=False): MatMul alone
    assert cands["cross_0_v/kernel"].detail.startswith("MatMul+")  # MatMul(MatMul(x)) + bias
    assert cands["cross_0_v/kernel"].shape == [16, 136]


@pytest.mark.parametrize("dtype", ["FP16", "BF16", "INT8"])
def test_dcn_optimize_and_serve(sample_dcn, dcn_base, tmp_path, dtype):
    import tensorflow as tf

    from lpo.fsutil import dir_bytes

    out = str(tmp_path / "m")
    result = lpo.optimize(sample_dcn.model_path, out, data_type=dtype, calib_file=sample_dcn.calib_path, quiet=True)
    assert {n.node for n in result.optimized} == set(sample_dcn.embedding_variables + sample_dcn.dense_kernels)
    fn = tf.saved_model.load(out).signatures["serving_default"]
    assert sorted(fn.structured_input_signature[1]) == sorted(sample_dcn.input_names)
    data, label = heldout(sample_dcn)
    p = serve(out, data)
    if dtype == "INT8":
        assert auc(label, dcn_base[0]) - auc(label, p) <= 0.002
        assert dir_bytes(os.path.join(out, "variables")) / _served_fp32_bytes(sample_dcn.model_path) <= 0.30
    else:
        assert np.abs(p - dcn_base[0]).max() <= BOUNDS[dtype]
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    want = {"FP16": "float16", "BF16": "bfloat16", "INT8": "int8"}[dtype]
    assert sum(v.name == want for v in reader.get_variable_to_dtype_map().values()) == 15  # 8 tables + 7 kernels


def test_tensordot_dense_layers(sample_keras, keras_base, tmp_path):
    """DeepCTR-style tf.tensordot layers (Reshape -> MatMul -> Reshape -> BiasAdd): the bias is fused."""
    import tensorflow as tf

    from lpo.samples.keras_models import build_module_sample
    from lpo.core.savedmodel import read_saved_model
    from lpo.core.tf2 import lower_tf2

    m = build_module_sample(sample_keras.model_path, str(tmp_path / "td"), dense="tensordot")
    nodes = {n.name: n for n in lower_tf2(read_saved_model(m)).meta_graphs[0].graph_def.node}
    mm = [n for n in nodes.values() if n.op == "MatMul" and "Tensordot" in n.name]
    assert len(mm) == 4 and all(nodes[n.input[0].split(":")[0]].op == "Reshape" for n in mm)
    data, label = heldout(sample_keras)
    base = serve(m, data)
    np.testing.assert_allclose(base, keras_base[0], atol=1e-5)
    cands = {c.name: c.detail for c in lpo.inspect_model(m).candidates if c.kind == "dense"}
    assert cands == {"bottom_0/kernel": "MatMul+Reshape+BiasAdd+Relu", "bottom_1/kernel": "MatMul+Reshape+BiasAdd+Relu",
                     "top_0/kernel": "MatMul+Reshape+BiasAdd+Relu", "top_1/kernel": "MatMul+Reshape+BiasAdd"}
    for dtype, kw in (("FP16", {"dense_mode": "compute"}), ("BF16", {"dense_mode": "compute"}), ("INT8", {})):
        out = str(tmp_path / f"o_{dtype}")
        r = lpo.optimize(m, out, data_type=dtype, calib_file=sample_keras.calib_path, quiet=True, **kw)
        assert len(r.optimized) == 12
        p = serve(out, data)
        if dtype == "INT8":
            assert auc(label, base) - auc(label, p) <= 0.002
        else:  # compute mode: kernel and bias (after the Reshape) in 16 bit
            assert np.abs(p - base).max() <= BOUNDS[dtype]
            reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
            want = "float16" if dtype == "FP16" else "bfloat16"
            assert sum(v.name == want for v in reader.get_variable_to_dtype_map().values()) == 16


@pytest.mark.slow
def test_tf_keras_model_save(tmp_path):
    """Keras 2 (tf-keras) ``model.save(path, save_format='tf')``: lowered, optimized, served."""
    pytest.importorskip("tf_keras")
    import tensorflow as tf

    from lpo.samples.keras_models import build_tf_keras_sample

    s = build_tf_keras_sample(str(tmp_path / "tfk"))
    assert os.path.isfile(os.path.join(s.model_path, "keras_metadata.pb"))
    cands = {c.name: c.detail for c in lpo.inspect_model(s.model_path).candidates}
    assert sorted(cands) == sorted(s.embedding_variables + s.dense_kernels)
    assert cands["top_0/kernel"] == "MatMul+BiasAdd+Relu"
    data, label = heldout(s)
    base = serve(s.model_path, data)
    for dtype in ("FP16", "BF16", "INT8"):
        out = str(tmp_path / dtype)
        r = lpo.optimize(s.model_path, out, data_type=dtype, calib_file=s.calib_path, quiet=True)
        assert len(r.optimized) == 12
        fn = tf.saved_model.load(out).signatures["serving_default"]
        assert sorted(fn.structured_input_signature[1]) == sorted(s.input_names)
        assert list(fn.structured_outputs) == [s.output_name]
        p = serve(out, data)
        if dtype == "INT8":
            assert auc(label, base) - auc(label, p) <= 0.002
            from lpo.fsutil import dir_bytes  # tf-keras also saves the Adam slots: compare to what serving reads

            assert dir_bytes(os.path.join(out, "variables")) / _served_fp32_bytes(s.model_path) <= 0.30
        else:
            assert np.abs(p - base).max() <= BOUNDS[dtype]
