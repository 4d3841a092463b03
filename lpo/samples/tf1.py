"""Small DLRM-like TF1-graph SavedModels on synthetic Criteo-shaped data.

Used by the tests, the demo and the benchmarks. Everything is seeded and
deterministic (data exactly; trained weights up to float non-associativity of
multithreaded kernels).

Data: 13 float features ``I1..I13`` (log-transformed log-normal counts; a few
features are centred and so also take negative values) and 26 string features
``C1..C26`` (Zipf-distributed values like ``"c7_1234"``, a few thousand distinct
values per feature). The label is a fixed random function of the features
(logistic of per-category effects + a dense term + noise), learnable to AUC ~0.8.

Model (``tf.compat.v1`` graph mode, no Keras): 26
``categorical_column_with_hash_bucket(1000)`` -> ``embedding_column(16, 'mean')``
via ``feature_column.input_layer``; 13 ``numeric_column`` -> bottom MLP 13->64->16;
concat(bottom, 26 embeddings) -> top MLP 432->256->64->1 -> sigmoid. Every layer
is ``MatMul`` + ``BiasAdd`` (+ ``Relu`` except the last).

Serving signatures (tag ``serve``):

* ``serving_default``: inputs ``I1..I13`` (float32 ``[None]``) and ``C1..C26``
  (string ``[None]``); output ``probabilities`` (float32 ``[None]``).
* ``predict_logits``: same inputs; output ``logits`` (float32 ``[None]``).

Variants (``variant=``):

* ``'resource'``: resource variables, classic lookup path
  ``VarHandleOp -> ResourceGather -> SparseSegmentMean`` (ids through ``Unique``).
* ``'ref'``: ref variables, TF>=2.14 fast path: the table is read directly,
  ``VariableV2 -> Identity -> SparseSegmentMean`` (no gather).
* ``'partitioned'``: resource variables split in 2 parts by
  ``fixed_size_partitioner(2)``; ``Unique -> DynamicPartition ->
  ResourceGather (per part) -> ParallelDynamicStitch -> SparseSegmentMean``.

``variant='ref', lookup='gather'`` gives the pre-TF-2.14 ref graph
``VariableV2 -> Identity -> GatherV2 -> SparseSegmentMean`` (see
:func:`build_sample`). Each table variable also has the usual unused
init/read nodes (``Assign``/``AssignVariableOp``, ``IsInitialized``,
``Read/ReadVariableOp``, ``<var>/read``) and the saver's nodes.

``arch='dot'`` is shaped like DeepRec modelzoo's ``dlrm/train.py`` with ``interaction_op='dot'``:
26 ``categorical_column_with_hash_bucket`` columns (DeepRec's bucket counts, capped at
:data:`DOT_MAX_BUCKETS` to build fast) -> ``embedding_column(16)``, the per-column outputs of
``input_layer(cols_to_output_tensors=...)``; bottom MLP 13-512-256-64-16, each layer
``Dense+Relu`` then batch normalization (moving statistics at serving); the dot interaction
``stack([bottom, 26 embeddings], 1)`` -> ``matmul(x, x, transpose_b)`` [B, 27, 27] ->
``boolean_mask`` by ``cast(ones_like - band_part(ones_like, 0, -1), bool)`` (the strictly
lower triangle, 351 values, a mask rebuilt every run) -> ``concat([bottom, dot])``; top MLP
367-512-256-1.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from lpo import options as opts

from lpo.validation.metrics import auc as _auc, logloss as _logloss

log = logging.getLogger(__name__)

#: Bump whenever the builder (data, model or export) changes: it keys the cache.
SAMPLE_VERSION = 2

VARIANTS = ("resource", "ref", "partitioned")
LOOKUPS = ("default", "gather", "fast")

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
INPUT_NAMES = DENSE_NAMES + SPARSE_NAMES
HASH_BUCKETS = 1000
EMBED_DIM = 16
BOTTOM_UNITS = (64, 16)
TOP_UNITS = (256, 64, 1)
SCOPE = "dlrm"
#: Model shapes (``arch=``): ``small`` (the default, above) is overhead-bound at batch 512;
#: ``mlperf`` has the MLP widths of MLPerf's DLRM (bottom 13-512-256-128, top 1024-1024-512-256-1)
#: on the same small tables, so its dense layers dominate the latency like in production.
ARCHS = {
    "small": {"bottom": BOTTOM_UNITS, "top": TOP_UNITS, "train_rows": 100_000},
    "mlperf": {"bottom": (512, 256, 128), "top": (1024, 1024, 512, 256, 1), "train_rows": 60_000},
    # DeepRec modelzoo's DLRM with the dot interaction and batch-normalized bottom layers
    "dot": {"bottom": (512, 256, 64, 16), "top": (512, 256, 1), "train_rows": 30_000, "interaction": "dot"},
}
#: DeepRec modelzoo dlrm/train.py's HASH_BUCKET_SIZES (C1..C26), capped at DOT_MAX_BUCKETS for ``arch='dot'``.
DEEPREC_BUCKETS = (2500, 2000, 5000000, 1500000, 1000, 100, 20000, 4000, 20, 100000, 10000, 5000000, 40000, 100, 100,
                   3000000, 50, 10000, 4000, 20, 4000000, 100, 100, 250000, 400, 100000)
DOT_MAX_BUCKETS = 1000
BN_EPSILON = 1e-3
#: 0.9, not Keras' 0.99: the sample trains ~100 steps, and the moving statistics must settle in them
BN_MOMENTUM = 0.9

SIGNATURES = {"serving_default": "probabilities", "predict_logits": "logits"}

_META_FILE = "sample.json"


@dataclasses.dataclass
class SampleModel:
    """A built sample: paths to the SavedModel and its data, plus build facts."""

    root: str
    variant: str
    seed: int
    lookup: str
    model_path: str
    heldout_path: str
    calib_path: str
    train_csv_path: str
    input_names: list[str]
    signatures: dict[str, str]
    embedding_variables: list[str]
    dense_kernels: list[str]
    auc: float
    logloss: float
    bayes_auc: float
    build_seconds: float
    version: int = SAMPLE_VERSION
    arch: str = "small"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: str | None = None) -> "SampleModel":
        """Rebuild from :meth:`to_dict` output; ``root`` relocates the paths."""
        d = dict(d)
        if root is not None and root != d["root"]:
            old = d["root"]
            for k in ("model_path", "heldout_path", "calib_path", "train_csv_path"):
                d[k] = os.path.join(root, os.path.relpath(d[k], old))
            d["root"] = root
        return cls(**d)


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class _Truth:
    """The fixed random labelling function."""

    perms: list[np.ndarray]  # rank -> category id, per feature
    probs: list[np.ndarray]  # Zipf probability per rank, per feature
    effects: list[np.ndarray]  # logit effect per rank, per feature
    dense_mu: np.ndarray
    dense_sigma: np.ndarray
    dense_center: np.ndarray
    dense_w: np.ndarray
    bias: float
    noise: float


def _truth(seed: int) -> _Truth:
    rng = np.random.default_rng([seed, 7919])
    perms, probs, effects = [], [], []
    for k in range(NUM_SPARSE):
        vocab = int(rng.integers(1500, 5000))
        s = float(rng.uniform(1.05, 1.3))
        p = 1.0 / np.arange(1, vocab + 1) ** s
        probs.append(p / p.sum())
        perms.append(rng.permutation(vocab))
        # some features carry signal, some are nearly noise
        strength = float(rng.choice([0.05, 0.2, 0.4, 0.7], p=[0.3, 0.3, 0.25, 0.15]))
        effects.append(rng.normal(0.0, strength, size=vocab))
    dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
    dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
    # I2, I5, I9 are centred after the log: they take negative values too
    dense_center = np.zeros(NUM_DENSE)
    dense_center[[1, 4, 8]] = 1.0
    dense_w = rng.normal(0.0, 0.35, NUM_DENSE)
    return _Truth(perms, probs, effects, dense_mu, dense_sigma, dense_center,
                  dense_w, bias=-2.0, noise=0.3)


def generate_data(num_rows: int, seed: int = 0, stream: int = 0) -> dict[str, np.ndarray]:
    """Generate ``num_rows`` synthetic Criteo-shaped rows.

    The labelling function depends only on ``seed``; ``stream`` selects
    disjoint row draws (0 = train, 1 = held-out, 2 = calibration). Returns a
    dict: ``I1..I13`` float32, ``C1..C26`` bytes (``dtype 'S'``), ``label``
    float32 in {0, 1} and ``_prob`` (float64, the true click probability).
    """
    t = _truth(seed)
    rng = np.random.default_rng([seed, 104729, stream])
    out: dict[str, np.ndarray] = {}
    logit = np.full(num_rows, t.bias)
    for j, name in enumerate(DENSE_NAMES):
        raw = np.floor(np.exp(rng.normal(t.dense_mu[j], t.dense_sigma[j], num_rows)))
        x = np.log1p(raw)
        logit += t.dense_w[j] * np.tanh((x - t.dense_mu[j]) / t.dense_sigma[j])
        if t.dense_center[j]:
            x = x - t.dense_mu[j]
        out[name] = x.astype(np.float32)
    for k, name in enumerate(SPARSE_NAMES):
        rank = rng.choice(len(t.probs[k]), size=num_rows, p=t.probs[k])
        logit += t.effects[k][rank]
        ids = t.perms[k][rank]
        vocab = np.array([f"c{k + 1}_{i}".encode() for i in range(len(t.perms[k]))])
        out[name] = vocab[ids]
    logit += rng.normal(0.0, t.noise, num_rows)
    prob = 1.0 / (1.0 + np.exp(-logit))
    out["label"] = (rng.random(num_rows) < prob).astype(np.float32)
    out["_prob"] = prob
    return out


def _inputs_only(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: data[k] for k in INPUT_NAMES}


def write_csv(data: dict[str, np.ndarray], path: str) -> int:
    """Write rows as CSV with header ``label,I1..I13,C1..C26``; return row count."""
    n = len(data["label"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", *INPUT_NAMES])
        dense = [data[k] for k in DENSE_NAMES]
        sparse = [data[k] for k in SPARSE_NAMES]
        for i in range(n):
            w.writerow([int(data["label"][i]), *(repr(float(c[i])) for c in dense),
                        *(c[i].decode() for c in sparse)])
    return n


def write_tfrecord(npz_path: str, out_path: str, *, include_label: bool = True,
                   max_rows: int | None = None, compression: str | None = None) -> int:
    """Write the rows of an npz (e.g. ``heldout.npz``) as ``tf.train.Example`` records.

    Floats become ``float_list``, strings/bytes ``bytes_list``, integers
    ``int64_list``; one value per feature. ``label`` is written only if present
    and ``include_label``. ``compression`` is ``None``, ``'GZIP'`` or ``'ZLIB'``.
    Returns the number of records written.
    """
    import tensorflow as tf

    with np.load(npz_path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files if not k.startswith("_")}
    if not include_label:
        data.pop("label", None)
    n = len(next(iter(data.values())))
    if max_rows is not None:
        n = min(n, max_rows)
    opts = tf.io.TFRecordOptions(compression_type=compression or "")
    with tf.io.TFRecordWriter(out_path, options=opts) as w:
        for i in range(n):
            feat = {}
            for k, col in data.items():
                v = col[i]
                if col.dtype.kind == "f":
                    feat[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
                elif col.dtype.kind in "iub":
                    feat[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
                else:
                    b = v if isinstance(v, bytes) else str(v).encode()
                    feat[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    return n


# --------------------------------------------------------------------------- model


def _dense_layer(x, units: int, name: str, relu: bool):
    import tensorflow as tf

    v1 = tf.compat.v1
    with v1.variable_scope(name):
        fan_in = int(x.shape[-1])
        kernel = v1.get_variable(
            "kernel", [fan_in, units], tf.float32,
            initializer=v1.glorot_uniform_initializer(), partitioner=None)
        bias = v1.get_variable("bias", [units], tf.float32,
                               initializer=v1.zeros_initializer(), partitioner=None)
        y = tf.nn.bias_add(tf.matmul(x, kernel), bias)
        return tf.nn.relu(y) if relu else y


def _batch_norm(x, training: bool):
    """``tf.layers.batch_normalization`` of a [B, D] input (batch statistics when training, moving ones serving)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    d = int(x.shape[-1])
    with v1.variable_scope("batch_normalization"):
        gamma = v1.get_variable("gamma", [d], tf.float32, initializer=v1.ones_initializer())
        beta = v1.get_variable("beta", [d], tf.float32, initializer=v1.zeros_initializer())
        moving_mean = v1.get_variable("moving_mean", [d], tf.float32, initializer=v1.zeros_initializer(),
                                      trainable=False)
        moving_var = v1.get_variable("moving_variance", [d], tf.float32, initializer=v1.ones_initializer(),
                                     trainable=False)
        if training:
            mean, var = tf.nn.moments(x, [0])
            for v, batch in ((moving_mean, mean), (moving_var, var)):
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                     v1.assign(v, BN_MOMENTUM * v + (1.0 - BN_MOMENTUM) * batch))
        else:
            mean, var = moving_mean, moving_var
        return tf.nn.batch_normalization(x, mean, var, beta, gamma, BN_EPSILON)


