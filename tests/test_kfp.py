"""Kubeflow: compile the components and pipelines, run the pipelines for real with
``kfp.local.SubprocessRunner`` and the CLI container components as subprocesses."""
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

kfp = pytest.importorskip("kfp")
yaml = pytest.importorskip("yaml")

from kfp import compiler  # noqa: E402

from lpo.components.image import LPO_IMAGE  # noqa: E402
from lpo.options import PIPELINE_DATA_TYPE  # noqa: E402
from lpo.orchestration.airflow_settings import AIRFLOW  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*non-Python base image.*:RuntimeWarning")
VALIDATE_FAST = {"validate_iters": 2, "validate_batch_sizes": "64", "validate_max_rows": 4000}


def _compile(func, path):
    compiler.Compiler().compile(func, str(path))
    with open(path) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- compile


def test_pipelines_compile_to_ir(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        from pipelines.kfp.compile import compile_all
    finally:
        sys.path.pop(0)
    paths = compile_all(str(tmp_path))
    opt = yaml.safe_load(open(paths["optimize_pipeline"]))
    ref = yaml.safe_load(open(paths["refresh_pipeline"]))

    params = opt["root"]["inputDefinitions"]["parameters"]
    for name in ("model_uri", "calib_source", "heldout_data", "data_type", "opt_config", "max_auc_drop",
                 "max_abs_diff", "max_latency_ratio", "min_size_reduction"):
        assert name in params, name
    assert params["data_type"]["defaultValue"] == PIPELINE_DATA_TYPE == AIRFLOW.data_type  # one default
    assert params["target"]["defaultValue"] == "host"
    tasks = opt["root"]["dag"]["tasks"]
    assert {"calibrate", "optimize", "validate"} <= set(tasks)
    assert "calibrate" in tasks["optimize"]["dependentTasks"]
    assert "optimize" in tasks["validate"]["dependentTasks"]
    assert set(opt["root"]["outputDefinitions"]["artifacts"]) == {"optimized", "metrics", "report"}

    rtasks = ref["root"]["dag"]["tasks"]
    assert "refresh" in rtasks["validate"]["dependentTasks"]
    assert {"ckpt_prefix", "opt_model_uri", "max_abs_diff"} <= set(ref["root"]["inputDefinitions"]["parameters"])

    for spec in (opt, ref):
        for name, ex in spec["deploymentSpec"]["executors"].items():
            if "container" in ex:
                assert ex["container"]["image"] == LPO_IMAGE, name
                # install_kfp_package=False: the image already has kfp; no pip at run time
                assert "pip install" not in " ".join(ex["container"]["command"]), name
    vdefs = opt["components"]["comp-validate"]["outputDefinitions"]["artifacts"]
    assert vdefs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert vdefs["report"]["artifactType"]["schemaTitle"] == "system.HTML"


# --------------------------------------------------------------------------- CLI container components

_PH = re.compile(r"\{\{\$\.(inputs|outputs)\.(artifacts|parameters)\['([^']+)'\](\.path)?\}\}")


def _fill(item, values):
    """Resolve one compiled command-line item (placeholders, IfPresent, Concat) to a list of strings."""
    if isinstance(item, str) and item.startswith("{") and ('"IfPresent"' in item or '"Concat"' in item):
        item = json.loads(item)
    if isinstance(item, dict):
        if "IfPresent" in item:
            spec = item["IfPresent"]
            if spec["InputName"] not in values:
                return []
            return [s for x in spec["Then"] for s in _fill(x, values)]
        if "Concat" in item:
            return ["".join(s for x in item["Concat"] for s in _fill(x, values))]
        raise AssertionError(f"unknown placeholder {item}")
    return [_PH.sub(lambda m: str(values[m.group(3)]), str(item))]


def _run_cli_component(component, values, tmp_path, expect_rc=0):
    spec = _compile(component, tmp_path / f"{component.name}.yaml")
    params = spec["root"]["inputDefinitions"].get("parameters", {})
    defaults = {k: int(p["defaultValue"]) if p["parameterType"] == "NUMBER_INTEGER" else p["defaultValue"]
                for k, p in params.items() if "defaultValue" in p}
    values = {**defaults, **values}  # what the backend passes for a parameter the caller left out
    (executor,) = spec["deploymentSpec"]["executors"].values()
    c = executor["container"]
    assert c["image"] == LPO_IMAGE
    argv = [s for item in c.get("command", []) + c.get("args", []) for s in _fill(item, values)]
    assert not any("{{$" in a for a in argv), argv
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == expect_rc, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


@pytest.mark.slow
def test_cli_container_components_run(sample_resource, tmp_path):
    from lpo.components.calibrate import calibrate_cli
    from lpo.components.optimize import optimize_cli
    from lpo.components.refresh import refresh_cli
    from lpo.components.validate import validate_cli
    from lpo.samples.tf1 import perturb_checkpoint

    s = sample_resource
    calib, opt, report = tmp_path / "calibration", tmp_path / "optimized", tmp_path / "report"
    _run_cli_component(calibrate_cli, {"model": s.model_path, "source": s.train_csv_path,
                                       "calibration": calib, "num_rows": 128}, tmp_path)
    assert (calib / "calibration.npz").exists()

    cfg = tmp_path / "opt_config.json"
    cfg.write_text(json.dumps({"dlrm/bottom_mlp/layer0/MatMul": "INT8"}))
    proc = _run_cli_component(optimize_cli, {"model": s.model_path, "optimized": opt, "data_type": "BF16",
                                             "calibration": calib, "opt_config": cfg, "target": "portable"},
                              tmp_path)
    result = json.loads(proc.stdout)
    assert [n["node"] for n in result["optimized"]] == ["dlrm/bottom_mlp/layer0/MatMul"]
    assert result["target"]["name"] == "portable" and result["requires"] == {}
    assert (opt / "saved_model.pb").exists()

    _run_cli_component(validate_cli, {"original": s.model_path, "optimized": opt, "data": s.heldout_path,
                                      "report": report, "max_auc_drop": 0.01, "iters": 3,
                                      "batch_sizes": "64"}, tmp_path)
    assert (report / "report.html").exists()
    # The gate: exit status 3 fails the step.
    _run_cli_component(validate_cli, {"original": s.model_path, "optimized": opt, "data": s.heldout_path,
                                      "report": tmp_path / "report2", "max_auc_drop": 0.01,
                                      "max_abs_diff": 0.0, "iters": 3, "batch_sizes": "64"}, tmp_path,
                       expect_rc=3)

    ckpt = perturb_checkpoint(s.model_path, str(tmp_path / "ckpt"))
    proc = _run_cli_component(refresh_cli, {"opt_model": opt, "ckpt_prefix": ckpt,
                                            "refreshed": tmp_path / "refreshed"}, tmp_path)
    assert json.loads(proc.stdout)["checkpoint"] == ckpt
    assert (tmp_path / "refreshed" / "saved_model.pb").exists()


# --------------------------------------------------------------------------- local pipeline runs


@pytest.fixture(scope="module")
def kfp_local(tmp_path_factory):
    from lpo.samples.demo_pipelines import init_local_kfp

    root = tmp_path_factory.mktemp("kfp-root")
    init_local_kfp(str(root))
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    return root


@pytest.fixture(scope="module")
def optimized_run(kfp_local, sample_resource):
    from lpo.components.pipelines import optimize_pipeline

    s = sample_resource
    task = optimize_pipeline(model_uri=s.model_path, calib_source=s.train_csv_path, heldout_data=s.heldout_path,
                             data_type="INT8", calib_rows=256, **VALIDATE_FAST)
    return task


def _heldout(s, n=2000):
    with np.load(s.heldout_path) as z:
        return {k: z[k][:n] for k in z.files}


@pytest.mark.slow
def test_optimize_pipeline_runs_locally(optimized_run, sample_resource):
    from lpo.samples.tf1 import predict

    model = optimized_run.outputs["optimized"]
    assert model.metadata["data_type"] == "INT8"
    assert model.metadata["optimized_nodes"] > 0
    assert model.metadata["report"]["data_type"] == "INT8"
    from lpo.target import host

    assert model.metadata["target"]["name"] == "host" and bool(model.metadata["requires"]) == host().onednn
    assert os.path.exists(os.path.join(model.path, "assets.extra", "lpo_manifest.json"))

    metrics = optimized_run.outputs["metrics"].metadata
    assert metrics["passed"] == 1.0
    assert abs(metrics["auc_delta"]) < 0.001
    assert metrics["size_variables_reduction"] > 0.5
    html = optimized_run.outputs["report"].path
    assert "<html" in open(html, encoding="utf-8").read().lower()

    data = _heldout(sample_resource)
    fp32 = predict(sample_resource.model_path, data)
    opt = predict(model.path, data)
    assert opt.shape == fp32.shape
    assert np.mean(np.abs(opt - fp32)) < 0.02


@pytest.mark.slow
def test_refresh_pipeline_runs_locally(optimized_run, sample_resource, tmp_path):
    from lpo.components.pipelines import refresh_pipeline
    from lpo.samples.tf1 import perturb_checkpoint, predict

    s = sample_resource
    ckpt = perturb_checkpoint(s.model_path, str(tmp_path / "ckpt"))
    opt_path = optimized_run.outputs["optimized"].path
    task = refresh_pipeline(opt_model_uri=opt_path, fp32_model_uri=s.model_path, ckpt_prefix=ckpt,
                            heldout_data=s.heldout_path, **VALIDATE_FAST)
    refreshed = task.outputs["refreshed"]
    assert refreshed.metadata["ckpt_prefix"] == ckpt
    assert task.outputs["metrics"].metadata["passed"] == 1.0

    data = _heldout(s)
    before, after = predict(opt_path, data), predict(refreshed.path, data)
    assert not np.allclose(before, after)  # the new weights are in
    # ...and close to the FP32 model with the same new checkpoint
    from lpo.orchestration import fp32_model_with_checkpoint

    ref = fp32_model_with_checkpoint(s.model_path, ckpt, str(tmp_path / "fp32_ref"))
    assert np.mean(np.abs(predict(ref, data) - after)) < 0.02


@pytest.mark.slow
def test_optimize_pipeline_gate_fails_the_run(kfp_local, sample_resource):
    from lpo.components.pipelines import optimize_pipeline

    s = sample_resource
    with pytest.raises(RuntimeError, match="(?i)validate"):
        optimize_pipeline(model_uri=s.model_path, calib_source=s.train_csv_path, heldout_data=s.heldout_path,
                          data_type="BF16", calib_rows=128, max_abs_diff=0.0, **VALIDATE_FAST)


@pytest.mark.slow
def test_optimize_pipeline_on_a_keras_model(kfp_local, sample_keras):
    """The same pipeline on a Keras 3 `model.export()` SavedModel (TF2, lowered by lpo)."""
    import tensorflow as tf

    from lpo.components.pipelines import optimize_pipeline

    s = sample_keras
    task = optimize_pipeline(model_uri=s.model_path, calib_source=s.calib_path, heldout_data=s.heldout_path,
                             data_type="INT8", calib_rows=256, **VALIDATE_FAST)
    model = task.outputs["optimized"]
    assert model.metadata["data_type"] == "INT8" and model.metadata["optimized_nodes"] > 0
    metrics = task.outputs["metrics"].metadata
    assert metrics["passed"] == 1.0 and abs(metrics["auc_delta"]) < 0.002
    fn = tf.saved_model.load(model.path).signatures["serving_default"]
    with np.load(s.heldout_path) as z:
        feeds = {k: tf.constant(z[k][:64]) for k in fn.structured_input_signature[1]}
    (out,) = fn(**feeds).values()
    assert out.shape[0] == 64 and np.all(np.isfinite(out.numpy()))


# --------------------------------------------------------------------------- sharded refresh


def test_sharded_refresh_pipeline_compiles_with_and_without_a_volume(tmp_path):
    from lpo.components.pipelines import make_sharded_refresh_pipeline, sharded_refresh_pipeline

    spec = _compile(sharded_refresh_pipeline, tmp_path / "sharded.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    loop = [t for t in tasks.values() if "parameterIterator" in t]
    assert len(loop) == 1 and "merge-refresh" in tasks
    assert {"opt_model_path", "ckpt_prefix", "num_shards", "work_dir"} <= \
        set(spec["root"]["inputDefinitions"]["parameters"])
    assert "platforms" not in open(tmp_path / "sharded.yaml").read()

    compiler.Compiler().compile(make_sharded_refresh_pipeline(pvc_name="lpo-data", mount_path="/mnt/lpo"),
                                str(tmp_path / "pvc.yaml"))
    docs = list(yaml.safe_load_all(open(tmp_path / "pvc.yaml")))
    platform = json.dumps(docs[-1])
    assert "pvcMount" in platform and "lpo-data" in platform and "/mnt/lpo" in platform
    # every executor (shard numbers, each shard, the merge) mounts the claim
    assert platform.count("/mnt/lpo") == 3


@pytest.mark.slow
@pytest.mark.parametrize("work_dir", [False, True], ids=["artifacts", "work-dir"])
def test_sharded_refresh_pipeline_runs_locally(kfp_local, sample_resource, tmp_path, work_dir):
    """ParallelFor over 3 shards, then merge: the refreshed variables equal an unsharded refresh."""
    import lpo
    from lpo.components.pipelines import sharded_refresh_pipeline
    from lpo.samples.tf1 import perturb_checkpoint

    s = sample_resource
    opt = str(tmp_path / "opt")
    lpo.optimize(s.model_path, opt, data_type="INT8", int8_dense="weight_only", quiet=True)
    ckpt = perturb_checkpoint(s.model_path, str(tmp_path / "ckpt" / "model.ckpt-1"))
    kw = {"work_dir": str(tmp_path / "work")} if work_dir else {}
    task = sharded_refresh_pipeline(opt_model_path=opt, ckpt_prefix=ckpt, num_shards=3, **kw)
    refreshed = task.output
    assert int(refreshed.metadata["num_shards"]) == 3
    if work_dir:
        assert sorted(os.listdir(tmp_path / "work")) == ["shard-00000", "shard-00001", "shard-00002"]
    want = lpo.refresh(opt, ckpt, str(tmp_path / "unsharded"), quiet=True).save_path
    import tensorflow as tf

    a = tf.train.load_checkpoint(os.path.join(refreshed.path, "variables", "variables"))
    b = tf.train.load_checkpoint(os.path.join(want, "variables", "variables"))
    assert a.get_variable_to_dtype_map() == b.get_variable_to_dtype_map()
    for k in b.get_variable_to_shape_map():
        assert a.get_tensor(k).tobytes() == b.get_tensor(k).tobytes(), k
