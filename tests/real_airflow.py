"""A real Airflow 3 (api-server + scheduler + dag-processor, LocalExecutor, SQLite) for tests.

Everything lives in one temporary ``AIRFLOW_HOME``; every port is a free loopback port;
each component is started in its own process group and stopped by that group's id
(SIGTERM, then SIGKILL), also when the test fails. Used by tests/test_airflow_scheduler.py.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

BIN = os.path.dirname(sys.executable)
AIRFLOW = os.path.join(BIN, "airflow")
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealAirflow:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, home: Path, dag_files: list[str], extra_env: Optional[dict] = None):
        self.home = Path(home)
        self.dags = self.home / "dags"
        self.dag_files = dag_files
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.db = self.home / "airflow.db"
        self.env = dict(
            os.environ,
            PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="2",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.db}",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.port}/execution/",
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(free_port()),
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="10",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            **(extra_env or {}),
        )
        self.env.pop("AIRFLOW_CONFIG", None)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 240) -> "RealAirflow":
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags.mkdir(exist_ok=True)
        for f in self.dag_files:
            (self.dags / os.path.basename(f)).write_bytes(Path(f).read_bytes())
        self.cli("db", "migrate", timeout=300)
        logs = self.home / "component-logs"
        logs.mkdir(exist_ok=True)
        for name in COMPONENTS:
            out = open(logs / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen([AIRFLOW, name], env=self.env, cwd=self.home, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self._port_open() and self.dag_ids():
                return self
            time.sleep(2)
        raise TimeoutError(f"Airflow did not come up in {timeout}s\n{self.tail_logs()}")

    def stop(self) -> None:
        """Stop every component by its process group id: SIGTERM, then SIGKILL after 30 s."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: task and worker children too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def __enter__(self) -> "RealAirflow":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}\n{self.tail_logs()}")

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def tail_logs(self, n: int = 4000) -> str:
        out = []
        for p in sorted((self.home / "component-logs").glob("*.log")):
            out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    # ------------------------------------------------------------------ commands and state
    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        return proc

    def shell(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a bash script with this Airflow's environment (``airflow`` and ``lpo`` on PATH)."""
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)

    def query(self, sql: str, *params) -> list:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)) as con:
            return con.execute(sql, params).fetchall()

    def dag_ids(self) -> list[str]:
        try:
            return [r[0] for r in self.query("SELECT dag_id FROM dag")]
        except sqlite3.Error:
            return []

    def runs(self, dag_id: str) -> list[dict]:
        rows = self.query("SELECT run_id, state, run_type, logical_date FROM dag_run WHERE dag_id = ? "
                          "ORDER BY id", dag_id)
        return [dict(zip(("run_id", "state", "run_type", "logical_date"), r)) for r in rows]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = self.query("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                          dag_id, run_id)
        return {t: s for t, s in rows}

    def wait_runs(self, dag_id: str, count: int, timeout: float = 600) -> list[dict]:
        """Wait until ``dag_id`` has ``count`` runs, all finished; return them (oldest first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.runs(dag_id)
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(3)
        raise TimeoutError(f"{dag_id}: runs {self.runs(dag_id)} not finished in {timeout}s\n{self.tail_logs()}")

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(base.rglob("*.log"))) if base.exists() else ""