def _dot_interaction(features):
    """DeepRec modelzoo DLRM's ``_dot_op``: the strictly lower triangle of ``x x^T``, by a boolean mask."""
    import tensorflow as tf

    batch_size = tf.shape(features)[0]
    matrixdot = tf.matmul(features, features, transpose_b=True)
    feature_dim = int(matrixdot.shape[-1])
    ones_mat = tf.ones_like(matrixdot)
    lower_tri_mat = ones_mat - tf.linalg.band_part(ones_mat, 0, -1)
    lower_tri_mask = tf.cast(lower_tri_mat, tf.bool)
    result = tf.boolean_mask(matrixdot, lower_tri_mask)
    output_dim = feature_dim * (feature_dim - 1) // 2
    return tf.reshape(result, (batch_size, output_dim))


def _dot_model(features: dict, variant: str, training: bool):
    """DeepRec modelzoo's DLRM (``interaction_op='dot'``); return logits of shape [None]."""
    import tensorflow as tf

    v1 = tf.compat.v1
    fc = v1.feature_column
    arch = ARCHS["dot"]
    dense_cols = [fc.numeric_column(n) for n in DENSE_NAMES]
    emb_cols = [
        fc.embedding_column(
            fc.categorical_column_with_hash_bucket(n, min(b, DOT_MAX_BUCKETS), dtype=tf.string),
            dimension=EMBED_DIM, combiner="mean")
        for n, b in zip(SPARSE_NAMES, DEEPREC_BUCKETS)
    ]
    partitioner = v1.fixed_size_partitioner(2) if variant == "partitioned" else None
    with v1.variable_scope(SCOPE, use_resource=variant != "ref"):
        with v1.variable_scope("input_layer"):
            with v1.variable_scope("dense_input_layer"):
                x = fc.input_layer(features, dense_cols)
            with v1.variable_scope("sparse_input_layer", partitioner=partitioner):
                column_tensors: dict = {}
                fc.input_layer(features, emb_cols, cols_to_output_tensors=column_tensors)
        with v1.variable_scope("mlp_bot_layer"):
            for i, u in enumerate(arch["bottom"]):
                with v1.variable_scope(f"mlp_bot_hiddenlayer_{i}"):
                    x = _batch_norm(_dense_layer(x, u, "dense", relu=True), training)
        with v1.variable_scope("Op_dot_layer"):
            stacked = tf.stack([x] + [column_tensors[c] for c in emb_cols], axis=1)
            x = tf.concat([x, _dot_interaction(stacked)], 1)
        top = arch["top"]
        with v1.variable_scope("mlp_top_layer"):
            for i, u in enumerate(top[:-1]):
                x = _dense_layer(x, u, f"mlp_top_hiddenlayer_{i}", relu=True)
        x = _dense_layer(x, top[-1], "logits", relu=False)
        return tf.reshape(x, [-1], name="logits")


