"""Airflow: the lpo operators and DAGs (structure, and runs with ``dag.test()``).

DAG files are loaded and run in a subprocess (tests/airflow_dag_runner.py) with their
own AIRFLOW_HOME and a SQLite DB migrated once per session, so Airflow's global state
never touches the pytest process. The README walkthrough under a real scheduler is
tests/test_airflow_scheduler.py.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("airflow.sdk")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DAGS = os.path.join(REPO, "pipelines", "airflow")
RUNNER = os.path.join(HERE, "airflow_dag_runner.py")
FAST = {"validate_iters": 2, "validate_batch_sizes": "64"}


def _base_env(home):
    return dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
                AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
                LPO_AIRFLOW_ROOT=str(home / "no-such-root"), TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """An AIRFLOW_HOME with the DAG files copied in (no database)."""
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    for name in os.listdir(DAGS):
        if name.endswith(".py"):
            shutil.copy(os.path.join(DAGS, name), home / "dags" / name)
    return home


@pytest.fixture(scope="session")
def airflow_env(airflow_home):
    """Environment for DAG runs: the AIRFLOW_HOME plus a migrated SQLite DB."""
    env = _base_env(airflow_home)
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    proc = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"env": env, "dags": str(airflow_home / "dags")}


def _runner(env, *args, timeout=900):
    proc = subprocess.run([sys.executable, RUNNER, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


def _run(airflow_env, dag_file, dag_id, conf, logical_date=None):
    args = ["run", os.path.join(airflow_env["dags"], dag_file), dag_id, json.dumps(conf)]
    return _runner(airflow_env["env"], *args, *([logical_date] if logical_date else []))


@pytest.fixture(scope="session")
def described(airflow_home):
    names = ("lpo_retrain_dag.py", "lpo_refresh_dag.py", "lpo_ready_dags.py", "lpo_retrain_k8s_dag.py",
             "lpo_sharded_refresh_dag.py")
    return _runner(_base_env(airflow_home), "describe", *[str(airflow_home / "dags" / n) for n in names],
                   timeout=300)


# --------------------------------------------------------------------------- structure
# (DAG files are parsed in a subprocess that imports Airflow: seconds, so marked slow)


def test_provider_info_and_operators():
    from importlib.metadata import entry_points

    from lpo.operators import OPERATOR_CLASSES, get_provider_info

    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("lpo.")]
    info = ep.load()()
    assert info == get_provider_info()
    import importlib

    for mod in [m for op in info["operators"] for m in op["python-modules"]]:
        m = importlib.import_module(mod)
        for name in OPERATOR_CLASSES:
            assert getattr(m, name).template_fields, name
    from lpo.operators.operators import LpoFindInputsOperator, LpoOptimizeOperator, LpoPublishOperator

    assert {"model_path", "save_path", "data_type", "opt_config", "calib_file", "target"} <= set(
        LpoOptimizeOperator.template_fields)
    assert {"version", "layout", "inputs"} <= set(LpoPublishOperator.template_fields)
    assert {"path", "root", "work_root"} <= set(LpoFindInputsOperator.template_fields)
    with pytest.raises(TypeError):
        LpoOptimizeOperator("t", "m", "s")  # keyword-only


def _fails_without_retry(op, match):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=match) as ei:
        op.execute({})
    return ei.value


def test_bad_operator_inputs_fail_without_retry(tmp_path):
    """A bad path, number or JSON is an LpoError mapped to AirflowFailException (no retry), one line."""
    from lpo.operators.operators import (
        LpoConvertShardOperator, LpoMergeCkptOperator, LpoOptimizeOperator, LpoPublishOperator, LpoRefreshOperator,
    )

    model = tmp_path / "model"
    model.mkdir()
    shard = {"task_id": "s", "opt_model_path": str(model), "ckpt_prefix": str(tmp_path / "ck"),
             "work_dir": str(tmp_path / "w"), "shard": 0, "num_shards": 2}
    err = _fails_without_retry(LpoConvertShardOperator(**dict(shard, opt_model_path="")),
                               "ConfigError: opt_model_path must be a non-empty path")
    assert "\n" not in str(err)
    _fails_without_retry(LpoConvertShardOperator(**dict(shard, opt_model_path=str(tmp_path / "nope"))),
                         "opt_model_path does not exist")
    _fails_without_retry(LpoConvertShardOperator(**dict(shard, num_shards="two")), "num_shards must be an integer")
    _fails_without_retry(LpoConvertShardOperator(**dict(shard, shard=-1)), "shard must be >= 0")
    _fails_without_retry(LpoMergeCkptOperator(task_id="m", work_dir=str(tmp_path / "nope"), num_shards=2,
                                              save_prefix=str(tmp_path / "m" / "v")), "work_dir does not exist")
    _fails_without_retry(LpoRefreshOperator(task_id="r", opt_model_path=str(model), ckpt_prefix=str(tmp_path / "ck"),
                                            save_path=str(tmp_path / "out")), "ckpt_prefix: checkpoint not found")
    _fails_without_retry(LpoOptimizeOperator(task_id="o", model_path=str(model), save_path=str(tmp_path / "o"),
                                             data_type="AUTO", auto_options="{not json",
                                             eval_file=str(model)), "auto_options must be a JSON object")
    _fails_without_retry(LpoPublishOperator(task_id="p", model_path=str(model), serving_dir=str(tmp_path / "s"),
                                            version="1", inputs="[oops"), "inputs must be a JSON object")
    (tmp_path / "afile").write_text("x")
    _fails_without_retry(LpoPublishOperator(task_id="p", model_path=str(model),
                                            serving_dir=str(tmp_path / "afile" / "serving"), version="1"),
                         "serving_dir: cannot create the directory")
    # an LpoError from the library (not a SavedModel) is mapped the same way
    _fails_without_retry(LpoPublishOperator(task_id="p", model_path=str(model), serving_dir=str(tmp_path / "s"),
                                            version="1"), "DataError: model to publish not found")
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_the_optimized_model_param_has_one_name_everywhere():
    """``opt_model_path``: the API's parameter, the KFP sharded pipeline's, the operators' and the DAG's."""
    import inspect

    import lpo
    from lpo.components.pipelines import sharded_refresh_pipeline
    from lpo.operators.operators import LpoConvertShardOperator, LpoRefreshOperator

    for fn in (lpo.convert_ckpt, lpo.refresh):
        assert "opt_model_path" in inspect.signature(fn).parameters
    assert "opt_model_path" in sharded_refresh_pipeline.component_spec.inputs
    for op in (LpoConvertShardOperator, LpoRefreshOperator):
        assert "opt_model_path" in op.template_fields
    dag = open(os.path.join(DAGS, "lpo_sharded_refresh_dag.py"), encoding="utf-8").read()
    assert '"opt_model_path": Param(' in dag and "params.opt_model " not in dag and '"opt_model"' not in dag


@pytest.mark.slow
def test_dags_start_only_when_triggered_or_asset_updated(described):
    """No lpo DAG has a time schedule (unpausing starts nothing); the Assets connect them."""
    for dag_id, d in described.items():
        assert d["schedule"] in (None, "None"), (dag_id, d["schedule"])
    assert described["lpo_retrain"]["schedule_assets"] == ["lpo_fp32_model"]
    assert described["lpo_refresh"]["schedule_assets"] == ["lpo_fp32_checkpoint"]
    assert described["lpo_model_ready"]["tasks"]["mark_ready"]["outlets"] == ["lpo_fp32_model"]
    assert described["lpo_checkpoint_ready"]["tasks"]["mark_ready"]["outlets"] == ["lpo_fp32_checkpoint"]
    retrain = described["lpo_retrain"]["tasks"]
    assert retrain["publish"]["outlets"] == ["lpo_optimized_model"]
    assert described["lpo_refresh"]["tasks"]["publish"]["outlets"] == ["lpo_optimized_model"]
    assert "validate" in retrain["publish"]["upstream"] and "find_inputs" in retrain["calibrate"]["upstream"]
    assert retrain["validate"]["upstream"] == ["find_inputs", "optimize"]


@pytest.mark.slow
def test_dag_defaults_come_from_options(described):
    from lpo.orchestration.airflow_settings import AIRFLOW, DAG_PATHS

    for dag_id in ("lpo_retrain", "lpo_refresh"):
        params = described[dag_id]["params"]
        for name in ("max_auc_drop", "max_abs_diff", "validate_iters", "validate_batch_sizes", "layout"):
            assert params[name]["default"] == getattr(AIRFLOW, name), (dag_id, name)
        for name, p in params.items():
            if name in DAG_PATHS:
                assert p["default"] == "" and f"lpo_{name}" in p["description"], (dag_id, name)
    assert described["lpo_retrain"]["params"]["data_type"]["default"] == AIRFLOW.data_type
    assert described["lpo_retrain"]["params"]["calib_rows"]["default"] == AIRFLOW.calib_rows


@pytest.mark.slow
def test_readme_parameter_tables_match_the_code(airflow_home):
    """README's DAG and KFP parameter tables are what scripts/params_doc.py writes from the code."""
    env = _base_env(airflow_home)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "params_doc.py"), "--check"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for name in ("model_path", "ckpt_prefix", "calib_rows", "validate_batch_sizes", "max_abs_diff"):
        assert f"| `{name}` |" in readme


