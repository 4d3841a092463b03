"""A small Keras 3 DLRM-like model exported as a TF2 SavedModel (``model.export``).

Used by the TF2 tests (lpo/core/tf2.py). Seeded synthetic data with a learnable label:

* inputs ``C1..C8``: int32 ``[None]`` ids in ``[0, 1000)`` (Zipf-like), one
  ``keras.layers.Embedding(1000, 16)`` each (layer ``emb_C<k>``);
* input ``dense``: float32 ``[None, 8]``; bottom MLP ``Dense(32, relu) -> Dense(16, relu)``;
* dot interaction: pairwise dot products of the 9 16-d vectors (36 values), concatenated
  with the bottom output; top MLP ``Dense(64, relu) -> Dense(1)`` -> sigmoid.

Exported with ``model.export(path)`` (Keras 3, TF backend): a TF2 object-graph SavedModel
whose ``serving_default`` signature takes the 9 inputs above and returns ``output_0``.
The builder writes ``model/``, ``heldout.npz`` (inputs + ``label``), ``calib.npz`` and
``sample.json``; :func:`cached_keras_sample` caches it like :func:`lpo.samples.tf1.cached_sample`.

:func:`build_dcn_sample` (cached: :func:`cached_dcn_sample`) is a DCN-v2-style model on the
same data: the 8 embeddings and ``dense`` concatenated into ``x0`` (136 values), two
low-rank cross layers written as keras-rs's ``FeatureCross(projection_dim=16)`` computes
them, ``x_{l+1} = x0 * Dense_v(Dense_u(x_l)) + x_l`` (``cross_<l>_u``: ``Dense(16,
use_bias=False)``, ``cross_<l>_v``: ``Dense(136)``; reproduced with plain Keras layers,
keras-rs is not a dependency), i.e. ``MatMul -> MatMul -> AddV2`` chains, then a deep tower
``Dense(64, relu) -> Dense(32, relu) -> Dense(1)`` -> sigmoid.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from lpo.validation.metrics import auc as _auc

KERAS_SAMPLE_VERSION = 1
NUM_SPARSE = 8
VOCAB = 1000
EMBED_DIM = 16
NUM_DENSE = 8
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
DENSE_NAME = "dense"
INPUT_NAMES = SPARSE_NAMES + (DENSE_NAME,)
_META_FILE = "sample.json"


@dataclasses.dataclass
class KerasSample:
    """A built Keras sample: paths and facts."""

    root: str
    model_path: str
    heldout_path: str
    calib_path: str
    input_names: list[str]
    output_name: str
    embedding_variables: list[str]
    dense_kernels: list[str]
    auc: float
    build_seconds: float
    version: int = KERAS_SAMPLE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return dataclasses.asdict(self)


def generate_data(num_rows: int, seed: int = 0, stream: int = 0) -> dict[str, np.ndarray]:
    """Return ``num_rows`` rows: ``C1..C8`` int32, ``dense`` float32 [n, 8], ``label`` float32."""
    truth = np.random.default_rng([seed, 31337])
    effects = truth.normal(0.0, 0.6, size=(NUM_SPARSE, VOCAB))
    w = truth.normal(0.0, 0.5, size=NUM_DENSE)
    rng = np.random.default_rng([seed, 271828, stream])
    out: dict[str, np.ndarray] = {}
    logit = np.full(num_rows, -1.0)
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
    p /= p.sum()
    for k, name in enumerate(SPARSE_NAMES):
        ids = rng.choice(VOCAB, size=num_rows, p=p).astype(np.int32)
        logit += effects[k][ids]
        out[name] = ids
    dense = rng.normal(0.0, 1.0, size=(num_rows, NUM_DENSE)).astype(np.float32)
    logit += np.tanh(dense) @ w
    out[DENSE_NAME] = dense
    prob = 1.0 / (1.0 + np.exp(-logit))
    out["label"] = (rng.random(num_rows) < prob).astype(np.float32)
    return out


def _inputs_bottom_embeddings(keras, seed: int):
    """The DLRM front shared by the Keras 3 and tf-keras samples: inputs, bottom MLP, embeddings.

    ``keras`` is the Keras 3 module or tf-keras' ``tf.keras``; returns (inputs, bottom output,
    [bottom output] + one embedding per sparse feature).
    """
    keras.utils.set_random_seed(seed)
    ins = {n: keras.Input(shape=(), dtype="int32", name=n) for n in SPARSE_NAMES}
    ins[DENSE_NAME] = keras.Input(shape=(NUM_DENSE,), dtype="float32", name=DENSE_NAME)
    x = keras.layers.Dense(32, activation="relu", name="bottom_0")(ins[DENSE_NAME])
    x = keras.layers.Dense(EMBED_DIM, activation="relu", name="bottom_1")(x)
    vecs = [x] + [keras.layers.Embedding(VOCAB, EMBED_DIM, name=f"emb_{n}")(ins[n]) for n in SPARSE_NAMES]
    return ins, x, vecs


def _build_model(seed: int):
    import keras

    ins, x, vecs = _inputs_bottom_embeddings(keras, seed)
    stack = keras.ops.stack(vecs, axis=1)  # [b, 9, 16]
    inter = keras.ops.matmul(stack, keras.ops.transpose(stack, (0, 2, 1)))  # [b, 9, 9]
    iu = np.triu_indices(len(vecs), k=1)
    flat = keras.ops.reshape(inter, (-1, len(vecs) * len(vecs)))
    pairs = keras.ops.take(flat, (iu[0] * len(vecs) + iu[1]).astype("int32"), axis=1)
    z = keras.layers.Concatenate(name="interaction")([x, pairs])
    z = keras.layers.Dense(64, activation="relu", name="top_0")(z)
    z = keras.layers.Dense(1, name="top_1")(z)
    out = keras.layers.Activation("sigmoid", name="prob")(keras.ops.squeeze(z, axis=-1))
    return keras.Model([ins[n] for n in INPUT_NAMES], out, name="keras_dlrm")


DCN_CROSS_LAYERS = 2
DCN_PROJECTION = 16
DCN_DEEP = (64, 32)


def _build_dcn_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    ins = {n: keras.Input(shape=(), dtype="int32", name=n) for n in SPARSE_NAMES}
    ins[DENSE_NAME] = keras.Input(shape=(NUM_DENSE,), dtype="float32", name=DENSE_NAME)
    vecs = [keras.layers.Embedding(VOCAB, EMBED_DIM, name=f"emb_{n}")(ins[n]) for n in SPARSE_NAMES]
    x0 = keras.layers.Concatenate(name="x0")(vecs + [ins[DENSE_NAME]])
    width = NUM_SPARSE * EMBED_DIM + NUM_DENSE
    x = x0
    for i in range(DCN_CROSS_LAYERS):  # keras_rs.layers.FeatureCross(projection_dim=16), unrolled
        u = keras.layers.Dense(DCN_PROJECTION, use_bias=False, name=f"cross_{i}_u")(x)
        v = keras.layers.Dense(width, name=f"cross_{i}_v")(u)
        x = keras.layers.Add(name=f"cross_{i}")([keras.layers.Multiply(name=f"cross_{i}_mul")([x0, v]), x])
    for i, units in enumerate(DCN_DEEP):
        x = keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(x)
    z = keras.layers.Dense(1, name=f"deep_{len(DCN_DEEP)}")(x)
    out = keras.layers.Activation("sigmoid", name="prob")(keras.ops.squeeze(z, axis=-1))
    return keras.Model([ins[n] for n in INPUT_NAMES], out, name="keras_dcn")


DCN_KERNELS = tuple([f"cross_{i}_{p}/kernel" for i in range(DCN_CROSS_LAYERS) for p in ("u", "v")]
                    + [f"deep_{i}/kernel" for i in range(len(DCN_DEEP) + 1)])


def _inputs(data):
    return [data[n] for n in INPUT_NAMES]


def serve(model_path: str, data: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Run ``serving_default`` of a SavedModel through ``tf.saved_model.load`` (TF2 API)."""
    import tensorflow as tf

    fn = tf.saved_model.load(model_path).signatures["serving_default"]
    keys = list(fn.structured_input_signature[1])
    n = len(data[keys[0]])
    parts = []
    for s in range(0, n, batch_size):
        out = fn(**{k: tf.constant(data[k][s:s + batch_size]) for k in keys})
        (v,) = out.values()
        parts.append(v.numpy().reshape(-1))
    return np.concatenate(parts)