def _model(features: dict, variant: str, arch: str = "small", training: bool = False):
    """Build the DLRM-like forward pass; return logits of shape [None]."""
    import tensorflow as tf

    if ARCHS[arch].get("interaction") == "dot":
        return _dot_model(features, variant, training)
    v1 = tf.compat.v1
    fc = v1.feature_column
    dense_cols = [fc.numeric_column(n) for n in DENSE_NAMES]
    emb_cols = [
        fc.embedding_column(
            fc.categorical_column_with_hash_bucket(n, HASH_BUCKETS),
            dimension=EMBED_DIM, combiner="mean")
        for n in SPARSE_NAMES
    ]
    partitioner = v1.fixed_size_partitioner(2) if variant == "partitioned" else None
    use_resource = variant != "ref"
    with v1.variable_scope(SCOPE, use_resource=use_resource):
        with v1.variable_scope("embeddings", partitioner=partitioner):
            emb = fc.input_layer(features, emb_cols)  # [B, 26*16]
        dense = fc.input_layer(features, dense_cols)  # [B, 13]
        x = dense
        with v1.variable_scope("bottom_mlp"):
            for i, u in enumerate(ARCHS[arch]["bottom"]):
                x = _dense_layer(x, u, f"layer{i}", relu=True)
        x = tf.concat([x, emb], axis=1, name="interaction")
        top = ARCHS[arch]["top"]
        with v1.variable_scope("top_mlp"):
            for i, u in enumerate(top):
                x = _dense_layer(x, u, f"layer{i}", relu=i < len(top) - 1)
        return tf.reshape(x, [-1], name="logits")


