"""Tests of lpo.core.signature and lpo.data.sources (make_calibration, reservoir sampling)."""
import csv
import os

import numpy as np
import pytest

from lpo.data.sources import CRITEO_COLUMNS, make_calibration, reservoir_sample
from lpo.errors import ConfigError, DataError, ModelFormatError, OutputExistsError
from lpo.core.signature import load_output_specs, load_signature_specs


def _csv_path(sample):
    return getattr(sample, "csv_path", None) or sample.train_csv_path


def _heldout(sample, n=None):
    with np.load(sample.heldout_path, allow_pickle=False) as z:
        return {k: (z[k] if n is None else z[k][:n]) for k in z.files}


def _write_csv(path, data, names, n, delimiter=",", header=True, edit=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(names)
        for i in range(n):
            row = []
            for k in names:
                v = data[k][i]
                row.append(v.decode() if isinstance(v, bytes) else repr(float(v))
                           if k != "label" else str(int(v)))
            if edit:
                row = edit(i, row)
            w.writerow(row)


NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


# --------------------------------------------------------------------------- signature
def test_signature_specs(sample_resource):
    specs = load_signature_specs(sample_resource.model_path)
    assert set(specs) == set(sample_resource.input_names)
    assert specs["I1"].dtype == np.float32 and specs["I1"].shape == (None,)
    assert specs["C1"].dtype == object and specs["C1"].tensor_name.endswith(":0")
    outs = load_output_specs(sample_resource.model_path)
    assert list(outs) == ["probabilities"]
    assert "logits" in load_output_specs(sample_resource.model_path, signature="predict_logits")


def test_signature_errors(sample_resource, tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_signature_specs(tmp_path / "nope")
    with pytest.raises(ModelFormatError, match="no saved_model.pb"):
        load_signature_specs(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xff garbage \x00\x01")
    with pytest.raises(ModelFormatError):
        load_signature_specs(tmp_path)
    with pytest.raises(ModelFormatError, match="available tag sets: 'serve'"):
        load_signature_specs(sample_resource.model_path, tags=("train",))
    with pytest.raises(ModelFormatError, match="available signatures: predict_logits, "
                                               "serving_default"):
        load_signature_specs(sample_resource.model_path, signature="nope")


# --------------------------------------------------------------------------- sampler
class _Counted:
    alive = 0
    peak = 0

    def __init__(self, i):
        self.i = i
        _Counted.alive += 1
        _Counted.peak = max(_Counted.peak, _Counted.alive)

    def __del__(self):
        _Counted.alive -= 1


def test_reservoir_never_holds_more_than_n():
    _Counted.alive = _Counted.peak = 0
    gen = (_Counted(i) for i in range(20000))
    sample, total = reservoir_sample(gen, 50, seed=1)
    assert total == 20000 and len(sample) == 50
    # the reservoir plus the one item in flight
    assert _Counted.peak <= 51
    idx = [i for i, _ in sample]
    assert idx == sorted(idx) and all(item.i == i for i, item in sample)


def test_reservoir_reproducible_and_uniform():
    a, _ = reservoir_sample(iter(range(1000)), 20, seed=7)
    b, _ = reservoir_sample(iter(range(1000)), 20, seed=7)
    c, _ = reservoir_sample(iter(range(1000)), 20, seed=8)
    assert a == b and a != c
    few, total = reservoir_sample(iter(range(5)), 20, seed=0)
    assert total == 5 and [x for _, x in few] == [0, 1, 2, 3, 4]
    counts = np.zeros(50)
    for seed in range(400):
        s, _ = reservoir_sample(range(50), 10, seed=seed)
        counts[[x for _, x in s]] += 1
    # each item is kept with probability 10/50 -> 80 of 400 draws on average
    assert counts.min() > 50 and counts.max() < 115
    with pytest.raises(ConfigError):
        reservoir_sample(range(3), 0)


# --------------------------------------------------------------------------- sources
def _check_npz(path, sample, rows):
    specs = load_signature_specs(sample.model_path)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(specs)
        for name, spec in specs.items():
            a = z[name]
            assert a.shape == (rows,)
            assert a.dtype.kind == "S" if spec.dtype == object else a.dtype == spec.dtype
    try:
        from lpo.data.calibration import load_calibration
    except ImportError:
        return
    load_calibration(path, specs, batch_size=64, allow_pickle=False)


def test_csv_to_npz(sample_resource, tmp_path):
    out = tmp_path / "calib.npz"
    r = make_calibration(_csv_path(sample_resource), out, sample_resource.model_path,
                         num_rows=200, seed=0, legacy_npy=True, legacy_batch_size=64)
    assert r.rows == 200 and r.format == "csv" and r.source_rows > 200
    assert r.to_dict()["path"] == str(out) and "200 of" in r.summary()
    _check_npz(out, sample_resource, 200)
    feeds = np.load(r.legacy_path, allow_pickle=True)
    assert r.legacy_path == str(tmp_path / "calib.npy")
    specs = load_signature_specs(sample_resource.model_path)
    assert len(feeds) == 4
    assert set(feeds[0]) == {s.tensor_name for s in specs.values()}
    assert feeds[0][specs["I1"].tensor_name].shape == (64,)
    with pytest.raises(OutputExistsError):
        make_calibration(_csv_path(sample_resource), out, sample_resource.model_path,
                         num_rows=10)


def test_tfrecord_to_npz_takes_all_rows_in_order(sample_resource, tmp_path, caplog):
    from lpo.samples.tf1 import write_tfrecord

    tfr = tmp_path / "data.tfrecord"
    write_tfrecord(sample_resource.heldout_path, str(tfr), max_rows=150)
    out = tmp_path / "t.npz"
    with caplog.at_level("WARNING", logger="lpo"):
        r = make_calibration(tfr, out, sample_resource.model_path, num_rows=1000)
    assert r.rows == 150 and r.format == "tfrecord" and "only 150 row" in caplog.text
    _check_npz(out, sample_resource, 150)
    ref = _heldout(sample_resource, 150)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["I5"], ref["I5"])
        np.testing.assert_array_equal(z["C7"], ref["C7"])


def test_npz_to_npz_seeded(sample_resource, tmp_path):
    m, src = sample_resource.model_path, sample_resource.heldout_path
    a = make_calibration(src, tmp_path / "a.npz", m, num_rows=100, seed=3)
    make_calibration(src, tmp_path / "b.npz", m, num_rows=100, seed=3)
    make_calibration(src, tmp_path / "c.npz", m, num_rows=100, seed=4)
    assert a.rows == 100 and a.format == "npz"
    _check_npz(tmp_path / "a.npz", sample_resource, 100)
    with np.load(tmp_path / "a.npz") as za, np.load(tmp_path / "b.npz") as zb, \
            np.load(tmp_path / "c.npz") as zc:
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k])
        assert not np.array_equal(za["I1"], zc["I1"])
        # sampled rows are real rows of the source, in source order
        ref = _heldout(sample_resource)
        pos = {v: i for i, v in enumerate(ref["C3"].tolist())}
        assert set(za["C3"].tolist()) <= set(pos)


