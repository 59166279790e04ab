# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A real Airflow deployment: api-server, scheduler, dag-processor and triggerer processes, LocalExecutor.

:func:`running_deployment` gives each user its own AIRFLOW_HOME, sqlite database and DAGs folder, the
tests' connections (``AIRFLOW_CONN_*``) and a ``PYTHONPATH`` that imports this checkout. Every process
runs in its own session and is killed at exit, with its children.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from testservers.processes import free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]
AIRFLOW = Path(sys.executable).with_name("airflow")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class Deployment:
    """A running deployment and the means to watch it: its database, its logs, its REST API."""

    home: Path
    dags: Path
    env: dict[str, str]
    api_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # More components than the four (e.g. Celery workers): name -> (airflow arguments, extra environment).
    extra_components: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    _token: str | None = None

    @property
    def database(self) -> Path:
        return self.home / "airflow.db"

    @property
    def logs(self) -> Path:
        return self.home / "processes"

    def start(self, component: str) -> None:
        """Start one component in its own session, its output in ``processes/<component>.log``."""
        args, env = self.extra_components.get(component, ([], {}))
        args = (
            args
            or {
                "api-server": [
                    "api-server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.api_port),
                    "--workers",
                    "1",
                ],
                "scheduler": ["scheduler"],
                "dag-processor": ["dag-processor"],
                "triggerer": ["triggerer"],
            }[component]
        )
        self.logs.mkdir(exist_ok=True)
        with (self.logs / f"{component}.log").open("ab") as out:
            self.processes[component] = subprocess.Popen(
                [str(AIRFLOW), *args],
                env={**self.env, **env},
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, component: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
        """Send ``sig`` to the component, wait for it, then kill whatever is left of its session."""
        process = self.processes.pop(component)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every component, then kill any process still running with this AIRFLOW_HOME."""
        for component in list(self.processes):
            self.stop(component)
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("AIRFLOW_HOME") == str(self.home):
                    process.kill()

    def alive(self) -> None:
        """Fail with the component's log tail when one of them exited."""
        for component, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.logs / f"{component}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{component} exited with {process.returncode}:\n{tail}")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query on the metadata database."""
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 90) -> T:
        """Return the first truthy ``probe()``, polling every half second; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            # The scheduler may hold the database's write lock; the api-server may not listen yet.
            with contextlib.suppress(sqlite3.OperationalError, OSError):
                value = probe()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.5)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the REST API (``/api/v2``) as the anonymous admin of the simple auth manager."""
        if self._token is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/auth/token", timeout=30) as reply:
                self._token = json.load(reply)["access_token"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id=? AND run_id=? AND task_id=? AND key='return_value'",
            dag_id,
            run_id,
            task_id,
        )
        return json.loads(rows[0][0]) if rows else None

    def log_text(self, component: str) -> str:
        return (self.logs / f"{component}.log").read_text(errors="replace")


def _environment(home: Path, dags: Path, api_port: int, extra: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # The test session's own Airflow settings (unit-test mode, its home) are not the deployment's.
        if not name.startswith("AIRFLOW__") and name not in ("AIRFLOW_HOME", "PYTHONPATH")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "PYTHONPATH": str(REPO),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # A watcher is registered only while its DAG is unpaused.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # Every component must sign and accept the same tokens, and workers must find the API.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # The defaults (8793/8794) collide with any other deployment on the machine.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # A deferred task whose trigger fires fast must not be failed before its worker saw the deferral.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            # A restarted triggerer takes over the watchers of one that stopped sooner than the default 30 s.
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def running_deployment(
    dag_files: list[Path],
    extra_env: dict[str, str],
    extra_components: dict[str, tuple[list[str], dict[str, str]]] | None = None,
) -> Iterator[Deployment]:
    """Migrate a fresh database, deploy ``dag_files``, start all four components and the
    ``extra_components`` (name -> airflow arguments and extra environment); stop them all after."""
    home = Path(tempfile.mkdtemp(prefix="s3sftp-deployment-"))
    dags = home / "dags"
    dags.mkdir()
    for source in dag_files:
        shutil.copy(source, dags / source.name)
    api_port = free_port()
    deployment = Deployment(
        home=home,
        dags=dags,
        env=_environment(home, dags, api_port, extra_env),
        api_port=api_port,
        extra_components=dict(extra_components or {}),
    )
    try:
        subprocess.run(
            [str(AIRFLOW), "db", "migrate"],
            env=deployment.env,
            cwd=home,
            check=True,
            capture_output=True,
            timeout=300,
        )
        for component in (*COMPONENTS, *deployment.extra_components):
            deployment.start(component)
        yield deployment
    finally:
        deployment.stop_all()
        shutil.rmtree(home, ignore_errors=True)
