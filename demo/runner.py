# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Run ``airflow`` CLI commands in a throwaway AIRFLOW_HOME and read a DAG run's outcome back."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Inherited settings that would point the throwaway Airflow at another database or test configuration.
_HERMETIC_DROP = ("AIRFLOW__CORE__UNIT_TEST_MODE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONFIG")

# What the delivery DAG's ``report`` task logs; the fallback when the metadata DB cannot be read.
_REPORT_LINE = re.compile(
    r"Delivered (?P<s3_uri>\S+) -> (?P<sftp_path>\S+): (?P<size>\d+) bytes in (?P<seconds>[\d.]+)s "
    r"\((?P<mb_per_s>[\d.]+) MB/s\), (?P<checksum>\S+), confirmed on the server: (?P<verified>True|False)"
)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exceeded|Timeout)\w*: \S")


class AirflowCommandError(RuntimeError):
    """An ``airflow`` command failed or timed out; ``log_path`` holds its output."""

    def __init__(self, message: str, log_path: Path | None) -> None:
        super().__init__(message)
        self.log_path = log_path


@dataclass
class RunOutcome:
    """The state of one DAG run, its tasks, and their ``return_value`` XComs."""

    dag_id: str
    run_id: str | None
    state: str | None
    task_states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)
    source: str = "metadata DB"


def airflow_env(
    airflow_home: Path,
    dags_folder: Path,
    *,
    base: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Return the environment of an Airflow subprocess that uses ``airflow_home`` and nothing else."""
    env = dict(os.environ if base is None else base)
    for name in _HERMETIC_DROP:
        env.pop(name, None)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class AirflowCLI:
    """
    Run ``python -m airflow ...`` with this interpreter, each command in its own process group.

    Output goes to ``log_path`` (or to the terminal when it is None). A command that outlives its
    timeout, or an interrupted one, has its whole process group terminated, so nothing is left running.
    """

    def __init__(self, env: dict[str, str], log_path: Path | None) -> None:
        self.env = env
        self.log_path = log_path
        self.process_groups: list[int] = []

    def run(self, *args: str, timeout: float) -> float:
        """Run ``airflow <args>`` and return its duration; raise ``AirflowCommandError`` if it fails."""
        command = [sys.executable, "-m", "airflow", *args]
        log: IO[bytes] | None = None
        if self.log_path is not None:
            log = self.log_path.open("ab")
            log.write(f"\n$ airflow {' '.join(args)}\n".encode())
            log.flush()
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                command,
                process_group=0,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
            )
            self.process_groups.append(process.pid)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AirflowCommandError(
                    f"`airflow {' '.join(args[:2])}` did not finish within {timeout:.0f}s", self.log_path
                ) from None
            finally:
                # Also on timeout and Ctrl-C: the command and anything it started go away with it.
                terminate_group(process)
        finally:
            if log is not None:
                log.close()
        if returncode != 0:
            raise AirflowCommandError(
                f"`airflow {' '.join(args[:2])}` exited with status {returncode}", self.log_path
            )
        return time.monotonic() - started


def terminate_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate ``process`` and every process left in its process group."""
    pgid = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
    # Orphans the command left behind (re-parented, still in its group).
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Return the ids of live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) != pgid:
                continue
            status = (entry / "stat").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        # /proc/<pid>/stat: "pid (comm) state ...", comm may contain spaces.
        if status.rsplit(")", 1)[-1].split()[0] != "Z":
            members.append(pid)
    if not Path("/proc").is_dir():  # pragma: no cover - macOS: ask the kernel by signal 0
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, 0)
            members.append(pgid)
    return members


def child_processes() -> list[str]:
    """Return a description of every live descendant of this process."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - psutil comes with the test extra
        return []
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
    return found


def failure_cause(log_path: Path | None) -> str | None:
    """Return the last exception line (``SomeError: message``) of a task in the Airflow log, if any."""
    if log_path is None or not log_path.exists():
        return None
    cause = None
    for line in log_path.read_text(errors="replace").splitlines():
        if _EXCEPTION_LINE.match(line):
            cause = line.strip()
    return cause


def read_outcome(airflow_home: Path, dag_id: str, log_path: Path | None) -> RunOutcome:
    """Return the latest run of ``dag_id`` from the SQLite metadata DB, else what its log says."""
    database = airflow_home / "airflow.db"
    try:
        return _read_db(database, dag_id)
    except (sqlite3.Error, json.JSONDecodeError, LookupError):
        if log_path is None or not log_path.exists():
            raise
    return _read_log(log_path, dag_id)


def _read_db(database: Path, dag_id: str) -> RunOutcome:
    if not database.exists():
        raise LookupError(f"No metadata DB at {database}")
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        if row is None:
            raise LookupError(f"No run of {dag_id} in {database}")
        run_id, state = row
        task_states = dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
            ).fetchall()
        )
        xcoms = {
            task_id: json.loads(value) if isinstance(value, (str, bytes)) else value
            for task_id, value in db.execute(
                "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
                (dag_id, run_id),
            ).fetchall()
        }
    return RunOutcome(dag_id=dag_id, run_id=run_id, state=state, task_states=task_states, xcoms=xcoms)


def _read_log(log_path: Path, dag_id: str) -> RunOutcome:
    text = log_path.read_text(errors="replace")
    state = None
    for match in re.finditer(rf"DagRun Finished: dag_id={re.escape(dag_id)},.*?state=(\w+)", text):
        state = match.group(1)
    outcome = RunOutcome(dag_id=dag_id, run_id=None, state=state, source="task log")
    report = None
    for report in _REPORT_LINE.finditer(text):  # noqa: B007 - keep the last one
        pass
    if report is not None:
        outcome.xcoms["report"] = {
            "s3_uri": report["s3_uri"],
            "sftp_path": report["sftp_path"],
            "size": int(report["size"]),
            "seconds": float(report["seconds"]),
            "mb_per_s": float(report["mb_per_s"]),
            "checksum": report["checksum"],
            "sensor_checksum": report["checksum"] if report["verified"] == "True" else None,
            "checksum_verified": report["verified"] == "True",
        }
    return outcome