def _placeholders():
    import tensorflow as tf

    v1 = tf.compat.v1
    feats = {n: v1.placeholder(tf.float32, [None], name=n) for n in DENSE_NAMES}
    feats.update({n: v1.placeholder(tf.string, [None], name=n) for n in SPARSE_NAMES})
    return feats


@contextlib.contextmanager
def _lookup_mode(lookup: str):
    """Force the classic gather path ('gather') or leave TF's own choice.

    Since TF 2.14, ``embedding_lookup_sparse`` on a single ref/plain-tensor table
    without weights takes a fast path (``SparseSegmentMean`` reads the table
    directly) when ``compat.forward_compatible(2023, 9, 26)``. For 'gather' we
    make that check false inside ``embedding_ops`` only, for the build's
    duration, which gives the pre-2.14 graph (Unique + GatherV2).
    """
    if lookup != "gather":
        yield
        return
    import types

    from tensorflow.python.ops import embedding_ops

    real = getattr(embedding_ops, "compat", None)
    if real is None or not hasattr(real, "forward_compatible"):
        raise RuntimeError("this TensorFlow has no embedding_ops.compat; "
                           "lookup='gather' is unsupported")
    embedding_ops.compat = types.SimpleNamespace(
        forward_compatible=lambda *a, **k: False)
    try:
        yield
    finally:
        embedding_ops.compat = real