def build_keras_sample(out_dir: str, *, seed: int = 0, train_rows: int = 40_000, heldout_rows: int = 10_000,
                       calib_rows: int = 1024, epochs: int = 2, batch_size: int = 512,
                       kind: str = "dlrm") -> KerasSample:
    """Train the Keras DLRM-like (``kind="dcn"``: DCN-like) model and write a sample into ``out_dir``."""
    import keras

    if kind not in ("dlrm", "dcn"):
        raise ValueError(f"unknown Keras sample kind {kind!r}")
    t0 = time.monotonic()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    train = generate_data(train_rows, seed, 0)
    held = generate_data(heldout_rows, seed, 1)
    calib = generate_data(calib_rows, seed, 2)
    np.savez(os.path.join(out_dir, "heldout.npz"), **held)
    np.savez(os.path.join(out_dir, "calib.npz"), **{n: calib[n] for n in INPUT_NAMES})
    model = _build_dcn_model(seed) if kind == "dcn" else _build_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(_inputs(train), train["label"], epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    model_path = os.path.join(out_dir, "model")
    if os.path.exists(model_path):
        shutil.rmtree(model_path)
    model.export(model_path, verbose=False)
    emb = [f"emb_{n}/embeddings" for n in SPARSE_NAMES]
    kernels = list(DCN_KERNELS) if kind == "dcn" else [f"{n}/kernel" for n in ("bottom_0", "bottom_1", "top_0",
                                                                                 "top_1")]
    preds = serve(model_path, held)
    sample = KerasSample(out_dir, model_path, os.path.join(out_dir, "heldout.npz"),
                         os.path.join(out_dir, "calib.npz"), list(INPUT_NAMES), "output_0", emb, kernels,
                         _auc(held["label"], preds), round(time.monotonic() - t0, 2))
    with open(os.path.join(out_dir, _META_FILE), "w") as f:
        json.dump(sample.to_dict(), f, indent=2)
    return sample


def build_dcn_sample(out_dir: str, **kw) -> KerasSample:
    """Train the DCN-like Keras model (cross layers + deep tower) and write a sample into ``out_dir``."""
    return build_keras_sample(out_dir, kind="dcn", **kw)


def build_module_sample(keras_model_path: str, out_dir: str, *, variable_names: bool = True,
                        dense: str = "matmul") -> str:
    """Export the weights of the Keras sample as a plain ``tf.Module`` with ``tf.saved_model.save``.

    Same numbers as the Keras model, a different TF2 graph: ``ResourceGather`` lookups
    (``tf.nn.embedding_lookup``), ``MatMul + BiasAdd`` bottom layers and ``MatMul + AddV2``
    top layers. Variables are named like the Keras ones (``emb_C1/embeddings``) unless
    ``variable_names=False`` (then lpo names them by object path, e.g. ``emb/0``).
    ``dense="tensordot"`` writes every dense layer the DeepCTR way instead,
    ``tf.nn.bias_add(tf.tensordot(x, W, axes=(-1, 0)), b)`` on a rank-3 ``[batch, 1, in]`` input:
    ``Reshape -> MatMul -> Reshape -> BiasAdd`` in the graph (same numbers).
    Signature ``serving_default``: the Keras sample's inputs, output ``prob``. Returns the path.
    """
    import tensorflow as tf

    src = {v.name.split(":")[0]: v.numpy() for v in tf.saved_model.load(keras_model_path).variables}

    def var(name):
        return tf.Variable(src[name], name=name if variable_names else None)

    class DLRM(tf.Module):
        def __init__(self):
            super().__init__(name="dlrm")
            self.emb = [var(f"emb_{n}/embeddings") for n in SPARSE_NAMES]
            self.bottom = [(var(f"bottom_{i}/kernel"), var(f"bottom_{i}/bias")) for i in range(2)]
            self.top = [(var(f"top_{i}/kernel"), var(f"top_{i}/bias")) for i in range(2)]

        @tf.function(input_signature=[{n: tf.TensorSpec([None], tf.int32, name=n) for n in SPARSE_NAMES}
                                      | {DENSE_NAME: tf.TensorSpec([None, NUM_DENSE], tf.float32, name=DENSE_NAME)}])
        def serve(self, feats):
            x = feats[DENSE_NAME]
            if dense == "tensordot":
                return self._serve_tensordot(feats, x)
            for w, b in self.bottom:
                x = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b))
            vecs = [x] + [tf.nn.embedding_lookup(t, feats[n]) for t, n in zip(self.emb, SPARSE_NAMES)]
            stack = tf.stack(vecs, axis=1)
            inter = tf.reshape(tf.matmul(stack, stack, transpose_b=True), [-1, len(vecs) ** 2])
            iu = np.triu_indices(len(vecs), k=1)
            z = tf.concat([x, tf.gather(inter, (iu[0] * len(vecs) + iu[1]).astype(np.int32), axis=1)], axis=1)
            z = tf.nn.relu(z @ self.top[0][0] + self.top[0][1])
            z = z @ self.top[1][0] + self.top[1][1]
            return {"prob": tf.sigmoid(tf.squeeze(z, -1))}

        def _serve_tensordot(self, feats, x):
            def layer(x, wb, relu=True):  # DeepCTR's DNN layer on a [batch, 1, in] tensor
                y = tf.nn.bias_add(tf.tensordot(x, wb[0], axes=(-1, 0)), wb[1])
                return tf.nn.relu(y) if relu else y

            x = x[:, None, :]
            for wb in self.bottom:
                x = layer(x, wb)
            x = x[:, 0, :]
            vecs = [x] + [tf.nn.embedding_lookup(t, feats[n]) for t, n in zip(self.emb, SPARSE_NAMES)]
            stack = tf.stack(vecs, axis=1)
            inter = tf.reshape(tf.matmul(stack, stack, transpose_b=True), [-1, len(vecs) ** 2])
            iu = np.triu_indices(len(vecs), k=1)
            z = tf.concat([x, tf.gather(inter, (iu[0] * len(vecs) + iu[1]).astype(np.int32), axis=1)], axis=1)
            z = layer(layer(z[:, None, :], self.top[0]), self.top[1], relu=False)
            return {"prob": tf.sigmoid(tf.reshape(z, [-1]))}

    if dense not in ("matmul", "tensordot"):
        raise ValueError(f"dense must be 'matmul' or 'tensordot', not {dense!r}")
    m = DLRM()
    tf.saved_model.save(m, out_dir, signatures={"serving_default": m.serve})
    return out_dir