@pytest.mark.slow
def test_readme_has_an_example_conf_for_every_dag_with_real_params(described):
    """README "Parameters": one ``airflow dags trigger DAG --conf '{...}'`` per DAG, each key a param of it."""
    import re

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("\n### Parameters", 1)[1].split("<!-- params:begin -->", 1)[0]
    examples = dict(re.findall(r"^airflow dags trigger (\S+) --conf '(\{.*\})'$", section, flags=re.M))
    dag_ids = {n for f in os.listdir(DAGS) if f.endswith(".py")
               for n in re.findall(r'dag_id="(lpo_\w+)"', open(os.path.join(DAGS, f)).read())}
    dag_ids |= {"lpo_model_ready", "lpo_checkpoint_ready"}  # defined in a loop
    assert set(examples) == dag_ids, (sorted(examples), sorted(dag_ids))
    for dag_id, conf in examples.items():
        if dag_id in described:  # lpo_retrain_k8s only where its provider is installed
            assert set(json.loads(conf)) <= set(described[dag_id]["params"]), dag_id


@pytest.mark.slow
def test_kubernetes_dag_skips_without_provider(described):
    try:
        import airflow.providers.cncf.kubernetes  # noqa: F401
    except ImportError:
        assert "lpo_retrain_k8s" not in described
    else:  # pragma: no cover - provider installed
        assert described["lpo_retrain_k8s"]["schedule"] in (None, "None")


