"""convert_ckpt()/refresh(): a refresh equals a re-optimization, bit for bit; bad input writes nothing.

"The new FP32 model" is a copy of the sample SavedModel whose ``variables/`` is the
perturbed checkpoint (``perturb_checkpoint``); ``optimize()`` on it with the same
options must give the same predictions, and in fact the same files, as
``refresh(first_optimized_model, perturbed_checkpoint)``.

INT8 dense layers with ``int8_dense='static'`` are the documented exception: their
activation ranges live in the graph (FakeQuant min/max) and a refresh keeps those of the
first run, while a re-optimization recalibrates. The variables are still identical.
"""
import filecmp
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lpo
from lpo.errors import CheckpointError, ConfigError, LpoError, OutputExistsError
from lpo.samples.tf1 import predict, retrained_model

ROWS = 512


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("refresh")


@pytest.fixture(scope="module")
def retrained(work):
    """Per sample: (perturbed checkpoint prefix, FP32 SavedModel copy holding it)."""
    cache = {}

    def get(sample):
        if sample.model_path not in cache:
            cache[sample.model_path] = retrained_model(sample.model_path, str(work / f"retrained-{sample.variant}"))
        return cache[sample.model_path]

    return get


@pytest.fixture(scope="module")
def optimized(work):
    """optimize() once per (model, options)."""
    cache = {}

    def get(model_path, calib, **kw):
        key = (model_path, json.dumps(kw, sort_keys=True))
        if key not in cache:
            out = work / f"opt-{len(cache)}"
            lpo.optimize(model_path, str(out), calib_file=calib, quiet=True, **kw)
            cache[key] = str(out)
        return cache[key]

    return get


def rows(sample):
    data = dict(np.load(sample.heldout_path))
    data.pop("label", None)
    return {k: v[:ROWS] for k, v in data.items()}


def variables_files(model_path):
    d = os.path.join(model_path, "variables")
    return sorted(os.listdir(d))


def same_variables(a, b):
    """True when the variables/ of two SavedModels are byte-identical."""
    fa, fb = variables_files(a), variables_files(b)
    if fa != fb:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, "variables"), os.path.join(b, "variables"), fa,
                                               shallow=False)
    return not mismatch and not errors


def fake_quant_ranges(model_path):
    from lpo.core.savedmodel import read_saved_model, select_meta_graph

    mg = select_meta_graph(read_saved_model(model_path))
    return {n.name: (n.attr["min"].f, n.attr["max"].f) for n in mg.graph_def.node
            if n.op == "FakeQuantWithMinMaxArgs"}


MATRIX = [
    ("resource", {"data_type": "BF16"}),
    ("resource", {"data_type": "FP16"}),
    ("resource", {"data_type": "BF16", "dense_mode": "compute"}),
    ("resource", {"data_type": "FP16", "dense_mode": "compute"}),
    ("resource", {"data_type": "INT8", "int8_dense": "weight_only"}),
    ("ref", {"data_type": "INT8", "int8_dense": "weight_only"}),
    ("partitioned", {"data_type": "BF16"}),
    ("partitioned", {"data_type": "INT8", "int8_dense": "weight_only", "embedding_scheme": "per_row"}),
    pytest.param("partitioned", {"data_type": "INT4", "int8_dense": "weight_only"}, marks=pytest.mark.slow),
    pytest.param("ref", {"data_type": "INT4", "int8_dense": "weight_only"}, marks=pytest.mark.slow),
]


@pytest.mark.slow
@pytest.mark.parametrize("variant,opts", MATRIX, ids=lambda v: v if isinstance(v, str) else "-".join(v.values()))
def test_refresh_equals_reoptimization_bit_for_bit(request, work, retrained, optimized, variant, opts):
    sample = request.getfixturevalue(f"sample_{variant}")
    new_ckpt, new_model = retrained(sample)
    first = optimized(sample.model_path, sample.calib_path, **opts)
    again = optimized(new_model, sample.calib_path, **opts)
    out = work / f"refreshed-{request.node.callspec.id}"
    result = lpo.refresh(first, new_ckpt, str(out), quiet=True)
    assert result.convert.tensors_converted > 0 and result.save_path == str(out)

    data = rows(sample)
    assert np.array_equal(predict(str(out), data), predict(again, data))
    # not only the predictions: the whole SavedModel is byte-identical
    assert same_variables(str(out), again)
    assert not same_variables(str(out), first)  # and it holds the new weights
    assert filecmp.cmp(out / "saved_model.pb", os.path.join(again, "saved_model.pb"), shallow=False)