@contextlib.contextmanager
def _quiet_deprecations():
    """Silence TF's feature_column / v1 deprecation warnings while building."""
    try:
        from tensorflow.python.util import deprecation
        ctx = deprecation.silence()
    except (ImportError, AttributeError):  # private API moved: just be noisy
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _session_config():
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2,
                                    inter_op_parallelism_threads=1)


def _resolve_lookup(variant: str, lookup: str) -> str:
    if lookup not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
    if lookup == "fast" and variant != "ref":
        raise ValueError("lookup='fast' exists only for variant='ref': resource and "
                         "partitioned tables always use the gather path")
    if lookup != "default":
        return lookup
    return "fast" if variant == "ref" else "gather"


def _train(data, variant, lookup, seed, epochs, batch_size, lr, ckpt_prefix, arch="small") -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default(), _lookup_mode(lookup), _quiet_deprecations():
        v1.set_random_seed(seed)
        feats = _placeholders()
        label = v1.placeholder(tf.float32, [None], name="label")
        logits = _model(feats, variant, arch, training=True)
        loss = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits))
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):  # batch norm statistics
            train_op = v1.train.AdamOptimizer(lr).minimize(loss)
        saver = v1.train.Saver(var_list=v1.global_variables(scope=SCOPE))
        init = v1.global_variables_initializer()
    n = len(data["label"])
    rng = np.random.default_rng([seed, 31])
    with v1.Session(graph=g, config=_session_config()) as sess:
        sess.run(init)
        for ep in range(epochs):
            order = rng.permutation(n)
            tot, steps = 0.0, 0
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                fd = {feats[k]: data[k][idx] for k in INPUT_NAMES}
                fd[label] = data["label"][idx]
                l, _ = sess.run([loss, train_op], fd)
                tot += l
                steps += 1
            log.info("sample %s: epoch %d loss %.4f", variant, ep + 1, tot / steps)
        saver.save(sess, ckpt_prefix, write_meta_graph=False, write_state=False)


def _export(variant, lookup, ckpt_prefix, export_dir, arch="small") -> tuple[list[str], list[str]]:
    """Build the clean serving graph, restore trained values, write the SavedModel."""
    import tensorflow as tf

    v1 = tf.compat.v1
    sdu = v1.saved_model.signature_def_utils
    g = tf.Graph()
    with g.as_default(), _lookup_mode(lookup), _quiet_deprecations():
        feats = _placeholders()
        logits = _model(feats, variant, arch)
        probs = tf.sigmoid(logits, name="probabilities")
        variables = v1.global_variables()
        # the one saver of the serving graph: restores the trained values here
        # and is the SavedModel's saver (same settings as the Builder's default)
        saver = v1.train.Saver(var_list=variables, sharded=True, allow_empty=True,
                               write_version=v1.train.SaverDef.V2)
        sigs = {
            "serving_default": sdu.predict_signature_def(
                inputs=feats, outputs={"probabilities": probs}),
            "predict_logits": sdu.predict_signature_def(
                inputs=feats, outputs={"logits": logits}),
        }
        emb_vars = sorted({v.name.split(":")[0].split("/part_")[0]
                           for v in variables if "embedding_weights" in v.name})
        kernels = sorted(v.name.split(":")[0] for v in variables if v.name.endswith("kernel:0"))
    with v1.Session(graph=g, config=_session_config()) as sess:
        saver.restore(sess, ckpt_prefix)
        b = v1.saved_model.Builder(export_dir)
        b.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                       signature_def_map=sigs, saver=saver)
        b.save()
    return emb_vars, kernels