def _save_tf_keras_model(out_dir: str, seed: int, train_rows: int) -> None:
    """Train and ``model.save(..., save_format='tf')`` with tf-keras (run with ``TF_USE_LEGACY_KERAS=1``)."""
    import tensorflow as tf

    keras = tf.keras
    ins, x, vecs = _inputs_bottom_embeddings(keras, seed)
    z = keras.layers.Concatenate(name="concat")(vecs)
    z = keras.layers.Dense(64, activation="relu", name="top_0")(z)
    z = keras.layers.Dense(1, activation="sigmoid", name="top_1")(z)
    model = keras.Model([ins[n] for n in INPUT_NAMES], z, name="tf_keras_dlrm")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    train = generate_data(train_rows, seed, 0)
    model.fit(_inputs(train), train["label"], epochs=1, batch_size=512, verbose=0)
    model.save(os.path.join(out_dir, "model"), save_format="tf")


def build_tf_keras_sample(out_dir: str, *, seed: int = 0, train_rows: int = 20_000, heldout_rows: int = 5_000,
                          calib_rows: int = 512) -> KerasSample:
    """A Keras 2 (``tf-keras``) model saved with ``model.save(path, save_format='tf')``.

    Embeddings + ``Dense`` layers (``MatMul + BiasAdd``) on the same data; built in a
    subprocess with ``TF_USE_LEGACY_KERAS=1`` (``tf.keras`` is tf-keras there). Needs the
    ``tf_keras`` package. Signature ``serving_default``: inputs ``C1..C8``, ``dense``;
    output ``top_1`` (``[batch, 1]`` probabilities).
    """
    import subprocess
    import sys

    t0 = time.monotonic()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    held = generate_data(heldout_rows, seed, 1)
    calib = generate_data(calib_rows, seed, 2)
    np.savez(os.path.join(out_dir, "heldout.npz"), **held)
    np.savez(os.path.join(out_dir, "calib.npz"), **{n: calib[n] for n in INPUT_NAMES})
    code = ("import sys; from lpo.samples.keras_models import _save_tf_keras_model as f; "
            "f(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", code, out_dir, str(seed), str(train_rows)], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"tf-keras sample build failed:\n{r.stderr[-3000:]}")
    model_path = os.path.join(out_dir, "model")
    preds = serve(model_path, held)
    return KerasSample(out_dir, model_path, os.path.join(out_dir, "heldout.npz"), os.path.join(out_dir, "calib.npz"),
                       list(INPUT_NAMES), "top_1", [f"emb_{n}/embeddings" for n in SPARSE_NAMES],
                       [f"{n}/kernel" for n in ("bottom_0", "bottom_1", "top_0", "top_1")],
                       _auc(held["label"], preds), round(time.monotonic() - t0, 2))