def test_convert_ckpt_writes_the_reoptimized_variables(sample_resource, work, retrained, optimized):
    opts = {"data_type": "INT8", "int8_dense": "weight_only"}
    new_ckpt, new_model = retrained(sample_resource)
    first = optimized(sample_resource.model_path, sample_resource.calib_path, **opts)
    again = optimized(new_model, sample_resource.calib_path, **opts)
    out = work / "convert" / "model.ckpt-2000"
    out.parent.mkdir()
    res = lpo.convert_ckpt(new_ckpt, str(out), first, quiet=True)
    assert res.save_prefix == str(out) and res.tensors_converted > 0 and res.bytes_written > 0
    files = sorted(os.listdir(out.parent))
    assert files == [f.replace("variables", "model.ckpt-2000", 1) for f in variables_files(again)]
    for f in files:
        twin = os.path.join(again, "variables", f.replace("model.ckpt-2000", "variables", 1))
        assert filecmp.cmp(out.parent / f, twin, shallow=False)
    # and an existing prefix is replaced only with overwrite=True
    with pytest.raises(OutputExistsError):
        lpo.convert_ckpt(new_ckpt, str(out), first, quiet=True)
    lpo.convert_ckpt(new_ckpt, str(out), first, overwrite=True, quiet=True)
    assert sorted(os.listdir(out.parent)) == files


def test_int8_static_dense_keeps_the_first_calibration(sample_resource, work, retrained, optimized):
    """Documented: a refresh reuses the first run's activation ranges (graph FakeQuant min/max)."""
    new_ckpt, new_model = retrained(sample_resource)
    first = optimized(sample_resource.model_path, sample_resource.calib_path, data_type="INT8", int8_dense="simulate")
    again = optimized(new_model, sample_resource.calib_path, data_type="INT8", int8_dense="simulate")
    out = work / "refreshed-int8-static"
    lpo.refresh(first, new_ckpt, str(out), quiet=True)
    ranges = fake_quant_ranges(str(out))
    assert ranges and ranges == fake_quant_ranges(first)
    plan = json.load(open(out / "assets.extra" / "lpo_manifest.json"))
    first_plan = json.load(open(os.path.join(first, "assets.extra", "lpo_manifest.json")))
    assert [c.get("activation_range") for c in plan["conversions"]] == \
        [c.get("activation_range") for c in first_plan["conversions"]]
    # the converted weights and tables are those of a re-optimization; only the ranges differ
    assert same_variables(str(out), again)
    data = rows(sample_resource)
    assert not np.array_equal(predict(str(out), data), predict(first, data))


def write_sharded(src_prefix, dst_prefix, shards=2):
    """Rewrite a checkpoint as ``shards`` SaveV2 shards merged into one prefix (.data-0000i-of-0000N)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(src_prefix)
    keys = sorted(reader.get_variable_to_shape_map())
    os.makedirs(f"{dst_prefix}_temp")
    parts = []
    for i in range(shards):
        prefix = f"{dst_prefix}_temp/part-{i}"
        mine = keys[i::shards]
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=mine, shape_and_slices=[""] * len(mine),
                          tensors=[reader.get_tensor(k) for k in mine])
        parts.append(prefix)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=dst_prefix, delete_old_dirs=True)
    shutil.rmtree(f"{dst_prefix}_temp", ignore_errors=True)
    return dst_prefix


def test_sharded_source_checkpoint(sample_resource, work, retrained, optimized):
    new_ckpt, new_model = retrained(sample_resource)
    sharded = write_sharded(new_ckpt, str(work / "sharded" / "model.ckpt-2000"))
    names = sorted(os.listdir(work / "sharded"))
    assert names == ["model.ckpt-2000.data-00000-of-00002", "model.ckpt-2000.data-00001-of-00002",
                     "model.ckpt-2000.index"]
    opts = {"data_type": "BF16"}
    first = optimized(sample_resource.model_path, sample_resource.calib_path, **opts)
    again = optimized(new_model, sample_resource.calib_path, **opts)
    out = work / "refreshed-sharded"
    lpo.refresh(first, sharded, str(out), quiet=True)
    assert same_variables(str(out), again)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def bad(tmp_path, sample_resource, retrained, optimized):
    """(opt model, a copy of the new checkpoint to damage, an output prefix) for the error cases."""
    new_ckpt, _ = retrained(sample_resource)
    first = optimized(sample_resource.model_path, sample_resource.calib_path, data_type="BF16")
    src = tmp_path / "src"
    src.mkdir()
    d, base = os.path.split(new_ckpt)
    for f in os.listdir(d):
        if f.startswith(base + "."):
            shutil.copy(os.path.join(d, f), src / f)
    out = tmp_path / "out"
    out.mkdir()
    return first, str(src / base), str(out / "converted")


def assert_nothing_written(save_prefix):
    d = os.path.dirname(save_prefix)
    assert os.listdir(d) == [], os.listdir(d)  # no save_prefix.* and no temporary left


def _save(prefix, tensors):
    import tensorflow as tf

    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[k] for k in names])


def _rewrite(prefix, change):
    """Rewrite checkpoint ``prefix`` with ``change(dict of arrays)`` applied."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    values = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    change(values)
    d, base = os.path.split(prefix)
    for f in os.listdir(d):
        if f.startswith(base + "."):
            os.remove(os.path.join(d, f))
    _save(prefix, values)


