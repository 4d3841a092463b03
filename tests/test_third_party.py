"""Models built with the real third-party CTR libraries (issue 7), not emulations of their patterns.

* keras-rs (Keras 3): a DCN with ``keras_rs.layers.FeatureCross``, exported with ``model.export()``.
* DeepCTR (tf-keras / Keras 2): ``deepctr.models.DeepFM``, saved with ``model.save(path, save_format='tf')``.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.core.plan import read_manifest
from lpo.validation.metrics import auc
from lpo.samples.keras_models import (DEEPFM_BUILD, DEEPFM_SPARSE, DENSE_NAME, NUM_DENSE, VOCAB, deepfm_inputs,
                                      generate_data, serve)

pytestmark = pytest.mark.slow  # trains and exports real third-party models

BOUNDS = {"FP16": 1e-3, "BF16": 1e-2}
WANT_DTYPE = {"FP16": "float16", "BF16": "bfloat16", "INT8": "int8"}


def _stored_dtypes(out):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    return [v.name for v in reader.get_variable_to_dtype_map().values()]


def _check_optimized(model_path, calib_path, held, label, tmp_path, dtypes, n_optimized):
    import tensorflow as tf

    base = serve(model_path, held)
    fn0 = tf.saved_model.load(model_path).signatures["serving_default"]
    for dtype in dtypes:
        out = str(tmp_path / f"opt_{dtype}")
        r = lpo.optimize(model_path, out, data_type=dtype, calib_file=calib_path, group_tables=True, quiet=True)
        assert len(r.optimized) == n_optimized
        fn = tf.saved_model.load(out).signatures["serving_default"]
        assert sorted(fn.structured_input_signature[1]) == sorted(fn0.structured_input_signature[1])
        assert list(fn.structured_outputs) == list(fn0.structured_outputs)
        p = serve(out, held)
        if dtype == "INT8":
            assert auc(label, base) - auc(label, p) <= 0.002
            assert np.abs(p - base).max() <= 0.25  # sanity: quantized, not broken
        else:
            assert np.abs(p - base).max() <= BOUNDS[dtype]
        groups = [c for c in read_manifest(out).conversions if c.kind == "group"]  # grouped tables: one variable
        assert groups, "the single-value tables of one dim are grouped"
        stored = n_optimized - sum(len(g.targets["tables"]) for g in groups) + len(groups)
        assert sum(d == WANT_DTYPE[dtype] for d in _stored_dtypes(out)) == stored
        if dtype == "INT8":  # grouped equals ungrouped
            plain = str(tmp_path / f"opt_{dtype}_ungrouped")
            lpo.optimize(model_path, plain, data_type=dtype, calib_file=calib_path, quiet=True, group_tables=False)
            assert np.abs(serve(plain, held) - p).max() <= 1e-6


KRS_SPARSE = ("C1", "C2", "C3", "C4")


def test_keras_rs_feature_cross_dcn(tmp_path):
    """keras-rs DCN (Embedding -> 2x FeatureCross -> Dense), Keras 3 ``model.export()``: FP16/BF16/INT8."""
    pytest.importorskip("keras_rs")
    import keras
    import keras_rs

    keras.utils.set_random_seed(0)
    ins = {n: keras.Input(shape=(), dtype="int32", name=n) for n in KRS_SPARSE}
    ins[DENSE_NAME] = keras.Input(shape=(NUM_DENSE,), dtype="float32", name=DENSE_NAME)
    embs = [keras.layers.Embedding(VOCAB, 8, name=f"emb_{n}")(ins[n]) for n in KRS_SPARSE]
    x0 = keras.layers.Concatenate(name="concat")(embs + [ins[DENSE_NAME]])  # width 4*8 + 8 = 40
    x = x0
    for i in range(2):
        x = keras_rs.layers.FeatureCross(projection_dim=8, name=f"cross_{i}")(x0, x)
    x = keras.layers.Dense(32, activation="relu", name="deep_0")(x)
    model = keras.Model(ins, keras.layers.Dense(1, activation="sigmoid", name="out")(x))
    model.compile("adam", "binary_crossentropy")
    train = generate_data(20_000, 0, 0)
    model.fit({k: train[k] for k in ins}, train["label"], batch_size=512, epochs=2, verbose=0)
    model_path = str(tmp_path / "model")
    model.export(model_path, verbose=False)

    keys = list(KRS_SPARSE) + [DENSE_NAME]
    held, calib = generate_data(5_000, 0, 1), generate_data(512, 0, 2)
    calib_path = str(tmp_path / "calib.npz")
    np.savez(calib_path, **{k: calib[k] for k in keys})

    cands = lpo.inspect_model(model_path).candidates
    assert sorted(c.name for c in cands if c.kind == "embedding") == [f"emb_{n}/embeddings" for n in KRS_SPARSE]
    for i in range(2):  # FeatureCross: low-rank u (no bias, 40->8) then v (8->40, + bias)
        cross = sorted((c.shape, c.detail) for c in cands if c.kind == "dense" and c.name.startswith(f"cross_{i}/"))
        assert cross == [([8, 40], "MatMul+BiasAdd"), ([40, 8], "MatMul")]
    assert len(cands) == 10  # 4 tables + 4 cross kernels + deep_0 + out
    _check_optimized(model_path, calib_path, {k: held[k] for k in keys}, held["label"], tmp_path,
                     ("FP16", "BF16", "INT8"), 10)


def test_deepctr_deepfm(tmp_path):
    """DeepCTR DeepFM (tf-keras, ``model.save(save_format='tf')``): tensordot DNN, FM, linear part; FP16/INT8."""
    pytest.importorskip("tf_keras")
    if importlib.util.find_spec("deepctr") is None:  # not imported here: it is Keras 2 code, and its import
        pytest.skip("deepctr is not installed")       # starts a PyPI version check (stubbed in the subprocess)

    model_path = str(tmp_path / "model")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", DEEPFM_BUILD, model_path, "32", "16"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(model_path, "keras_metadata.pb"))

    held, calib = generate_data(5_000, 0, 1), generate_data(512, 0, 2)
    calib_path = str(tmp_path / "calib.npz")
    np.savez(calib_path, **deepfm_inputs(calib))

    cands = {c.name: c for c in lpo.inspect_model(model_path).candidates}
    assert sorted(n for n, c in cands.items() if c.kind == "embedding") == sorted(
        [f"sparse_emb_{n}/embeddings" for n in DEEPFM_SPARSE]
        + [f"linear0sparse_emb_{n}/embeddings" for n in DEEPFM_SPARSE])
    assert cands["dnn/kernel0"].detail == "MatMul+Reshape+BiasAdd+Relu"  # DeepCTR's DNN uses tf.tensordot
    assert cands["dnn/kernel0"].shape == [25, 32]  # 3*8 embeddings + 1 dense
    assert {"dnn/kernel1", "dense/kernel", "linear/linear_kernel"} <= set(cands)
    assert len(cands) == 10
    _check_optimized(model_path, calib_path, deepfm_inputs(held), held["label"], tmp_path, ("FP16", "INT8"), 10)