DEEPFM_SPARSE = ("C1", "C2", "C3")
DEEPFM_BUILD = """
import sys
import requests

def _offline(*a, **k):
    raise OSError("offline")

requests.get = _offline  # deepctr checks PyPI for a newer version on import
import tensorflow as tf
from deepctr.feature_column import DenseFeat, SparseFeat
from deepctr.models import DeepFM
from lpo.samples.keras_models import VOCAB, generate_data

names = ("C1", "C2", "C3")
cols = [SparseFeat(n, vocabulary_size=VOCAB, embedding_dim=8, dtype="int32") for n in names] + [DenseFeat("I1", 1)]
tf.keras.utils.set_random_seed(0)
model = DeepFM(cols, cols, dnn_hidden_units=(int(sys.argv[2]), int(sys.argv[3])), task="binary", seed=0)
model.compile("adam", "binary_crossentropy")
d = generate_data(20000, 0, 0)
x = {n: d[n][:, None] for n in names}
x["I1"] = d["dense"][:, :1]
model.fit(x, d["label"], batch_size=512, epochs=2, verbose=0)
model.save(sys.argv[1], save_format="tf")
"""


def deepfm_inputs(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DeepFM sample's serving inputs from :func:`generate_data` rows (``[n, 1]`` each)."""
    out = {n: d[n][:, None] for n in DEEPFM_SPARSE}
    out["I1"] = d[DENSE_NAME][:, :1]
    return out


def build_deepfm_sample(out_dir: str, *, seed: int = 0, hidden=(256, 128)) -> KerasSample:
    """A DeepCTR 0.9.4 ``DeepFM`` (tf-keras, ``model.save(save_format='tf')``), built in a subprocess.

    Its DNN uses ``tf.tensordot`` (MatMul -> Reshape -> BiasAdd -> Relu). Needs ``deepctr`` and
    ``tf_keras`` (the ``dev`` extra).
    """
    import subprocess
    import sys

    t0 = time.monotonic()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "model")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", DEEPFM_BUILD, model_path, str(hidden[0]), str(hidden[1])], env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"DeepFM sample build failed:\n{r.stderr[-3000:]}")
    held, calib = generate_data(10_000, seed, 1), generate_data(1024, seed, 2)
    np.savez(os.path.join(out_dir, "heldout.npz"), label=held["label"], **deepfm_inputs(held))
    np.savez(os.path.join(out_dir, "calib.npz"), **deepfm_inputs(calib))
    preds = serve(model_path, deepfm_inputs(held))
    sample = KerasSample(out_dir, model_path, os.path.join(out_dir, "heldout.npz"), os.path.join(out_dir, "calib.npz"),
                         list(DEEPFM_SPARSE) + ["I1"], "", [], [], _auc(held["label"], preds),
                         round(time.monotonic() - t0, 2))
    with open(os.path.join(out_dir, _META_FILE), "w") as f:
        json.dump(sample.to_dict(), f, indent=2)
    return sample


