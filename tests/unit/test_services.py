"""One caster, one size function, one tag rule, one manifest reader; the option normalizers' defects."""
import os

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from lpo import options as opts
from lpo.cli import main
from lpo.core.savedmodel import select_meta_graph
from lpo.data.cast import cast_array, rows_shape
from lpo.errors import ConfigError, DataError, ModelFormatError
from lpo.fsutil import dir_bytes

F32 = (np.dtype(np.float32), (None, 3))
I32 = (np.dtype(np.int32), (None,))
BOOL = (np.dtype(bool), (None,))
STR = (np.dtype(object), (None,))


# --- the caster ----------------------------------------------------------------------------
@pytest.mark.parametrize("arr,spec,want", [
    (np.array([0.0, 1.0]), BOOL, [False, True]),
    (np.array([3.0, -2.0]), I32, [3, -2]),
    (np.array([1, 2], np.int64), I32, [1, 2]),
    (np.array(["a", "é"]), STR, [b"a", "é".encode()]),
    (np.array([b"x", b"yz"]), STR, [b"x", b"yz"]),
])
def test_cast_accepts(arr, spec, want):
    assert cast_array(arr, spec, "x", "d.npz").tolist() == want


@pytest.mark.parametrize("arr,spec,match", [
    (np.array([0.0, 2.0]), BOOL, "other than 0 and 1"),  # the strict rule: a bool input takes only 0/1
    (np.array([0.5]), I32, "non-integral"),
    (np.array([np.nan]), I32, "non-integral"),
    (np.array([2 ** 40]), I32, "outside the int32 range"),
    (np.array([1e39]), (np.dtype(np.float32), (None,)), "overflow float32"),
    (np.array(["1"]), I32, "holds strings"),
    (np.array([1, 2]), STR, "string input"),
    (np.zeros((4, 2), np.float32), F32, r"\(4, 2\).*\(None, 3\).*dimension 1"),
    (np.zeros((4,), np.float32), (np.dtype(np.float32), (None, 1)), r"rank 1.*reshape it to \(4, 1\)"),
])
def test_cast_rejects_with_one_clear_message(arr, spec, match):
    with pytest.raises(DataError, match=match) as e:
        cast_array(arr, spec, "x", "d.npz")
    assert str(e.value).startswith("d.npz: ") and "'x'" in str(e.value)


def test_rows_shape_lays_out_flat_values():
    assert rows_shape((None, 2, None), 5, 6, "x", "r") == (5, 2, 3)
    assert rows_shape(None, 5, 1, "x", "r") == (5,)
    with pytest.raises(DataError, match="3 value"):
        rows_shape((None, 2), 5, 3, "x", "r")


def test_calibration_and_validation_use_the_one_caster():
    from lpo.data import calibration, sources
    from lpo.validation import validator

    assert sources.cast_array is cast_array
    assert "cast_array" in calibration._conform.__code__.co_names
    assert "lpo.data.cast" in open(validator.__file__).read()


# --- one size function ---------------------------------------------------------------------
def test_dir_bytes_counts_each_file_once(tmp_path):
    (tmp_path / "m" / "variables").mkdir(parents=True)
    (tmp_path / "m" / "variables" / "v.data").write_bytes(b"x" * 100)
    (tmp_path / "outside").write_bytes(b"y" * 10)
    os.symlink(tmp_path / "outside", tmp_path / "m" / "link")  # TF reads through it: counted
    os.symlink(tmp_path / "nowhere", tmp_path / "m" / "broken")  # counts nothing
    os.symlink(tmp_path / "m" / "variables", tmp_path / "m" / "vars2")  # a linked dir is not walked twice
    assert dir_bytes(tmp_path / "m") == 110


# --- one tag rule ----------------------------------------------------------------------------
def _sm(*tag_sets):
    sm = saved_model_pb2.SavedModel()
    for tags in tag_sets:
        sm.meta_graphs.add().meta_info_def.tags.extend(tags)
    return sm


def test_tag_rule_exact_then_the_only_superset():
    sm = _sm(["serve", "gpu"], ["train"])
    assert list(select_meta_graph(sm).meta_info_def.tags) == ["serve", "gpu"]  # {serve, gpu} found by serve
    assert list(select_meta_graph(sm, "serve").meta_info_def.tags) == ["serve", "gpu"]
    assert list(select_meta_graph(sm, "gpu,serve").meta_info_def.tags) == ["serve", "gpu"]
    sm = _sm(["serve", "gpu"], ["serve"])
    assert list(select_meta_graph(sm, ["serve"]).meta_info_def.tags) == ["serve"]  # exact wins
    with pytest.raises(ModelFormatError, match="several MetaGraphs are tagged 'serve'.*'gpu,serve', 'serve,tpu'.*--tags"):
        select_meta_graph(_sm(["serve", "gpu"], ["serve", "tpu"]))
    with pytest.raises(ModelFormatError, match="no MetaGraph tagged 'train'; available tag sets: 'serve'"):
        select_meta_graph(_sm(["serve"]), ("train",))


def test_signature_reader_and_runner_share_the_tag_rule():
    from lpo.core import signature
    from lpo.validation import runner

    assert "select_meta_graph" in signature.find_meta_graph.__code__.co_names
    assert "select_meta_graph" in runner.SignatureRunner.__init__.__code__.co_names


def test_tags_string_is_one_tag_not_letters():
    assert opts.normalize_tags("serve") == ("serve",)
    assert opts.normalize_tags("serve, gpu") == ("serve", "gpu")
    assert opts.normalize_tags(None) == opts.DEFAULT_TAGS
    with pytest.raises(ConfigError):
        opts.normalize_tags(" , ")


# --- the CLI's batch sizes --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1,x", "", "0", "1.5"])
def test_validate_bad_batch_sizes_exit_2_one_line(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", "a", "b", "c.npz", "--batch-sizes", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("lpo validate: error: argument --batch-sizes: batch sizes must be positive integers")
