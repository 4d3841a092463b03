"""Airflow: the lpo operators and DAGs, run for real with ``dag.test()``.

Every DAG runs in a subprocess (tests/airflow_dag_runner.py) with its own
AIRFLOW_HOME and a SQLite DB migrated once per session, so Airflow's global
state never touches the pytest process (or the KFP tests beside it under xdist).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("airflow.sdk")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DAGS = os.path.join(REPO, "pipelines", "airflow")
RUNNER = os.path.join(HERE, "airflow_dag_runner.py")
FAST = {"validate_iters": 2, "validate_batch_sizes": "64"}
DATE = "2025-01-02T00:00:00"


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    """Environment for Airflow subprocesses: temp AIRFLOW_HOME, DAG folder, migrated SQLite DB."""
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    for name in os.listdir(DAGS):
        if name.endswith(".py"):
            shutil.copy(os.path.join(DAGS, name), dags / name)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
               TF_CPP_MIN_LOG_LEVEL="2")
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    proc = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"env": env, "dags": str(dags)}


def _run(airflow_env, dag_file, conf, *extra, render=False):
    argv = [sys.executable, RUNNER] + (["--render"] if render else [])
    argv += [os.path.join(airflow_env["dags"], dag_file), DATE, json.dumps(conf), *extra]
    proc = subprocess.run(argv, env=airflow_env["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


def _retrain_conf(s, root, **over):
    training = root / "training" / "20250102"
    if not (training / "saved_model").exists():
        training.mkdir(parents=True)
        shutil.copytree(s.model_path, training / "saved_model")
    conf = {"training_root": str(root / "training"), "work_root": str(root / "work"),
            "serving_dir": str(root / "serving"), "calib_source": s.train_csv_path,
            "heldout_data": s.heldout_path, "calib_rows": 256, "data_type": "INT8", **FAST}
    conf.update(over)
    return conf


def _heldout(s, n=2000):
    with np.load(s.heldout_path) as z:
        return {k: z[k][:n] for k in z.files}


# --------------------------------------------------------------------------- fast checks


def test_provider_info_and_operators():
    from importlib.metadata import entry_points

    from lpo.operators import OPERATOR_CLASSES, get_provider_info

    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("lpo.")]
    info = ep.load()()
    assert info == get_provider_info()
    modules = [m for op in info["operators"] for m in op["python-modules"]]
    import importlib

    for mod in modules:
        m = importlib.import_module(mod)
        for name in OPERATOR_CLASSES:
            cls = getattr(m, name)
            assert cls.template_fields, name
    from lpo.operators.operators import LpoOptimizeOperator

    assert {"model_path", "save_path", "data_type", "opt_config", "calib_file"} <= set(
        LpoOptimizeOperator.template_fields)
    with pytest.raises(TypeError):
        LpoOptimizeOperator("t", "m", "s")  # keyword-only


@pytest.mark.slow
def test_templated_fields_render(airflow_env, tmp_path):
    out = _run(airflow_env, "lpo_retrain_dag.py", {"training_root": "/train", "work_root": str(tmp_path)},
               "optimize", render=True)
    assert out["model_path"] == "/train/20250102/saved_model"
    assert out["save_path"] == f"{tmp_path}/retrain/20250102T000000/optimized"
    assert out["data_type"] == "INT8"
    assert out["calib_file"] == "xcom:calibrate.path"  # XCom templating
    out = _run(airflow_env, "lpo_refresh_dag.py", {"checkpoint_root": "/ckpts"}, "refresh", render=True)
    assert out["ckpt_prefix"] == "/ckpts/20250102T000000/ckpt"


@pytest.mark.slow
def test_kubernetes_dag_skips_without_provider(airflow_env):
    try:
        import airflow.providers.cncf.kubernetes  # noqa: F401
    except ImportError:
        assert _run(airflow_env, "lpo_retrain_k8s_dag.py", {}, render=False) == {"dag": None}
    else:  # pragma: no cover - provider installed
        pytest.skip("provider installed: the DAG loads")


# --------------------------------------------------------------------------- DAG runs


@pytest.fixture(scope="module")
def retrain_run(airflow_env, sample_resource, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    out = _run(airflow_env, "lpo_retrain_dag.py", _retrain_conf(sample_resource, root))
    return root, out


@pytest.mark.slow
def test_retrain_dag_publishes(retrain_run, sample_resource):
    from lpo.samples.tf1 import predict

    root, out = retrain_run
    assert out["state"] == "success", out
    assert out["tasks"] == {t: "success" for t in ("calibrate", "optimize", "validate", "publish")}
    assert out["xcom"]["validate"]["passed"] is True
    current = root / "serving" / "current"
    assert os.path.islink(current)
    assert os.readlink(current) == "versions/20250102T000000"
    assert out["xcom"]["publish"]["published"] == str(root / "serving" / "versions" / "20250102T000000")
    # The published model serves, close to the FP32 model.
    data = _heldout(sample_resource)
    served = predict(str(current), data)
    fp32 = predict(sample_resource.model_path, data)
    assert np.mean(np.abs(served - fp32)) < 0.02


@pytest.mark.slow
def test_retrain_dag_failed_gate_publishes_nothing(airflow_env, sample_resource, tmp_path):
    out = _run(airflow_env, "lpo_retrain_dag.py", _retrain_conf(sample_resource, tmp_path, max_abs_diff=0.0))
    assert out["state"] == "failed", out
    assert out["tasks"]["validate"] == "failed"
    assert out["tasks"]["publish"] == "upstream_failed"
    assert not os.path.lexists(tmp_path / "serving" / "current")
    assert not os.path.exists(tmp_path / "serving" / "versions")


def _refresh_conf(s, root, served_from, **over):
    from lpo.samples.tf1 import perturb_checkpoint

    serving = root / "serving"
    shutil.copytree(served_from, serving, symlinks=True)
    ckpt_dir = root / "checkpoints" / "20250102T000000"
    ckpt_dir.mkdir(parents=True)
    perturb_checkpoint(s.model_path, str(ckpt_dir / "ckpt"))
    conf = {"checkpoint_root": str(root / "checkpoints"), "fp32_model": s.model_path,
            "work_root": str(root / "work"), "serving_dir": str(serving), "heldout_data": s.heldout_path, **FAST}
    conf.update(over)
    return conf


@pytest.mark.slow
def test_refresh_dag_publishes(airflow_env, retrain_run, sample_resource, tmp_path):
    from lpo.samples.tf1 import predict

    retrain_root, _ = retrain_run
    conf = _refresh_conf(sample_resource, tmp_path, retrain_root / "serving")
    before = predict(str(tmp_path / "serving" / "current"), _heldout(sample_resource))
    out = _run(airflow_env, "lpo_refresh_dag.py", conf)
    assert out["state"] == "success", out
    assert out["tasks"] == {t: "success" for t in ("refresh", "validate", "publish")}
    current = tmp_path / "serving" / "current"
    assert os.readlink(current) == "versions/refresh-20250102T000000"
    after = predict(str(current), _heldout(sample_resource))
    assert not np.allclose(before, after)
    ref = predict(out["xcom"]["refresh"]["reference_path"], _heldout(sample_resource))
    assert np.mean(np.abs(ref - after)) < 0.02


@pytest.mark.slow
def test_refresh_dag_failed_gate_publishes_nothing(airflow_env, retrain_run, sample_resource, tmp_path):
    retrain_root, _ = retrain_run
    conf = _refresh_conf(sample_resource, tmp_path, retrain_root / "serving", max_abs_diff=0.0)
    out = _run(airflow_env, "lpo_refresh_dag.py", conf)
    assert out["state"] == "failed", out
    assert out["tasks"]["validate"] == "failed"
    assert out["tasks"]["publish"] == "upstream_failed"
    assert os.readlink(tmp_path / "serving" / "current") == "versions/20250102T000000"  # unchanged
