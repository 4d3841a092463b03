"""The README's Airflow walkthrough, run as written against a real Airflow (marker ``real_scheduler``).

A real api-server, scheduler and dag-processor (LocalExecutor, SQLite) in a temporary
AIRFLOW_HOME on free loopback ports (tests/real_airflow.py), stopped by process group
also when the test fails. The three demo ``bash`` blocks of README "Try it on a local Airflow"
run verbatim, with ``DEMO`` pointed at a temporary directory:

1. manual ``airflow dags trigger lpo_retrain`` (no logical date) publishes a model that
   loads and serves; a second run whose gate cannot pass fails at validate and publishes
   nothing; unpausing started no run;
2. a "retrained" checkpoint marked ready through ``lpo_checkpoint_ready`` emits the Asset
   event that starts ``lpo_refresh``, which publishes a refreshed model;
3. ``lpo_sharded_refresh`` of the served model with that checkpoint gives the refreshed model,
   and a retrain with ``layout: tf_serving`` publishes ``<serving_dir>/<version>/saved_model.pb``.

Task logs carry no TensorFlow start-up noise and no error-level lines in successful tasks.
"""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("airflow.sdk")

from real_airflow import RealAirflow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOISE = re.compile(r"oneDNN custom operations|cuda|cpu_feature_guard|absl::InitializeLog|rebuild TensorFlow")

pytestmark = [pytest.mark.real_scheduler, pytest.mark.slow]


