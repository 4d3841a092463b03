"""Bad-input matrix (issue 6): every bad input gives the right LpoError, writes nothing, touches nothing.

For every case three things are asserted:
1. the error type (a subclass of ``LpoError``, with the helpful part of its message where it matters);
2. nothing appeared at the output: the watched output directory (the parent of the output, or the
   output itself when it existed before) is byte-identical, so no output and no temp sibling is left;
3. every input (model directory, calibration file, checkpoint, data) is byte-identical afterwards
   (``lpo.fsutil.tree_checksum``).

Broken models are copies of the cached sample (copied to tmp, then broken); the cached sample's
checksum is asserted unchanged at the end of the module.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import lpo
from lpo.errors import (
    CalibrationError, CheckpointError, ConfigError, DataError, LpoError, ModelFormatError, OutputExistsError,
)
from lpo.fsutil import tree_checksum

# --------------------------------------------------------------------------- helpers


def _state(path) -> str | None:
    """Checksum of a path, or None when it does not exist."""
    return tree_checksum(path) if os.path.lexists(path) else None


def _copy_model(src, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _read_pb(model):
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(Path(model, "saved_model.pb").read_bytes())
    return sm


def _write_pb(model, sm) -> None:
    Path(model, "saved_model.pb").write_bytes(sm.SerializeToString())


def rewrite_checkpoint(model: str, edit: Callable[[str, np.ndarray], np.ndarray]) -> None:
    """Rewrite ``model``'s variables checkpoint through ``edit(key, array)`` (same keys and slices)."""
    import tensorflow as tf

    from lpo.samples.tf1 import _saved_keys_and_slices

    prefix = os.path.join(model, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    pairs = list(dict.fromkeys(p for p in (_saved_keys_and_slices(model) or []) if p[0] in dtypes))
    covered = {k for k, _ in pairs}
    pairs += [(k, "") for k in sorted(dtypes) if k not in covered]
    keys, slices, values = [], [], []
    for key, slc in pairs:
        (t,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[slc], dtypes=[dtypes[key]])
        keys.append(key)
        slices.append(slc)
        values.append(tf.constant(edit(key, t.numpy())))
    tmp = os.path.join(model, "variables.new")
    tf.raw_ops.SaveV2(prefix=os.path.join(tmp, "variables"), tensor_names=keys, shape_and_slices=slices,
                      tensors=values)
    shutil.rmtree(os.path.join(model, "variables"))
    os.rename(tmp, os.path.join(model, "variables"))


def write_foreign_checkpoint(prefix: str) -> str:
    """A checkpoint of "another model": other variable names and shapes."""
    import tensorflow as tf

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["other/w", "other/b"], shape_and_slices=["", ""],
                      tensors=[tf.constant(np.ones((4, 3), np.float32)), tf.constant(np.zeros(3, np.float32))])
    return prefix