def _load_cached(path: str) -> KerasSample | None:
    from lpo.samples.tf1 import read_sample_meta

    d = read_sample_meta(path, KERAS_SAMPLE_VERSION)
    if d is None:
        return None
    old, d["root"] = d["root"], path
    for k in ("model_path", "heldout_path", "calib_path"):
        d[k] = os.path.join(path, os.path.relpath(d[k], old))
    return KerasSample(**d)


def cached_keras_sample(cache_dir: str | None = None, *, seed: int = 0, kind: str = "dlrm") -> KerasSample:
    """Return the Keras sample (``kind``: ``dlrm`` or ``dcn``), built once into ``cache_dir`` (locked, atomic)."""
    from lpo.samples.tf1 import cached_build, default_cache_dir

    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    key = f"keras-{'dcn-' if kind == 'dcn' else ''}s{seed}-v{KERAS_SAMPLE_VERSION}"
    return cached_build(cache_dir, key, _load_cached, lambda tmp: build_keras_sample(tmp, seed=seed, kind=kind))


def cached_dcn_sample(cache_dir: str | None = None, *, seed: int = 0) -> KerasSample:
    """Return the DCN-like Keras sample, built once into ``cache_dir``."""
    return cached_keras_sample(cache_dir, seed=seed, kind="dcn")


def cached_deepfm_sample(cache_dir: str | None = None, *, seed: int = 0) -> KerasSample:
    """Return the DeepCTR DeepFM sample (DNN 256-128), built once into ``cache_dir`` (needs deepctr)."""
    from lpo.samples.tf1 import cached_build, default_cache_dir

    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    return cached_build(cache_dir, f"deepfm-s{seed}-v{KERAS_SAMPLE_VERSION}", _load_cached,
                        lambda tmp: build_deepfm_sample(tmp, seed=seed))


__all__ = ["KerasSample", "build_dcn_sample", "build_deepfm_sample", "build_keras_sample", "build_module_sample",
           "build_tf_keras_sample", "cached_dcn_sample", "cached_deepfm_sample", "cached_keras_sample",
           "deepfm_inputs", "generate_data", "serve"]