def _first_table(values):
    return sorted(k for k in values if "embedding_weights" in k)[0]


def _other_model(values):
    values.clear()
    values.update({"other_model/dense/kernel": np.zeros((4, 3), np.float32), "global_step": np.int64(7)})


def _wrong_shape(values):
    k = _first_table(values)
    values[k] = np.zeros((values[k].shape[0] + 1, values[k].shape[1]), np.float32)


def _wrong_dtype(values):
    k = _first_table(values)
    values[k] = values[k].astype(np.float64)


def _missing_variable(values):
    del values[_first_table(values)]


@pytest.mark.parametrize("change", [_other_model, _wrong_shape, _wrong_dtype, _missing_variable],
                         ids=lambda f: f.__name__.strip("_"))
def test_checkpoint_that_does_not_match_the_model(bad, change):
    opt, src, save = bad
    _rewrite(src, change)
    with pytest.raises(CheckpointError, match="does not match the model"):
        lpo.convert_ckpt(src, save, opt, quiet=True)
    assert_nothing_written(save)


def test_truncated_data_file(bad):
    opt, src, save = bad
    (data,) = [f for f in os.listdir(os.path.dirname(src)) if ".data-" in f]
    path = os.path.join(os.path.dirname(src), data)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="truncated"):
        lpo.convert_ckpt(src, save, opt, quiet=True)
    assert_nothing_written(save)


def test_missing_index(bad):
    opt, src, save = bad
    os.remove(src + ".index")
    with pytest.raises(CheckpointError, match=r"\.index does not exist"):
        lpo.convert_ckpt(src, save, opt, quiet=True)
    assert_nothing_written(save)


def test_save_prefix_equal_to_ckpt_prefix(bad):
    opt, src, _save_prefix = bad
    before = sorted(os.listdir(os.path.dirname(src)))
    with pytest.raises(ConfigError, match="equals ckpt_prefix"):
        lpo.convert_ckpt(src, src, opt, quiet=True)
    assert sorted(os.listdir(os.path.dirname(src))) == before


def test_existing_save_prefix_is_kept_without_overwrite(bad):
    opt, src, save = bad
    with open(save + ".index", "wb") as f:
        f.write(b"keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        lpo.convert_ckpt(src, save, opt, quiet=True)
    assert os.listdir(os.path.dirname(save)) == ["converted.index"]
    assert open(save + ".index", "rb").read() == b"keep me"


def test_not_an_optimized_model(bad, sample_resource):
    _opt, src, save = bad
    with pytest.raises(LpoError, match="manifest"):
        lpo.convert_ckpt(src, save, sample_resource.model_path, quiet=True)
    assert_nothing_written(save)


def test_refresh_with_a_bad_checkpoint_writes_no_model(bad, tmp_path):
    opt, src, _save = bad
    _rewrite(src, _wrong_shape)
    out = tmp_path / "refreshed"
    with pytest.raises(CheckpointError):
        lpo.refresh(opt, src, str(out), quiet=True)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temporary sibling left


# ----------------------------------------------------------------------------- CLI progress bar
def _run_in_pty(args):
    """Run ``python -m lpo ARGS`` with stderr on a pseudo-terminal; return (exit code, stderr text)."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.Popen([sys.executable, "-m", "lpo", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.stdout.read()
    code = p.wait()
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_cli_progress_bar_on_a_tty_and_quiet(bad):
    opt, src, save = bad
    code, err = _run_in_pty(["convert-ckpt", src, save, opt])
    assert code == 0, err
    # rich draws the bar in place (carriage returns / cursor codes) and ends at 100%
    assert "convert" in err and "100%" in err and "\x1b[" in err
    assert "36/36" in err  # one step per checkpoint tensor
    code, err = _run_in_pty(["convert-ckpt", src, save + "2", opt, "--quiet"])
    assert code == 0, err
    assert "100%" not in err and "\x1b[" not in err and "\r" not in err.replace("\r\n", "\n")