def predict(model_path: str, data: dict[str, np.ndarray], *,
            signature: str = opts.DEFAULT_SIGNATURE, batch_size: int = 4096) -> np.ndarray:
    """Run one signature of a SavedModel (tag ``serve``) on ``data``; return its output.

    ``data`` maps input names to arrays (extra keys are ignored). The signature
    must have exactly one output. Rows are fed in batches of ``batch_size``.
    """
    from lpo.validation.runner import SignatureRunner

    with _quiet_deprecations(), SignatureRunner(model_path, signature=signature,
                                                session_config=_session_config()) as runner:
        (out,) = runner.output_names
        return runner.predict(data, batch_size)[out]


def build_sample(out_dir: str, *, variant: str = "resource", seed: int = 0,
                 lookup: str = "default", train_rows: int | None = None, arch: str = "small",
                 heldout_rows: int = 20_000, calib_rows: int = 2048,
                 csv_rows: int = 5000, epochs: int = 2, batch_size: int = 512,
                 learning_rate: float = 2e-3) -> SampleModel:
    """Train a DLRM-like model and write a sample into ``out_dir``.

    Writes ``out_dir/model`` (SavedModel, tag ``serve``, signatures
    ``serving_default`` -> ``probabilities`` and ``predict_logits`` -> ``logits``,
    both float32 ``[None]``), ``heldout.npz`` (every serving input + ``label``),
    ``calib.npz`` (serving inputs only), ``train.csv`` (``label,I1..I13,C1..C26``)
    and ``sample.json`` (the returned :class:`SampleModel`). ``variant`` is one of
    ``'resource'``, ``'ref'``, ``'partitioned'``; ``lookup`` picks the embedding
    lookup path: ``'gather'`` (Unique + gather + SparseSegmentMean) or
    ``'default'`` (TF 2.21's own choice: ``'fast'`` for ref, ``'gather'``
    otherwise). ``'fast'`` (SparseSegmentMean reads the table directly) exists
    only for ref tables; ``'gather'`` on ref gives the pre-TF-2.14 graph
    ``VariableV2 -> Identity -> GatherV2 -> SparseSegmentMean``. The other
    keywords size the data and training; the defaults build in ~15-35 s on 2
    cores and reach held-out AUC ~0.82. ``arch`` picks the MLP widths (:data:`ARCHS`):
    ``'mlperf'`` is the production-width one (MLPerf DLRM's MLPs, ~1-2 min to build); ``'dot'`` is
    DeepRec modelzoo's DLRM with the dot interaction and batch norm (see the module doc).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    if train_rows is None:
        train_rows = ARCHS[arch]["train_rows"]
    lookup = _resolve_lookup(variant, lookup)
    t0 = time.monotonic()
    os.makedirs(out_dir, exist_ok=True)
    out_dir = os.path.abspath(out_dir)
    train = generate_data(train_rows, seed, stream=0)
    held = generate_data(heldout_rows, seed, stream=1)
    calib = generate_data(calib_rows, seed, stream=2)
    np.savez(os.path.join(out_dir, "heldout.npz"), **_inputs_only(held), label=held["label"])
    np.savez(os.path.join(out_dir, "calib.npz"), **_inputs_only(calib))
    write_csv({k: v[:csv_rows] for k, v in train.items()}, os.path.join(out_dir, "train.csv"))

    model_path = os.path.join(out_dir, "model")
    with tempfile.TemporaryDirectory(prefix="lpo-train-") as tmp:
        ckpt = os.path.join(tmp, "model.ckpt")
        _train(train, variant, lookup, seed, epochs, batch_size, learning_rate, ckpt, arch)
        if os.path.exists(model_path):
            shutil.rmtree(model_path)
        emb_vars, kernels = _export(variant, lookup, ckpt, model_path, arch)

    preds = predict(model_path, held)
    sample = SampleModel(
        root=out_dir, variant=variant, seed=seed, lookup=lookup, model_path=model_path,
        heldout_path=os.path.join(out_dir, "heldout.npz"),
        calib_path=os.path.join(out_dir, "calib.npz"),
        train_csv_path=os.path.join(out_dir, "train.csv"),
        input_names=list(INPUT_NAMES), signatures=dict(SIGNATURES),
        embedding_variables=emb_vars, dense_kernels=kernels,
        auc=_auc(held["label"], preds), logloss=_logloss(held["label"], preds),
        bayes_auc=_auc(held["label"], held["_prob"]),
        build_seconds=round(time.monotonic() - t0, 2), arch=arch)
    with open(os.path.join(out_dir, _META_FILE), "w") as f:
        json.dump(sample.to_dict(), f, indent=2)
    log.info("built sample %s/%s in %.1fs: AUC %.4f (bayes %.4f)", variant, lookup,
             sample.build_seconds, sample.auc, sample.bayes_auc)
    return sample


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> str:
    """Return ``$LPO_CACHE_DIR`` or ``~/.cache/lpo/samples``."""
    return os.environ.get("LPO_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "lpo", "samples")


def read_sample_meta(path: str, version: int) -> dict | None:
    """The ``sample.json`` of a cached sample at ``path``, or None when absent or of another ``version``."""
    meta = os.path.join(path, _META_FILE)
    if not os.path.isfile(meta):
        return None
    with open(meta) as f:
        d = json.load(f)
    return d if d.get("version") == version else None


def _load_cached(path: str) -> SampleModel | None:
    d = read_sample_meta(path, SAMPLE_VERSION)
    return None if d is None else SampleModel.from_dict(d, root=path)


def cached_sample(variant: str = "resource", cache_dir: str | None = None, *,
                  seed: int = 0, lookup: str = "default", arch: str = "small") -> SampleModel:
    """Return the sample for ``variant``, building it once into the cache.

    The cache entry is ``<cache_dir>/<variant>-<lookup>-s<seed>-v<SAMPLE_VERSION>`` (with
    ``-<arch>`` after the lookup for a non-default ``arch``, e.g. the production-width ``mlperf``);
    ``cache_dir`` defaults to :func:`default_cache_dir`. Concurrent callers
    (e.g. pytest-xdist workers) serialize on an ``fcntl`` lock; the sample is
    built in a temp sibling and renamed into place, so readers never see a
    partial entry.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    lookup = _resolve_lookup(variant, lookup)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    key = f"{variant}-{lookup}{'' if arch == 'small' else '-' + arch}-s{seed}-v{SAMPLE_VERSION}"
    return cached_build(cache_dir, key, _load_cached,
                        lambda tmp: build_sample(tmp, variant=variant, seed=seed, lookup=lookup, arch=arch))