def readme_blocks() -> list[str]:
    """The demo ``bash`` blocks of the README section "Try it on a local Airflow".

    The section has five: start a local Airflow, retrain, refresh, sharded refresh + TF Serving
    layout, stop. The test starts and stops its own Airflow (tests/real_airflow.py) and runs
    the three demo blocks; the start block's settings are checked against the helper's.
    """
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("### Try it on a local Airflow", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 5, "README's Airflow walkthrough must have five bash blocks"
    start, *demo, stop = blocks
    for setting in ("mkdir -p \"$AIRFLOW_HOME/dags\"", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL",
                    "AIRFLOW__CORE__LOAD_EXAMPLES=False", "AIRFLOW__CORE__PARALLELISM", "setsid",
                    "airflow dags list-import-errors"):
        assert setting in start, setting
    assert "kill -TERM -- -\"$PGID\"" in stop and "pgrep -s" in stop
    return demo


def _predict(model, sample, rows=2000):
    from lpo.samples.tf1 import predict

    with np.load(sample.heldout_path) as z:
        data = {k: z[k][:rows] for k in z.files if k != "label"}
    return np.asarray(predict(str(model), data)).reshape(-1)


def _check_logs(af, dag_id, run_id, tasks):
    for task, state in tasks.items():
        log = af.task_log(dag_id, run_id, task)
        if state != "success":
            continue
        assert log, f"no log for {dag_id}.{task}"
        noisy = [ln for ln in log.splitlines() if NOISE.search(ln)]
        assert not noisy, f"TensorFlow start-up noise in {dag_id}.{task}:\n" + "\n".join(noisy[:5])
        errors = [ln for ln in log.splitlines() if '"level":"error"' in ln]
        assert not errors, f"error lines in the successful task {dag_id}.{task}:\n" + "\n".join(errors[:5])


def test_readme_walkthrough_under_real_scheduler(tmp_path, sample_resource):
    block1, block2, block3 = readme_blocks()
    assert "export DEMO=" in block1
    demo = tmp_path / "demo"
    block1 = re.sub(r"^export DEMO=\S+", f"export DEMO={demo}", block1, count=1, flags=re.M)
    dag_files = sorted(glob.glob(os.path.join(REPO, "pipelines", "airflow", "lpo_*.py")))
    from conftest import SAMPLE_CACHE

    af = RealAirflow(tmp_path / "airflow-home", dag_files,
                     extra_env={"LPO_CACHE_DIR": SAMPLE_CACHE, "DEMO": str(demo),
                                "LPO_AIRFLOW_ROOT": str(tmp_path / "unused-root")})
    with af:
        assert {"lpo_retrain", "lpo_refresh", "lpo_checkpoint_ready", "lpo_model_ready"} <= set(af.dag_ids())
        proc = af.shell(block1)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs = af.wait_runs("lpo_retrain", 2, timeout=900)
        assert [r["run_type"] for r in runs] == ["manual", "manual"], runs  # unpausing started nothing
        assert all(r["logical_date"] is None for r in runs)
        ok = [r for r in runs if r["state"] == "success"]
        bad = [r for r in runs if r["state"] == "failed"]
        assert len(ok) == 1 and len(bad) == 1, (runs, af.tail_logs())
        tasks = af.tasks("lpo_retrain", ok[0]["run_id"])
        assert set(tasks.values()) == {"success"}, tasks
        _check_logs(af, "lpo_retrain", ok[0]["run_id"], tasks)
        failed = af.tasks("lpo_retrain", bad[0]["run_id"])
        assert failed["validate"] == "failed" and failed["publish"] == "upstream_failed", failed

        serving = demo / "serving" / "recsys"
        versions = sorted(os.listdir(serving / "versions"))
        assert len(versions) == 1, versions  # the failed gate published nothing
        assert os.readlink(serving / "current") == f"versions/{versions[0]}"
        assert re.fullmatch(r"\d{14}", versions[0])
        record = json.loads((serving / "current" / "assets.extra" / "lpo_publish.json").read_text())
        assert record["inputs"]["fp32_model"] == str(demo / "training" / "20250102" / "saved_model")
        fp32 = _predict(sample_resource.model_path, sample_resource)
        served = _predict(serving / "current", sample_resource)
        assert np.mean(np.abs(served - fp32)) < 0.02

        proc = af.shell(block2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (ready,) = af.wait_runs("lpo_checkpoint_ready", 1, timeout=300)
        assert ready["state"] == "success", (ready, af.tail_logs())
        (refresh,) = af.wait_runs("lpo_refresh", 1, timeout=900)
        assert refresh["run_type"] == "asset_triggered", refresh
        assert refresh["state"] == "success", (refresh, af.tasks("lpo_refresh", refresh["run_id"]),
                                               af.task_log("lpo_refresh", refresh["run_id"], "find_inputs")[-3000:])
        tasks = af.tasks("lpo_refresh", refresh["run_id"])
        assert set(tasks.values()) == {"success"}, tasks
        _check_logs(af, "lpo_refresh", refresh["run_id"], tasks)
        assert "asset_event" in af.task_log("lpo_refresh", refresh["run_id"], "find_inputs")
        new_versions = sorted(os.listdir(serving / "versions"))
        assert len(new_versions) == 2 and os.readlink(serving / "current") == f"versions/{new_versions[-1]}"
        record = json.loads((serving / "current" / "assets.extra" / "lpo_publish.json").read_text())
        assert record["inputs"]["ckpt_prefix"] == str(demo / "checkpoints" / "run1" / "model.ckpt-100")
        refreshed = _predict(serving / "current", sample_resource)
        assert not np.allclose(refreshed, served)
        assert np.mean(np.abs(refreshed - served)) < 0.05

        # a sharded refresh of the served model, and the export published in TF Serving's layout
        proc = af.shell(block3)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (sharded,) = af.wait_runs("lpo_sharded_refresh", 1, timeout=900)
        assert sharded["state"] == "success", (sharded, af.tasks("lpo_sharded_refresh", sharded["run_id"]))
        tfs_run = af.wait_runs("lpo_retrain", 3, timeout=900)[-1]
        assert tfs_run["state"] == "success", (tfs_run, af.tasks("lpo_retrain", tfs_run["run_id"]))
        (version,) = os.listdir(demo / "serving" / "tfs")
        assert re.fullmatch(r"\d{14}", version) and (demo / "serving" / "tfs" / version / "saved_model.pb").is_file()
        assert np.allclose(_predict(demo / "work" / "sharded" / "refreshed", sample_resource), refreshed, atol=1e-6)
    for proc in af.procs.values():
        assert proc.poll() is not None