def test_same_seed_same_rows_across_formats(sample_resource, tmp_path):
    data = _heldout(sample_resource, 300)
    _write_csv(tmp_path / "d.csv", data, NAMES, 300)
    np.savez(tmp_path / "d.npz", **data)
    m = sample_resource.model_path
    make_calibration(tmp_path / "d.csv", tmp_path / "x.npz", m, num_rows=40, seed=5)
    make_calibration(tmp_path / "d.npz", tmp_path / "y.npz", m, num_rows=40, seed=5)
    with np.load(tmp_path / "x.npz") as x, np.load(tmp_path / "y.npz") as y:
        np.testing.assert_array_equal(x["C9"], y["C9"])
        np.testing.assert_allclose(x["I2"], y["I2"])


def test_tsv_criteo_without_header_and_mapping(sample_resource, tmp_path):
    data = _heldout(sample_resource, 30)
    _write_csv(tmp_path / "d.tsv", data, NAMES, 30, delimiter="\t", header=False)
    r = make_calibration(tmp_path / "d.tsv", tmp_path / "o.npz", sample_resource.model_path,
                         has_header=False)
    assert r.rows == 30 and r.format == "tsv"
    assert CRITEO_COLUMNS == NAMES
    # renamed column: error names it, mapping fixes it
    renamed = ["label", "dense_1"] + NAMES[2:]
    _write_csv(tmp_path / "r.csv", data, NAMES, 30)
    with pytest.raises(DataError) as ei:
        make_calibration(tmp_path / "r.csv", tmp_path / "p.npz", sample_resource.model_path,
                         columns=renamed)
    assert "'I1'" in str(ei.value) and "dense_1" in str(ei.value)
    r = make_calibration(tmp_path / "r.csv", tmp_path / "p.npz", sample_resource.model_path,
                         columns=renamed, mapping={"dense_1": "I1"}, format="csv")
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_allclose(z["I1"], data["I1"])