def cached_build(cache_dir: str, key: str, load, build):
    """Return ``load(<cache_dir>/<key>)``, building the entry first if it is missing.

    ``build(tmp_dir)`` fills a temp sibling that is renamed into place under an
    fcntl lock, so concurrent callers (pytest-xdist workers) build once and never
    see a partial entry; ``load`` returns None for a missing or stale entry.
    Finally the entry's metadata file is rewritten with its final paths.
    """
    final = os.path.join(cache_dir, key)
    hit = load(final)
    if hit is not None:
        return hit
    with open(os.path.join(cache_dir, f".{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            hit = load(final)
            if hit is not None:
                return hit
            tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
            try:
                build(tmp)
                if os.path.exists(final):  # stale/partial entry from an old crash
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            sample = load(final)
            assert sample is not None
            with open(os.path.join(final, _META_FILE), "w") as f:
                json.dump(sample.to_dict(), f, indent=2)
            return sample
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- checkpoint


def _saved_keys_and_slices(model_path: str) -> list[tuple[str, str]] | None:
    """(key, shape_and_slice) pairs from the SaveV2 node of the SavedModel's saver."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import tensor_util

    pb = os.path.join(model_path, "saved_model.pb")
    if not os.path.isfile(pb):
        return None
    sm = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        sm.ParseFromString(f.read())
    for mg in sm.meta_graphs:
        nodes = {n.name: n for n in mg.graph_def.node}
        pairs: list[tuple[str, str]] = []
        for n in mg.graph_def.node:  # one SaveV2 per shard/device
            if n.op != "SaveV2":
                continue
            names_node = nodes.get(n.input[1].split(":")[0].lstrip("^"))
            slices_node = nodes.get(n.input[2].split(":")[0].lstrip("^"))
            if names_node is None or slices_node is None or names_node.op != "Const":
                continue
            names = tensor_util.MakeNdarray(names_node.attr["value"].tensor)
            slices = tensor_util.MakeNdarray(slices_node.attr["value"].tensor)
            pairs += [(a.decode(), b.decode()) for a, b in zip(names.ravel(), slices.ravel())]
        if pairs:
            return pairs
    return None


def perturb_checkpoint(model_path: str, out_prefix: str, *, seed: int = 1,
                       scale: float = 0.01) -> str:
    """Write a "freshly retrained" copy of a SavedModel's checkpoint.

    Reads ``<model_path>/variables/variables`` tensor by tensor (slice by slice
    for partitioned variables, same keys and ``shape_and_slices`` as the model's
    saver) and writes a V2 checkpoint at ``out_prefix`` where every float tensor
    ``v`` becomes ``v + scale * rms(v) * N(0, 1)``; other dtypes are copied.
    ``model_path`` may also be a checkpoint prefix. Returns ``out_prefix``.
    """
    import tensorflow as tf

    prefix = model_path
    if os.path.isdir(model_path):
        prefix = os.path.join(model_path, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    pairs = (_saved_keys_and_slices(model_path) if os.path.isdir(model_path) else None)
    pairs = list(dict.fromkeys(p for p in (pairs or []) if p[0] in dtypes))
    covered = {k for k, _ in pairs}
    pairs += [(k, "") for k in sorted(dtypes) if k not in covered]
    rng = np.random.default_rng(seed)
    keys, slices, values = [], [], []
    for key, slc in pairs:
        dt = dtypes[key]
        (t,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key],
                                    shape_and_slices=[slc], dtypes=[dt])
        v = t.numpy()
        if dt.is_floating:
            rms = float(np.sqrt(np.mean(np.square(v, dtype=np.float64)))) if v.size else 0.0
            noise = rng.standard_normal(v.shape) * scale * (rms or 1.0)
            v = (v + noise).astype(v.dtype)
        keys.append(key)
        slices.append(slc)
        values.append(tf.constant(v, dtype=dt))
    d = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(d, exist_ok=True)
    tf.raw_ops.SaveV2(prefix=out_prefix, tensor_names=keys, shape_and_slices=slices,
                      tensors=values)
    log.info("perturbed %d tensors of %s into %s", len(keys), prefix, out_prefix)
    return out_prefix


def retrained_model(model_path: str, out_dir: str, *, seed: int = 1) -> tuple[str, str]:
    """A "retrained" FP32 model: ``(checkpoint prefix, SavedModel copy restoring it)`` under ``out_dir``.

    The checkpoint is :func:`perturb_checkpoint` of ``model_path`` at ``out_dir/ckpt/model.ckpt-2000``;
    the SavedModel is ``out_dir/fp32``: ``model_path``'s graph with that checkpoint as its variables,
    the model a re-optimization starts from (refresh of the first optimized model must equal it).
    """
    prefix = perturb_checkpoint(model_path, os.path.join(out_dir, "ckpt", "model.ckpt-2000"), seed=seed)
    model = os.path.join(out_dir, "fp32")
    shutil.copytree(model_path, model, ignore=shutil.ignore_patterns("variables"))
    os.makedirs(os.path.join(model, "variables"))
    for f in os.listdir(os.path.dirname(prefix)):
        shutil.copy(os.path.join(os.path.dirname(prefix), f),
                    os.path.join(model, "variables", f.replace("model.ckpt-2000", "variables", 1)))
    return prefix, model


def graph_op_types(model_path: str, tags: tuple[str, ...] = opts.DEFAULT_TAGS) -> set[str]:
    """Return the set of op types in the SavedModel's MetaGraph (functions included)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(model_path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    for mg in sm.meta_graphs:
        if set(tags) <= set(mg.meta_info_def.tags):
            ops = {n.op for n in mg.graph_def.node}
            for fn in mg.graph_def.library.function:
                ops.update(n.op for n in fn.node_def)
            return ops
    raise ValueError(f"no MetaGraph with tags {tags} in {model_path}")


__all__ = [
    "SAMPLE_VERSION", "VARIANTS", "ARCHS", "INPUT_NAMES", "DENSE_NAMES", "SPARSE_NAMES",
    "SIGNATURES", "SampleModel", "generate_data", "write_csv", "write_tfrecord",
    "build_sample", "cached_sample", "default_cache_dir", "perturb_checkpoint", "retrained_model",
    "predict", "graph_op_types",
]
