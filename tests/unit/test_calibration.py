"""Tests for lpo.numerics.observers and lpo.data.calibration: range observers and calibration file I/O (numpy only)."""

import numpy as np
import pytest

from lpo.data.calibration import iter_batches, load_calibration, save_calibration_npz
from lpo.numerics.observers import make_observer
from lpo.errors import CalibrationError, ConfigError

SPECS = {
    "I1": (np.dtype(np.float32), (None, 3)),
    "C1": (np.dtype(object), (None,)),
    "ids": (np.dtype(np.int64), (None, 2)),
}


def _arrays(n=10):
    rng = np.random.default_rng(0)
    return {"I1": rng.standard_normal((n, 3)).astype(np.float32),
            "C1": np.array([f"c{i}" for i in range(n)]),
            "ids": rng.integers(0, 100, (n, 2)),
            "label": np.zeros(n)}


# ------------------------------------------------------------------ observers
def _feed(obs, data, batches=4):
    for part in np.array_split(data, batches):
        obs.update(part)
    return obs.range()


@pytest.mark.parametrize("method", ["l2", "minmax", "percentile"])
def test_observer_uniform(method):
    x = np.random.default_rng(1).uniform(-1.0, 3.0, 400_000).astype(np.float32)
    lo, hi = _feed(make_observer(method), x)
    assert lo <= 0 <= hi
    assert -1.0 <= lo < -0.95 and 2.9 < hi <= 3.0


def test_observer_gaussian_outliers_l2_clips_minmax_does_not():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[[10, 500_000, 900_000]] = [30.0, -30.0, 30.0]
    mm = _feed(make_observer("minmax"), x)
    l2 = _feed(make_observer("l2"), x)
    pc = _feed(make_observer("percentile", percentile=99.99), x)
    assert mm == (-30.0, 30.0)
    assert 3.0 < l2[1] < 20.0 and -20.0 < l2[0] < -3.0
    assert 3.0 < pc[1] < 5.0 and -5.0 < pc[0] < -3.0


def test_observer_relu_lo_is_zero():
    x = np.maximum(np.random.default_rng(3).standard_normal((512, 400)), 0).astype(np.float32)
    for m in ("l2", "minmax", "percentile"):
        lo, hi = _feed(make_observer(m), x)
        assert lo == 0.0 and hi > 2.0


@pytest.mark.parametrize("method", ["l2", "minmax", "percentile"])
def test_observer_degenerate_inputs(method):
    o = make_observer(method)
    o.update(np.zeros((8, 4), np.float32))
    assert o.range() == (0.0, 1.0)
    o = make_observer(method)
    o.update(np.full((8, 4), 3.0, np.float32))
    assert o.range() == (0.0, 3.0)
    o = make_observer(method)
    o.update(np.full((8, 4), -2.0, np.float32))
    assert o.range() == (-2.0, 0.0)


def test_observer_deterministic_and_reservoir_bounded():
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((300, 50)).astype(np.float32) for _ in range(6)]
    ranges = []
    for _ in range(2):
        o = make_observer("l2", max_samples=20_000)
        for b in batches:
            o.update(b)
        assert o.samples().size == 20_000
        ranges.append(o.range())
    assert ranges[0] == ranges[1]


def test_observer_errors():
    with pytest.raises(ConfigError, match="l2, minmax, percentile"):
        make_observer("kl")
    with pytest.raises(ConfigError):
        make_observer("percentile", percentile=20)
    with pytest.raises(CalibrationError, match="no data"):
        make_observer("minmax").range()
    with pytest.raises(CalibrationError, match="NaN"):
        make_observer("l2", name="dense/Relu").update(np.array([1.0, np.nan]))


# ------------------------------------------------------------------ npz I/O
def test_npz_round_trip_and_batching(tmp_path, caplog):
    p = str(tmp_path / "calib.npz")
    arr = _arrays(10)
    np.savez(p, **arr)
    with caplog.at_level("DEBUG", logger="lpo.data.calibration"):
        b = load_calibration(p, SPECS, batch_size=4)
    assert [len(x["I1"]) for x in b] == [4, 4, 2]
    assert set(b[0]) == {"I1", "C1", "ids"}
    assert b[0]["C1"].dtype == object and b[0]["C1"][1] == b"c1"
    assert b[0]["ids"].dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([x["I1"] for x in b]), arr["I1"])
    assert "label" in caplog.text
    assert len(load_calibration(p, SPECS, batch_size=4, max_batches=2)) == 2


def test_npz_safe_casts(tmp_path):
    p = str(tmp_path / "c.npz")
    arr = _arrays(5)
    arr["I1"] = arr["I1"].astype(np.float64)
    arr["ids"] = arr["ids"].astype(np.float32)  # integral floats are fine
    arr["C1"] = arr["C1"].astype("S")
    np.savez(p, **arr)
    b = load_calibration(p, SPECS)[0]
    assert b["I1"].dtype == np.float32 and b["ids"].dtype == np.int64
    assert b["C1"][0] == b"c0"