# --------------------------------------------------------------------------- errors
def test_error_missing_column(sample_resource, tmp_path):
    data = _heldout(sample_resource, 10)
    names = [n for n in NAMES if n != "C12"]
    _write_csv(tmp_path / "d.csv", data, names, 10)
    with pytest.raises(DataError) as ei:
        make_calibration(tmp_path / "d.csv", tmp_path / "o.npz", sample_resource.model_path)
    msg = str(ei.value)
    assert "missing column 'C12'" in msg and "Columns present: label, I1" in msg
    assert "Closest: C2, C1" in msg and not (tmp_path / "o.npz").exists()


def test_error_unparsable_value_names_row(sample_resource, tmp_path):
    data = _heldout(sample_resource, 20)

    def edit(i, row):
        if i == 6:  # 7th data row
            row[NAMES.index("I3")] = "abc"
        return row
    _write_csv(tmp_path / "d.csv", data, NAMES, 20, edit=edit)
    with pytest.raises(DataError, match=r"'abc' in column 'I3' at data row 7"):
        make_calibration(tmp_path / "d.csv", tmp_path / "o.npz", sample_resource.model_path)


def test_error_wrong_field_count(sample_resource, tmp_path):
    data = _heldout(sample_resource, 5)
    _write_csv(tmp_path / "d.csv", data, NAMES, 5, edit=lambda i, r: r[:-1] if i == 2 else r)
    with pytest.raises(DataError, match="data row 3 has 39 fields"):
        make_calibration(tmp_path / "d.csv", tmp_path / "o.npz", sample_resource.model_path)


def test_error_dtype_mismatch(sample_resource, tmp_path):
    data = _heldout(sample_resource, 10)
    bad = dict(data, I4=np.array([b"x"] * 10))
    np.savez(tmp_path / "d.npz", **bad)
    with pytest.raises(DataError, match="dtype mismatch for serving input 'I4'"):
        make_calibration(tmp_path / "d.npz", tmp_path / "o.npz", sample_resource.model_path)
    # TFRecord: a float input stored as bytes_list
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "d.tfrecord")) as w:
        feat = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
                for k in NAMES[1:14]}
        feat.update({k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"]))
                     for k in NAMES[14:]})
        feat["I2"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"1.0"]))
        w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    with pytest.raises(DataError, match="dtype mismatch in record 1: feature 'I2'"):
        make_calibration(tmp_path / "d.tfrecord", tmp_path / "o.npz",
                         sample_resource.model_path)
    del feat["C5"]
    with tf.io.TFRecordWriter(str(tmp_path / "e.tfrecord")) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    with pytest.raises(DataError, match="missing feature 'C5'"):
        make_calibration(tmp_path / "e.tfrecord", tmp_path / "o.npz",
                         sample_resource.model_path)


def test_error_empty_and_missing(sample_resource, tmp_path):
    m = sample_resource.model_path
    (tmp_path / "h.csv").write_text(",".join(NAMES) + "\n")
    with pytest.raises(DataError, match="empty"):
        make_calibration(tmp_path / "h.csv", tmp_path / "o.npz", m)
    (tmp_path / "z.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        make_calibration(tmp_path / "z.csv", tmp_path / "o.npz", m)
    (tmp_path / "z.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        make_calibration(tmp_path / "z.tfrecord", tmp_path / "o.npz", m)
    with pytest.raises(DataError, match="not found"):
        make_calibration(tmp_path / "nope.csv", tmp_path / "o.npz", m)
    with pytest.raises(ConfigError, match="format"):
        make_calibration(tmp_path / "h.parquet", tmp_path / "o.npz", m)
    with pytest.raises(ConfigError, match="num_rows"):
        make_calibration(tmp_path / "h.csv", tmp_path / "o.npz", m, num_rows=0)
