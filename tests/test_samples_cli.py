"""``lpo samples model|checkpoint`` and ``lpo publish``: try the pipelines without writing Python."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lpo import cli


def test_samples_checkpoint_refuses_bad_outputs(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    assert cli.main(["samples", "checkpoint", str(model), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli.main(["samples", "checkpoint", str(tmp_path / "missing"), str(tmp_path / "ck")]) == 2
    (tmp_path / "ck.index").write_bytes(b"x")
    assert cli.main(["samples", "checkpoint", str(model), str(tmp_path / "ck")]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_samples_model_checkpoint_refresh_publish(tmp_path, capsys, monkeypatch, sample_resource):
    import tensorflow as tf

    from conftest import SAMPLE_CACHE

    monkeypatch.setenv("LPO_CACHE_DIR", SAMPLE_CACHE)
    model, data = tmp_path / "training" / "1" / "saved_model", tmp_path / "data"
    assert cli.main(["samples", "model", str(model), "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"model_path": str(model), "calib_source": str(data / "calibration.csv"),
                   "heldout_data": str(data / "heldout.npz")}
    assert (model / "saved_model.pb").is_file() and (data / "heldout.npz").is_file()
    assert cli.main(["samples", "model", str(model)]) == 2  # exists: needs --overwrite

    ckpt = tmp_path / "ckpts" / "run1" / "model.ckpt-100"
    assert cli.main(["samples", "checkpoint", str(model), str(ckpt)]) == 0
    assert str(ckpt) in capsys.readouterr().out
    old = tf.train.load_checkpoint(str(model / "variables" / "variables"))
    new = tf.train.load_checkpoint(str(ckpt))
    assert old.get_variable_to_shape_map() == new.get_variable_to_shape_map()
    key = sample_resource.dense_kernels[0]
    assert not np.array_equal(old.get_tensor(key), new.get_tensor(key))
    np.testing.assert_allclose(old.get_tensor(key), new.get_tensor(key), atol=0.1)

    # The checkpoint refreshes an optimized model, which `lpo publish` then serves.
    opt, refreshed, serving = tmp_path / "opt", tmp_path / "refreshed", tmp_path / "serving"
    assert cli.main(["optimize", str(model), str(opt), "--data-type", "bf16", "--quiet"]) == 0
    assert cli.main(["refresh", str(opt), str(ckpt), str(refreshed), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["publish", str(refreshed), str(serving), "--version", "7", "--json"]) == 0
    pub = json.loads(capsys.readouterr().out)
    assert pub["published"] == str(serving / "versions" / "7") and os.readlink(serving / "current") == "versions/7"
    assert cli.main(["publish", str(refreshed), str(serving), "--layout", "tf_serving"]) == 0
    assert any(n.isdigit() and len(n) == 14 for n in os.listdir(serving))