def _truncate(path: str, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """Shared, session-scoped inputs: a pristine copy of the sample, an optimized copy, a new checkpoint."""

    sample: object
    root: Path
    good: str
    opt: str
    new_ckpt: str
    cache_checksum: str
    extra_inputs: list = field(default_factory=list)


@pytest.fixture(scope="module")
def world(sample_resource, tmp_path_factory):
    from lpo.samples.tf1 import perturb_checkpoint

    cache_checksum = tree_checksum(os.path.dirname(sample_resource.model_path))
    root = tmp_path_factory.mktemp("bad_inputs")
    good = _copy_model(sample_resource.model_path, root / "good")
    opt = str(root / "opt")
    lpo.optimize(good, opt, data_type="BF16", quiet=True)
    new_ckpt = perturb_checkpoint(good, str(root / "ckpt" / "model.ckpt-2"), seed=3)
    w = World(sample_resource, root, good, opt, new_ckpt, cache_checksum)
    yield w
    # the shared cache is never modified by anything in this module
    assert tree_checksum(os.path.dirname(sample_resource.model_path)) == cache_checksum


@dataclass
class Setup:
    """What one case calls, which inputs must stay identical and which output must not appear."""

    call: Callable[[], object]
    inputs: list
    watch: list  # paths whose state (absent, or checksum) must be unchanged
    match: str | None = None


# Each case: (id, exception type, builder(w, d) -> Setup). ``d`` is a fresh per-case directory.
CASES: list[tuple[str, type, Callable]] = []


def case(case_id: str, exc: type):
    def deco(fn):
        CASES.append((case_id, exc, fn))
        return fn

    return deco


def _opt(w, d, model=None, out=None, inputs=(), match=None, **kw) -> Setup:
    model = model or w.good
    outs = d / "outs"
    outs.mkdir(exist_ok=True)
    out = out or str(outs / "model")
    return Setup(lambda: lpo.optimize(model, out, quiet=True, **kw), [model, *inputs], [str(outs), out], match)


def _broken_copy(w, d) -> str:
    return _copy_model(w.good, d / "model")


# ---- optimize: the model --------------------------------------------------------------------


@case("optimize-missing-path", ModelFormatError)
def _(w, d):
    return _opt(w, d, model=str(d / "nope"), inputs=[], match="does not exist")


@case("optimize-model-is-a-file", ModelFormatError)
def _(w, d):
    f = d / "model.pb"
    f.write_bytes(Path(w.good, "saved_model.pb").read_bytes())
    return _opt(w, d, model=str(f))


@case("optimize-dir-not-a-savedmodel", ModelFormatError)
def _(w, d):
    m = d / "model"
    m.mkdir()
    (m / "README.txt").write_text("not a model")
    return _opt(w, d, model=str(m), match="not a SavedModel")


@case("optimize-truncated-pb", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    _truncate(os.path.join(m, "saved_model.pb"), 0.37)
    return _opt(w, d, model=m)


@case("optimize-garbage-pb", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    Path(m, "saved_model.pb").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return _opt(w, d, model=m)


@case("optimize-empty-pb", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    Path(m, "saved_model.pb").write_bytes(b"")
    return _opt(w, d, model=m)


@case("optimize-missing-variables", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    shutil.rmtree(os.path.join(m, "variables"))
    return _opt(w, d, model=m, match="variables")


@case("optimize-no-serving-signature", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    sm = _read_pb(m)
    for mg in sm.meta_graphs:
        mg.signature_def.clear()
    _write_pb(m, sm)
    return _opt(w, d, model=m, match="signature")


@case("optimize-unknown-tag", ModelFormatError)
def _(w, d):
    return _opt(w, d, tags=["train"], match="serve")


@case("optimize-tf2-savedmodel-without-saver", ModelFormatError)
def _(w, d):
    """TF2 SavedModels are lowered (lpo/core/tf2.py); one whose saver is gone cannot map its variables."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            self.v = tf.Variable(tf.ones([3, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.v)

    m = str(d / "tf2")
    mod = M()
    tf.saved_model.save(mod, m, signatures=mod.__call__)
    sm = _read_pb(m)
    for mg in sm.meta_graphs:
        mg.ClearField("saver_def")
    _write_pb(m, sm)
    return _opt(w, d, model=m, match="TF2")


# ---- optimize: the output -------------------------------------------------------------------


@case("optimize-out-equals-model", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    return _opt(w, d, model=m, out=m)


@case("optimize-out-inside-model", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    return _opt(w, d, model=m, out=os.path.join(m, "optimized"), match="inside")


@case("optimize-out-inside-model-via-symlink", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    os.symlink(m, d / "link")
    return _opt(w, d, model=m, out=str(d / "link" / "variables" / "opt"))


@case("optimize-out-contains-model", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    return _opt(w, d, model=m, out=str(d))


@case("optimize-out-nonempty-no-overwrite", OutputExistsError)
def _(w, d):
    out = d / "outs" / "model"
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("days of training")
    return _opt(w, d, out=str(out), match="overwrite")


@case("optimize-out-under-a-file", ConfigError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "file").write_text("x")
    return _opt(w, d, out=str(d / "outs" / "file" / "sub"))


@case("optimize-out-under-proc", ConfigError)
def _(w, d):
    return _opt(w, d, out="/proc/lpo-test-out")


@case("optimize-out-parent-missing", ConfigError)
def _(w, d):
    return _opt(w, d, out=str(d / "outs" / "no" / "such" / "dir"), match="does not exist")


@case("optimize-out-is-a-file", ConfigError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "model").write_text("x")
    return _opt(w, d, out=str(d / "outs" / "model"))


# ---- optimize: options ----------------------------------------------------------------------


@case("optimize-unknown-data-type", ConfigError)
def _(w, d):
    return _opt(w, d, data_type="INT2", match="BF16")


@case("optimize-data-type-not-a-string", ConfigError)
def _(w, d):
    return _opt(w, d, data_type=16)


@case("optimize-opt-config-not-a-dict", ConfigError)
def _(w, d):
    return _opt(w, d, opt_config=[w.sample.embedding_variables[0]], match="dict")


@case("optimize-opt-config-unknown-key", ConfigError)
def _(w, d):
    return _opt(w, d, opt_config={"dlrm/no_such_layer/MatMul": "INT8"}, match="lpo inspect")


@case("optimize-opt-config-non-string-key", ConfigError)
def _(w, d):
    return _opt(w, d, opt_config={7: "INT8"})


@case("optimize-opt-config-bad-value", ConfigError)
def _(w, d):
    return _opt(w, d, opt_config={w.sample.embedding_variables[0]: "INT2"})


@case("optimize-opt-config-non-string-value", ConfigError)
def _(w, d):
    return _opt(w, d, opt_config={w.sample.embedding_variables[0]: 8})


@case("optimize-unknown-embedding-scheme", ConfigError)
def _(w, d):
    return _opt(w, d, data_type="INT8", embedding_scheme="per_table", calib_file=w.sample.calib_path)


@case("optimize-unknown-dense-mode", ConfigError)
def _(w, d):
    return _opt(w, d, dense_mode="fast")


@case("optimize-unknown-calib-method", ConfigError)
def _(w, d):
    return _opt(w, d, data_type="INT8", calib_file=w.sample.calib_path, calib_method="entropy",
                inputs=[w.sample.calib_path])


# ---- optimize: calibration ------------------------------------------------------------------


def _calib(w, d, mutate, name="calib.npz") -> str:
    arrays = dict(np.load(w.sample.calib_path))
    mutate(arrays)
    p = str(d / name)
    np.savez(p, **arrays)
    return p


def _opt_int8(w, d, calib, match=None) -> Setup:
    """INT8 with calibrated activations (int8_dense='auto' is weight-only without oneDNN: no calibration)."""
    return _opt(w, d, data_type="INT8", int8_dense="simulate", calib_file=calib,
                inputs=[calib] if os.path.exists(calib) else [], match=match)


@case("optimize-int8-without-calibration", CalibrationError)
def _(w, d):
    return _opt(w, d, data_type="INT8", int8_dense="simulate", match="calib")


@case("optimize-calib-file-missing", CalibrationError)
def _(w, d):
    return _opt_int8(w, d, str(d / "nope.npz"))


@case("optimize-calib-keys-do-not-match", CalibrationError)
def _(w, d):
    def mutate(a):
        a["C1_renamed"] = a.pop("C1")

    return _opt_int8(w, d, _calib(w, d, mutate), match="C1")


@case("optimize-calib-wrong-dtype", CalibrationError)
def _(w, d):
    def mutate(a):
        a["I1"] = np.array([f"x{i}" for i in range(len(a["I1"]))])

    return _opt_int8(w, d, _calib(w, d, mutate), match="I1")


@case("optimize-calib-wrong-shape", CalibrationError)
def _(w, d):
    def mutate(a):
        a["I2"] = np.repeat(a["I2"][:, None], 3, axis=1)

    return _opt_int8(w, d, _calib(w, d, mutate), match="I2")


@case("optimize-calib-empty", CalibrationError)
def _(w, d):
    def mutate(a):
        for k in a:
            a[k] = a[k][:0]

    return _opt_int8(w, d, _calib(w, d, mutate), match="0 rows")


@case("optimize-calib-garbage-npz", CalibrationError)
def _(w, d):
    p = d / "calib.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return _opt_int8(w, d, str(p))


@case("optimize-calib-legacy-pickle-without-opt-in", CalibrationError)
def _(w, d):
    arrays = dict(np.load(w.sample.calib_path))
    feeds = np.array([{k: v[:256] for k, v in arrays.items()}], dtype=object)
    p = str(d / "calib.npy")
    np.save(p, feeds, allow_pickle=True)
    return _opt_int8(w, d, p, match="allow_pickle")


# ---- optimize: weights ----------------------------------------------------------------------


@case("optimize-nan-in-embedding-table", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    table = w.sample.embedding_variables[3]

    def edit(key, a):
        if key == table:
            a = a.copy()
            a[17, 5] = np.nan
        return a

    rewrite_checkpoint(m, edit)
    return _opt(w, d, model=m, data_type="BF16", match=table)


@case("optimize-inf-in-dense-kernel", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    kernel = w.sample.dense_kernels[1]

    def edit(key, a):
        if key == kernel:
            a = a.copy()
            a[0, 0] = -np.inf
        return a

    rewrite_checkpoint(m, edit)
    return _opt(w, d, model=m, data_type="INT8", int8_dense="weight_only", match=kernel)


@case("optimize-truncated-checkpoint-data", CheckpointError)
def _(w, d):
    m = _broken_copy(w, d)
    data = [f for f in os.listdir(os.path.join(m, "variables")) if ".data-" in f]
    _truncate(os.path.join(m, "variables", data[0]), 0.5)
    return _opt(w, d, model=m)


@case("optimize-garbage-checkpoint-index", CheckpointError)
def _(w, d):
    m = _broken_copy(w, d)
    Path(m, "variables", "variables.index").write_bytes(b"\x00garbage" * 64)
    return _opt(w, d, model=m)


@case("optimize-checkpoint-from-another-model", CheckpointError)
def _(w, d):
    m = _broken_copy(w, d)
    shutil.rmtree(os.path.join(m, "variables"))
    write_foreign_checkpoint(os.path.join(m, "variables", "variables"))
    return _opt(w, d, model=m, match="does not match")


@case("optimize-checkpoint-wrong-table-shape", CheckpointError)
def _(w, d):
    m = _broken_copy(w, d)
    table = w.sample.embedding_variables[0]
    rewrite_checkpoint(m, lambda k, a: a[:-1] if k == table else a)
    return _opt(w, d, model=m, match=table)


# ---- convert_ckpt / refresh -----------------------------------------------------------------


def _convert(w, d, ckpt=None, save_prefix=None, opt=None, match=None, **kw) -> Setup:
    outs = d / "outs"
    outs.mkdir(exist_ok=True)
    ckpt = ckpt or w.new_ckpt
    save_prefix = save_prefix or str(outs / "model.ckpt")
    opt = opt or w.opt
    ckpt_dir = os.path.dirname(ckpt)
    inputs = [opt] + ([ckpt_dir] if os.path.isdir(ckpt_dir) else [])
    return Setup(lambda: lpo.convert_ckpt(ckpt, save_prefix, opt, quiet=True, **kw), inputs, [str(outs)], match)


def _refresh(w, d, ckpt=None, out=None, opt=None, match=None, **kw) -> Setup:
    outs = d / "outs"
    outs.mkdir(exist_ok=True)
    ckpt = ckpt or w.new_ckpt
    out = out or str(outs / "model")
    opt = opt or w.opt
    ckpt_dir = os.path.dirname(ckpt)
    inputs = [opt] + ([ckpt_dir] if os.path.isdir(ckpt_dir) else [])
    return Setup(lambda: lpo.refresh(opt, ckpt, out, quiet=True, **kw), inputs, [str(outs), out], match)


def _ckpt_copy(w, d) -> str:
    dst = d / "ckpt"
    shutil.copytree(os.path.dirname(w.new_ckpt), dst)
    return str(dst / os.path.basename(w.new_ckpt))


@case("convert-missing-checkpoint", CheckpointError)
def _(w, d):
    return _convert(w, d, ckpt=str(d / "nope" / "model.ckpt-9"), match="prefix")


@case("convert-checkpoint-from-another-model", CheckpointError)
def _(w, d):
    return _convert(w, d, ckpt=write_foreign_checkpoint(str(d / "foreign" / "model.ckpt-1")),
                    match="does not match")


@case("convert-truncated-checkpoint", CheckpointError)
def _(w, d):
    ckpt = _ckpt_copy(w, d)
    data = [f for f in os.listdir(os.path.dirname(ckpt)) if ".data-" in f]
    _truncate(os.path.join(os.path.dirname(ckpt), data[0]), 0.3)
    return _convert(w, d, ckpt=ckpt)


@case("convert-nan-in-new-checkpoint", ConfigError)
def _(w, d):
    import tensorflow as tf

    table = w.sample.embedding_variables[5]
    reader = tf.train.load_checkpoint(w.new_ckpt)
    keys = sorted(reader.get_variable_to_dtype_map())
    vals = []
    for k in keys:
        v = reader.get_tensor(k)
        if k == table:
            v = v.copy()
            v[3, 3] = np.nan
        vals.append(tf.constant(v))
    ckpt = str(d / "nan" / "model.ckpt-3")
    tf.raw_ops.SaveV2(prefix=ckpt, tensor_names=keys, shape_and_slices=[""] * len(keys), tensors=vals)
    return _convert(w, d, ckpt=ckpt, match=table)


@case("convert-model-not-optimized", ModelFormatError)
def _(w, d):
    return _convert(w, d, opt=w.good, match="manifest")


@case("convert-corrupt-manifest", ModelFormatError)
def _(w, d):
    opt = _copy_model(w.opt, d / "opt")
    Path(opt, "assets.extra", "lpo_manifest.json").write_text('{"format": 1, "conversions": [{"kind":')
    return _convert(w, d, opt=opt, match="manifest")


@case("convert-save-prefix-equals-ckpt", ConfigError)
def _(w, d):
    ckpt = _ckpt_copy(w, d)
    return _convert(w, d, ckpt=ckpt, save_prefix=ckpt)


@case("convert-save-prefix-exists", OutputExistsError)
def _(w, d):
    outs = d / "outs"
    outs.mkdir()
    (outs / "model.ckpt.index").write_bytes(b"old index")
    return _convert(w, d, save_prefix=str(outs / "model.ckpt"), match="overwrite")


@case("convert-save-prefix-inside-opt-model", ConfigError)
def _(w, d):
    return _convert(w, d, save_prefix=os.path.join(w.opt, "variables", "variables"))


@case("refresh-out-equals-opt-model", ConfigError)
def _(w, d):
    return _refresh(w, d, out=w.opt)


@case("refresh-out-inside-opt-model", ConfigError)
def _(w, d):
    return _refresh(w, d, out=os.path.join(w.opt, "refreshed"))


@case("refresh-out-nonempty-no-overwrite", OutputExistsError)
def _(w, d):
    out = d / "outs" / "model"
    out.mkdir(parents=True)
    (out / "serving.txt").write_text("live model")
    return _refresh(w, d, out=str(out))


@case("refresh-missing-checkpoint", CheckpointError)
def _(w, d):
    return _refresh(w, d, ckpt=str(d / "nope" / "model.ckpt-1"))


@case("refresh-checkpoint-from-another-model", CheckpointError)
def _(w, d):
    return _refresh(w, d, ckpt=write_foreign_checkpoint(str(d / "foreign" / "model.ckpt-1")))


@case("refresh-truncated-checkpoint", CheckpointError)
def _(w, d):
    ckpt = _ckpt_copy(w, d)
    data = [f for f in os.listdir(os.path.dirname(ckpt)) if ".data-" in f]
    _truncate(os.path.join(os.path.dirname(ckpt), data[0]), 0.6)
    return _refresh(w, d, ckpt=ckpt)


@case("refresh-out-under-a-file", ConfigError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "file").write_text("x")
    return _refresh(w, d, out=str(d / "outs" / "file" / "sub"))


# ---- calibrate ------------------------------------------------------------------------------


def _calibrate(w, d, source=None, out=None, model=None, match=None, **kw) -> Setup:
    outs = d / "outs"
    outs.mkdir(exist_ok=True)
    source = source or w.sample.train_csv_path
    out = out or str(outs / "calib.npz")
    model = model or w.good
    inputs = [p for p in (source, model) if os.path.exists(p)]
    return Setup(lambda: lpo.make_calibration(source, out, model, num_rows=64, **kw), inputs, [str(outs), out],
                 match)


@case("calibrate-missing-source", DataError)
def _(w, d):
    return _calibrate(w, d, source=str(d / "nope.csv"))


@case("calibrate-empty-source", DataError)
def _(w, d):
    p = d / "empty.csv"
    p.write_text("")
    return _calibrate(w, d, source=str(p), match="empty")


@case("calibrate-columns-do-not-match", DataError)
def _(w, d):
    p = d / "data.csv"
    p.write_text("a,b,c\n1,2,3\n4,5,6\n")
    return _calibrate(w, d, source=str(p))


@case("calibrate-missing-model", ModelFormatError)
def _(w, d):
    return _calibrate(w, d, model=str(d / "nope"))


@case("calibrate-out-exists", OutputExistsError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "calib.npz").write_bytes(b"old")
    return _calibrate(w, d)


@case("calibrate-out-under-a-file", ConfigError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "file").write_text("x")
    return _calibrate(w, d, out=str(d / "outs" / "file" / "calib.npz"))


@case("calibrate-zero-rows", ConfigError)
def _(w, d):
    s = _calibrate(w, d)
    out = str(d / "outs" / "calib.npz")
    s.call = lambda: lpo.make_calibration(w.sample.train_csv_path, out, w.good, num_rows=0)
    return s


@case("calibrate-unknown-format", ConfigError)
def _(w, d):
    return _calibrate(w, d, format="parquet")


# ---- validate -------------------------------------------------------------------------------


def _validate(w, d, original=None, optimized=None, data=None, match=None, **kw) -> Setup:
    outs = d / "outs"
    outs.mkdir(exist_ok=True)
    original, optimized = original or w.good, optimized or w.opt
    data = data or w.sample.heldout_path
    kw.setdefault("report_dir", str(outs / "report"))
    kw.setdefault("iters", 2)
    kw.setdefault("warmup", 0)
    kw.setdefault("batch_sizes", (8,))
    kw.setdefault("max_rows", 256)
    inputs = [p for p in (original, optimized, data) if os.path.exists(p)]
    return Setup(lambda: lpo.validate(original, optimized, data, **kw), inputs,
                 [str(outs), kw["report_dir"]], match)


@case("validate-negative-auc-drop", ConfigError)
def _(w, d):
    return _validate(w, d, max_auc_drop=-0.1, match="max_auc_drop")


@case("validate-nan-threshold", ConfigError)
def _(w, d):
    return _validate(w, d, max_abs_diff=float("nan"), match="max_abs_diff")


@case("validate-size-reduction-above-one", ConfigError)
def _(w, d):
    return _validate(w, d, min_size_reduction=1.5, match="min_size_reduction")


@case("validate-latency-ratio-zero", ConfigError)
def _(w, d):
    return _validate(w, d, max_latency_ratio=0, match="max_latency_ratio")


@case("validate-threshold-not-a-number", ConfigError)
def _(w, d):
    return _validate(w, d, max_auc_drop="0.01")


@case("validate-missing-data", DataError)
def _(w, d):
    return _validate(w, d, data=str(d / "nope.npz"))


@case("validate-data-keys-do-not-match", DataError)
def _(w, d):
    arrays = dict(np.load(w.sample.heldout_path))
    arrays["C9_x"] = arrays.pop("C9")
    p = str(d / "data.npz")
    np.savez(p, **{k: v[:64] for k, v in arrays.items()})
    return _validate(w, d, data=p, match="C9")


@case("validate-missing-optimized-model", ModelFormatError)
def _(w, d):
    return _validate(w, d, optimized=str(d / "nope"))


@case("validate-garbage-original-pb", ModelFormatError)
def _(w, d):
    m = _broken_copy(w, d)
    _truncate(os.path.join(m, "saved_model.pb"), 0.5)
    return _validate(w, d, original=m)


@case("validate-report-dir-inside-original", ConfigError)
def _(w, d):
    m = _broken_copy(w, d)
    return _validate(w, d, original=m, report_dir=os.path.join(m, "report"))


@case("validate-report-dir-inside-optimized", ConfigError)
def _(w, d):
    opt = _copy_model(w.opt, d / "opt")
    return _validate(w, d, optimized=opt, report_dir=os.path.join(opt, "assets.extra"))


@case("validate-report-dir-under-a-file", ConfigError)
def _(w, d):
    (d / "outs").mkdir()
    (d / "outs" / "file").write_text("x")
    return _validate(w, d, report_dir=str(d / "outs" / "file" / "report"))


# --------------------------------------------------------------------------- the matrix


def test_matrix_is_large_enough():
    ops = {cid.split("-", 1)[0] for cid, _, _ in CASES}
    assert len(CASES) >= 30 and ops == {"optimize", "convert", "refresh", "calibrate", "validate"}
    assert len({cid for cid, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id,exc,build", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, case_id, exc, build):
    d = tmp_path / "case"
    d.mkdir()
    s = build(world, d)
    inputs_before = {p: _state(p) for p in s.inputs}
    watch_before = {p: _state(p) for p in s.watch}
    with pytest.raises(LpoError) as info:
        s.call()
    err = info.value
    assert isinstance(err, exc), f"{case_id}: expected {exc.__name__}, got {type(err).__name__}: {err}"
    msg = str(err)
    assert msg.strip(), f"{case_id}: empty message"
    if s.match:
        assert s.match.lower() in msg.lower(), msg
    for p, before in watch_before.items():
        assert _state(p) == before, f"{case_id}: output {p} changed"
    for p, before in inputs_before.items():
        assert _state(p) == before, f"{case_id}: input {p} was modified"
    if os.path.isdir(d):
        leftovers = [str(p) for p in d.rglob("*.lpo-tmp-*")]
        assert not leftovers, leftovers


def test_lowercase_data_type_is_accepted_and_input_untouched(world, tmp_path):
    before = tree_checksum(world.good)
    res = lpo.optimize(world.good, str(tmp_path / "m"), data_type=" int8 ", int8_dense="weight_only", quiet=True)
    assert res.data_type == "INT8"
    assert tree_checksum(world.good) == before


def test_all_zero_embedding_table(world, tmp_path):
    """A table of zeros quantizes without a division by zero and contributes exactly nothing."""
    import tensorflow as tf

    from lpo.samples.tf1 import predict

    m = _copy_model(world.good, tmp_path / "model")
    table = world.sample.embedding_variables[0]  # C10 (sorted names)
    feature = table.split("/")[-2].split("_")[0]
    rewrite_checkpoint(m, lambda k, a: np.zeros_like(a) if k == table else a)
    before = tree_checksum(m)
    out = str(tmp_path / "opt")
    with np.errstate(all="raise"):  # no division by zero / invalid in the numerics
        lpo.optimize(m, out, data_type="INT8", calib_file=world.sample.calib_path, quiet=True)
    assert tree_checksum(m) == before
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    q = reader.get_tensor(table)
    scale = reader.get_tensor(table + "/lpo_scale")
    assert q.dtype == np.int8 and not q.any()
    assert np.isfinite(scale).all() and (scale >= 0).all()
    data = {k: v[:512] for k, v in np.load(world.sample.heldout_path).items() if k != "label"}
    p = np.asarray(predict(out, data)).reshape(-1)
    assert np.isfinite(p).all()
    other = dict(data)
    other[feature] = np.array([b"zz%d" % i for i in range(512)])  # different ids, same (zero) rows
    np.testing.assert_array_equal(np.asarray(predict(out, other)).reshape(-1), p)
    ref = np.asarray(predict(m, data)).reshape(-1)  # and close to the FP32 zero-table model
    assert np.abs(ref - p).max() < 0.05


def test_np_load_never_allows_pickle_silently():
    """Every np.load in lpo passes allow_pickle=False, or the user's own allow_pickle flag."""
    import ast

    root = Path(lpo.__file__).parent
    calls, offenders = 0, []
    for py in sorted(root.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy")):
                continue
            calls += 1
            kw = {k.arg: k.value for k in node.keywords}
            v = kw.get("allow_pickle")
            ok = (isinstance(v, ast.Constant) and v.value is False) or (isinstance(v, ast.Name) and v.id == "allow_pickle")
            if isinstance(v, ast.Constant) and v.value is True:
                # only directly behind the explicit opt-in check (lpo.data.calibration._load_legacy)
                func = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                            and f.lineno <= node.lineno <= f.end_lineno)
                ok = "if not allow_pickle" in ast.get_source_segment(py.read_text(encoding="utf-8"), func)
            if not ok:
                offenders.append(f"{py.relative_to(root)}:{node.lineno}")
    assert calls >= 3 and not offenders, offenders


def test_convert_ckpt_cleans_stale_temps_and_overwrites(world, tmp_path):
    """A temp left by a killed convert_ckpt (dead pid) is removed by the next run; overwrite replaces."""
    stale = tmp_path / ".v.lpo-tmp-999999999-deadbeef"
    stale.mkdir()
    (stale / "ckpt.index").write_bytes(b"half written")
    lpo.convert_ckpt(world.new_ckpt, str(tmp_path / "v"), world.opt, quiet=True)
    assert sorted(os.listdir(tmp_path)) == ["v.data-00000-of-00001", "v.index"]
    before = tree_checksum(tmp_path)
    lpo.convert_ckpt(world.new_ckpt, str(tmp_path / "v"), world.opt, overwrite=True, quiet=True)
    assert tree_checksum(tmp_path) == before  # same inputs, same bytes