def test_save_calibration_npz(tmp_path):
    arr = _arrays(6)
    batches = list(iter_batches({k: v for k, v in arr.items() if k != "label"}, 4))
    assert [len(x["I1"]) for x in batches] == [4, 2]
    for x in batches:
        x["C1"] = np.array([s.encode() for s in x["C1"]], dtype=object)
    p = save_calibration_npz(batches, tmp_path / "s.npz")
    b = load_calibration(p, SPECS, batch_size=100)
    assert len(b) == 1 and b[0]["C1"].tolist() == [f"c{i}".encode() for i in range(6)]
    np.testing.assert_array_equal(b[0]["I1"], arr["I1"])
    save_calibration_npz({"I1": arr["I1"]}, tmp_path / "t.npz")
    assert sorted(np.load(tmp_path / "t.npz").files) == ["I1"]


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.pop("ids"), r"lacks signature input\(s\) 'ids'.*keys present"),
    (lambda a: a.update(I1=np.array([["x"] * 3] * 10)), r"'I1'.*holds strings"),
    (lambda a: a.update(ids=a["ids"] + 0.5), r"'ids'.*non-integral"),
    (lambda a: a.update(I1=a["I1"][:, :2]), r"'I1'.*\(10, 2\).*\(None, 3\)"),
    (lambda a: a.update(I1=a["I1"][:, 0]), r"'I1'.*rank"),
    (lambda a: a.update(I1=a["I1"][:7]), r"different row counts"),
    (lambda a: a.update(C1=np.arange(10)), r"'C1'.*string input"),
])
def test_npz_errors(tmp_path, mutate, match):
    arr = _arrays(10)
    mutate(arr)
    p = str(tmp_path / "bad.npz")
    np.savez(p, **arr)
    with pytest.raises(CalibrationError, match=match):
        load_calibration(p, SPECS)


def test_npz_missing_suggests_close_names(tmp_path):
    arr = _arrays(4)
    arr["ids_"] = arr.pop("ids")
    p = str(tmp_path / "c.npz")
    np.savez(p, **arr)
    with pytest.raises(CalibrationError, match=r"did you mean 'ids_'"):
        load_calibration(p, SPECS)


def test_other_file_errors(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(str(tmp_path / "nope.npz"), SPECS)
    p = tmp_path / "c.csv"
    p.write_text("a,b\n")
    with pytest.raises(CalibrationError, match="unknown extension"):
        load_calibration(str(p), SPECS)
    p = tmp_path / "e.npz"
    np.savez(p, **{k: v[:0] for k, v in _arrays(3).items()})
    with pytest.raises(CalibrationError, match="0 rows"):
        load_calibration(str(p), SPECS)
    p = tmp_path / "corrupt.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(str(p), SPECS)
    p = tmp_path / "obj.npz"
    arr = _arrays(3)
    arr["C1"] = arr["C1"].astype(object)
    np.savez(p, **arr)
    with pytest.raises(CalibrationError, match="fixed-width"):
        load_calibration(str(p), SPECS)
    p = tmp_path / "plain.npy"
    np.save(p, np.zeros((3, 3)))
    with pytest.raises(CalibrationError, match="plain"):
        load_calibration(str(p), SPECS, allow_pickle=True)


# ------------------------------------------------------------------ legacy npy
def _legacy(tmp_path, n_batches=3):
    rng = np.random.default_rng(6)
    feeds = [{"I1:0": rng.standard_normal((4, 3)).astype(np.float32),
              "C1:0": np.array([b"a", b"b", b"c", b"d"], dtype=object),
              "ids": rng.integers(0, 9, (4, 2))} for _ in range(n_batches)]
    obj = np.empty(n_batches, dtype=object)
    obj[:] = feeds
    p = str(tmp_path / "legacy.npy")
    np.save(p, obj, allow_pickle=True)
    return p, feeds


def test_legacy_pickle_refused_without_opt_in(tmp_path):
    p, _ = _legacy(tmp_path)
    with pytest.raises(CalibrationError, match=r"pickle.*executes.*allow_pickle=True.*"
                                               r"--allow-pickle.*\.npz"):
        load_calibration(p, SPECS)


def test_legacy_pickle_accepted_with_opt_in(tmp_path):
    p, feeds = _legacy(tmp_path)
    b = load_calibration(p, SPECS, allow_pickle=True)
    assert len(b) == 3 and set(b[0]) == {"I1", "C1", "ids"}
    np.testing.assert_array_equal(b[1]["I1"], feeds[1]["I1:0"])
    assert b[0]["C1"].tolist() == [b"a", b"b", b"c", b"d"]
    assert len(load_calibration(p, SPECS, allow_pickle=True, max_batches=1)) == 1
    b = load_calibration(p, {"x": SPECS["I1"]}, allow_pickle=True,
                         tensor_names={"x": "I1:0"})
    assert b[0]["x"].shape == (4, 3)
    with pytest.raises(CalibrationError, match=r"feed dict 0.*'missing'"):
        load_calibration(p, {**SPECS, "missing": SPECS["I1"]}, allow_pickle=True)


def test_activation_error_reports_clipping_and_rmse():
    from lpo.numerics.observers import activation_error

    x = np.linspace(-1, 1, 10001, dtype=np.float32)
    exact = activation_error(x, -1.0, 1.0)
    assert exact["clipped"] == 0.0 and 0 < exact["rel_rmse"] < 0.01
    clipped = activation_error(x, -0.5, 0.5)
    assert abs(clipped["clipped"] - 0.5) < 1e-3 and clipped["rel_rmse"] > 0.2
    assert activation_error(np.zeros(10, np.float32), 0.0, 1.0) == {"clipped": 0.0, "rel_rmse": 0.0}
