"""Run one Airflow DAG file with ``dag.test()`` and print the outcome as JSON (last stdout line).

Used by tests/test_airflow.py in a subprocess, so that Airflow's global state
(settings, ORM engine, AIRFLOW_HOME) never leaks into the pytest process. The
caller sets AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER and a migrated SQLite DB.

Usage: python airflow_dag_runner.py DAG_FILE LOGICAL_DATE CONF_JSON
       python airflow_dag_runner.py --render DAG_FILE LOGICAL_DATE CONF_JSON TASK_ID
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys


def load_dag(path: str):
    spec = importlib.util.spec_from_file_location("lpo_test_dag_" + str(abs(hash(path))), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, "dag", None)


def main(argv: list[str]) -> int:
    render = argv[0] == "--render"
    if render:
        argv = argv[1:]
    path, date, conf = argv[0], argv[1], json.loads(argv[2])
    logical = dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)
    dag = load_dag(path)
    if dag is None:
        print(json.dumps({"dag": None}))
        return 0
    if render:
        # Render one task's template fields outside a run, with a hand-made context.
        task = dag.get_task(argv[3])
        params = {k: dag.params[k] for k in dag.params}  # resolved values, not Param objects
        params.update(conf)
        ts_nodash = logical.strftime("%Y%m%dT%H%M%S")
        ctx = {"ds": logical.strftime("%Y-%m-%d"), "ds_nodash": logical.strftime("%Y%m%d"),
               "ts_nodash": ts_nodash, "run_id": f"manual__{logical.isoformat()}", "params": params,
               "var": {"value": _Vars()}, "ti": _TI(), "dag": dag, "task": task}
        task.render_template_fields(ctx)
        print(json.dumps({f: getattr(task, f) for f in task.template_fields}, default=str))
        return 0
    run = dag.test(logical_date=logical, run_conf=conf)
    tis = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    xcoms = {}
    for ti in run.get_task_instances():
        try:
            xcoms[ti.task_id] = ti.xcom_pull(task_ids=ti.task_id)
        except Exception as e:  # noqa: BLE001 - report, don't fail the runner
            xcoms[ti.task_id] = f"<xcom error {type(e).__name__}: {e}>"
    print(json.dumps({"dag": dag.dag_id, "state": str(run.state), "tasks": tis, "xcom": xcoms},
                     default=str))
    return 0


class _TI:
    """Stands in for the task instance: ``xcom_pull`` returns ``xcom:<task>.<key>`` strings."""

    def xcom_pull(self, task_ids=None, key="return_value", **_):
        return _XCom(task_ids)


class _XCom:
    def __init__(self, task_ids):
        self.task_ids = task_ids

    def __getitem__(self, key):
        return f"xcom:{self.task_ids}.{key}"


class _Vars:
    def get(self, key, default=None):
        return default


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