# --------------------------------------------------------------------------- runs (no logical date)


@pytest.mark.slow
def test_nothing_to_do_skips_cleanly(airflow_env, tmp_path):
    """A run (manual: no logical date) that finds no model or nothing served is skipped, not failed."""
    out = _run(airflow_env, "lpo_retrain_dag.py", "lpo_retrain",
               {"training_root": str(tmp_path / "training"), "work_root": str(tmp_path / "work")})
    assert out["state"] == "success", out
    assert out["tasks"] == {t: "skipped" for t in ("find_inputs", "calibrate", "optimize", "validate", "publish")}
    out = _run(airflow_env, "lpo_refresh_dag.py", "lpo_refresh",
               {"serving_dir": str(tmp_path / "serving"), "work_root": str(tmp_path / "work")})
    assert out["state"] == "success" and set(out["tasks"].values()) == {"skipped"}, out
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_explicit_missing_model_fails_without_retry(airflow_env, tmp_path):
    out = _run(airflow_env, "lpo_retrain_dag.py", "lpo_retrain",
               {"model_path": str(tmp_path / "nope"), "work_root": str(tmp_path / "work")})
    assert out["state"] == "failed", out
    assert out["tasks"]["find_inputs"] == "failed"
    assert out["tasks"]["publish"] == "upstream_failed"


@pytest.fixture(scope="module")
def served(sample_resource, tmp_path_factory):
    """A serving directory with an INT8 model published the way lpo_retrain does."""
    import lpo
    from lpo.orchestration import publish_model

    root = tmp_path_factory.mktemp("served")
    opt = root / "optimized"
    lpo.optimize(sample_resource.model_path, str(opt), data_type="INT8", calib_file=sample_resource.calib_path,
                 quiet=True)
    publish_model(str(opt), str(root / "serving"), "20250102000000",
                  inputs={"fp32_model": sample_resource.model_path})
    return root / "serving"


