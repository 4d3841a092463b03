"""Run one Airflow DAG with ``dag.test()`` and print the outcome as JSON (last stdout line).

Used by tests/test_airflow.py in a subprocess, so that Airflow's global state
(settings, ORM engine, AIRFLOW_HOME) never leaks into the pytest process. The
caller sets AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER and a migrated SQLite DB.

Usage: python airflow_dag_runner.py run DAG_FILE DAG_ID CONF_JSON [LOGICAL_DATE]
       python airflow_dag_runner.py describe DAG_FILE...  (every DAG: schedule, tasks, outlets, params)
Without LOGICAL_DATE the run has none, like a manual ``airflow dags trigger``.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys


def load_dags(path: str) -> dict:
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location("lpo_test_dag_" + str(abs(hash(path))), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {d.dag_id: d for d in vars(mod).values() if isinstance(d, DAG)}


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    dags = {}
    for p in (argv[1:] if mode == "describe" else [path]):
        dags.update(load_dags(p))
    if mode == "describe":
        out = {}
        for dag_id, dag in sorted(dags.items()):
            out[dag_id] = {
                "schedule": repr(dag.schedule) if not isinstance(dag.schedule, (list, tuple)) else None,
                "schedule_assets": [a.name for a in (dag.schedule if isinstance(dag.schedule, (list, tuple)) else [])],
                "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "type": type(t).__name__,
                                      "outlets": [getattr(o, "name", str(o)) for o in t.outlets]}
                          for t in dag.tasks},
                "params": {k: {"default": p.value if p.has_value else None, "description": p.description or ""}
                           for k, p in dag.params.items()},
            }
        print(json.dumps(out, default=str))
        return 0
    dag_id, conf = argv[2], json.loads(argv[3])
    dag = dags.get(dag_id)
    if dag is None:
        print(json.dumps({"dag": None}))
        return 0
    kwargs = {"run_conf": conf}
    if len(argv) > 4:
        kwargs["logical_date"] = dt.datetime.fromisoformat(argv[4]).replace(tzinfo=dt.timezone.utc)
    run = dag.test(**kwargs)
    tis = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    xcoms = {}
    for ti in run.get_task_instances():
        try:
            xcoms[ti.task_id] = ti.xcom_pull(task_ids=ti.task_id)
        except Exception as e:  # noqa: BLE001 - report, don't fail the runner
            xcoms[ti.task_id] = f"<xcom error {type(e).__name__}: {e}>"
    print(json.dumps({"dag": dag.dag_id, "state": str(run.state), "tasks": tis, "xcom": xcoms,
                      "logical_date": str(run.logical_date)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