@pytest.mark.slow
def test_refresh_newest_checkpoint_failed_gate_and_nothing_new(airflow_env, served, sample_resource, tmp_path):
    """Refresh by discovery: a failed gate publishes nothing; a served checkpoint is nothing new."""
    from lpo.orchestration import publish_model
    from lpo.samples.tf1 import perturb_checkpoint

    serving = tmp_path / "serving"
    shutil.copytree(served, serving, symlinks=True)
    ckpt = perturb_checkpoint(sample_resource.model_path, str(tmp_path / "ckpts" / "run1" / "model.ckpt-100"))
    conf = {"checkpoint_root": str(tmp_path / "ckpts"), "serving_dir": str(serving),
            "work_root": str(tmp_path / "work"), "heldout_data": sample_resource.heldout_path,
            "max_abs_diff": 0.0, **FAST}
    out = _run(airflow_env, "lpo_refresh_dag.py", "lpo_refresh", conf)
    assert out["state"] == "failed", out
    assert out["xcom"]["find_inputs"]["found_by"] == "newest"
    assert out["xcom"]["find_inputs"]["ckpt_prefix"] == ckpt
    assert out["xcom"]["find_inputs"]["fp32_model"] == sample_resource.model_path  # from the publish record
    assert out["tasks"]["refresh"] == "success" and out["tasks"]["validate"] == "failed"
    assert out["tasks"]["publish"] == "upstream_failed"
    assert os.listdir(serving / "versions") == ["20250102000000"]
    assert os.readlink(serving / "current") == "versions/20250102000000"
    # Once a model made from that checkpoint is served, the same checkpoint is nothing new.
    publish_model(out["xcom"]["refresh"]["save_path"], str(serving), "20250103000000",
                  inputs={"fp32_model": sample_resource.model_path, "ckpt_prefix": ckpt})
    out = _run(airflow_env, "lpo_refresh_dag.py", "lpo_refresh", dict(conf, max_abs_diff=-1))
    assert out["state"] == "success" and out["tasks"]["find_inputs"] == "skipped", out
    assert os.readlink(serving / "current") == "versions/20250103000000"  # unchanged by the skipped run
    assert sorted(os.listdir(serving / "versions")) == ["20250102000000", "20250103000000"]


@pytest.mark.slow
def test_sharded_refresh_dag_maps_shards_and_merges(airflow_env, served, sample_resource, tmp_path):
    """convert_shard mapped over 3 shards (.expand), merge, refresh: equal to an unsharded refresh."""
    import tensorflow as tf

    import lpo
    from lpo.samples.tf1 import perturb_checkpoint

    opt = os.path.realpath(served / "current")
    ckpt = perturb_checkpoint(sample_resource.model_path, str(tmp_path / "ckpts" / "model.ckpt-100"))
    work = tmp_path / "work"
    conf = {"opt_model_path": opt, "ckpt_prefix": ckpt, "work_dir": str(work), "num_shards": 3}
    out = _run(airflow_env, "lpo_sharded_refresh_dag.py", "lpo_sharded_refresh", conf)
    assert out["state"] == "success", out
    assert out["tasks"]["merge"] == "success" and out["tasks"]["refresh"] == "success"
    assert sorted(os.listdir(work / "shards")) == ["shard-00000", "shard-00001", "shard-00002"]
    assert out["xcom"]["merge"]["num_shards"] == 3
    want = lpo.refresh(opt, ckpt, str(tmp_path / "unsharded"), quiet=True)
    a = tf.train.load_checkpoint(str(work / "refreshed" / "variables" / "variables"))
    b = tf.train.load_checkpoint(os.path.join(want.save_path, "variables", "variables"))
    assert a.get_variable_to_dtype_map() == b.get_variable_to_dtype_map()
    for k in b.get_variable_to_shape_map():
        assert a.get_tensor(k).tobytes() == b.get_tensor(k).tobytes(), k
