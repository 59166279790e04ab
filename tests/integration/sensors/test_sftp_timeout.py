# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The sensor's timeout names the path, what it saw last and why that was not complete, and the time waited."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from tests.integration.sensors.test_sftp import (  # noqa: F401 (airflow_db is a fixture)
    NO_CONTEXT,
    airflow_db,
    make_sensor,
    run_trigger,
    write_file,
)


def waited_seconds(message: str) -> float:
    match = re.search(r"was not complete after ([\d.]+) s", message)
    assert match, message
    return float(match.group(1))


def mtime_text(path: Path) -> str:
    return datetime.datetime.fromtimestamp(int(os.stat(path).st_mtime), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


@pytest.mark.parametrize("soft_fail", [False, True], ids=["fails", "soft-fail-skips"])
def test_poke_mode_timeout_names_path_last_size_mtime_and_reason(remote_dir: Path, soft_fail: bool) -> None:
    target = remote_dir / "short.bin"
    write_file(target, b"z" * 10)

    expected = AirflowSkipException if soft_fail else AirflowSensorTimeout
    with pytest.raises(expected) as raised:
        # stable_for=0: the one reason left is the size, whatever the machine's load does to the polls
        make_sensor(target, timeout=1.5, expected_size=11, soft_fail=soft_fail, stable_for=0).execute(
            NO_CONTEXT
        )

    message = str(raised.value)
    assert str(target) in message
    assert f"last seen 10 bytes with mtime {mtime_text(target)}" in message
    assert "not complete because size 10 has not reached expected_size 11" in message
    assert waited_seconds(message) >= 1.5
    assert ", timeout 1.5 s, " in message


def test_poke_mode_timeout_of_a_missing_file_says_so(remote_dir: Path) -> None:
    target = remote_dir / "never.bin"
    with pytest.raises(AirflowSensorTimeout) as raised:
        make_sensor(target, timeout=1.0).execute(NO_CONTEXT)

    message = str(raised.value)
    assert "no such file at the last poll" in message
    assert f"{target} does not exist" in message
    assert waited_seconds(message) >= 1.0


@pytest.mark.parametrize("soft_fail", [False, True], ids=["fails", "soft-fail-skips"])
def test_deferrable_timeout_comes_from_the_trigger_with_the_last_observation(
    remote_dir: Path, soft_fail: bool
) -> None:
    target = remote_dir / "growing.bin"
    write_file(target, b"y" * 10)
    sensor = make_sensor(target, timeout=1.5, expected_size=20, deferrable=True, soft_fail=soft_fail)

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(NO_CONTEXT)
    trigger: Any = deferred.value.trigger
    assert trigger.serialize()[1]["timeout"] == 1.5
    assert trigger.serialize()[1]["started_at"].endswith("+00:00")
    # It grows while deferred but never reaches expected_size: the message shows what the trigger saw.
    with target.open("ab") as more:
        more.write(b"y" * 5)

    events = run_trigger(trigger)

    assert len(events) == 1 and events[0]["status"] == "timeout", events
    expected = AirflowSkipException if soft_fail else AirflowSensorTimeout
    with pytest.raises(expected) as raised:
        # As Airflow resumes it: its sensor base would turn any error into a generic soft_fail skip.
        sensor.resume_execution("execute_complete", {"event": events[0]}, NO_CONTEXT)
    message = str(raised.value)
    assert str(target) in message
    assert f"last seen 15 bytes with mtime {mtime_text(target)}" in message
    # Growing restarted the stable window: the reason is that window, or the size once it has passed.
    assert re.search(
        r"not complete because size 15(, mtime \d+ unchanged for| has not reached expected_size 20)", message
    )
    assert waited_seconds(message) >= 1.5


DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False) as dag:
    SFTPFileStableSensor(
        task_id="wait",
        path={path!r},
        stable_for=0,
        poke_interval=0.2,
        timeout=2.5,
        mode={mode!r},
        deferrable={deferrable!r},
        expected_size=11,
    )
"""


@pytest.mark.parametrize(
    ("mode", "deferrable"), [("reschedule", False), ("poke", True)], ids=["reschedule", "deferrable"]
)
def test_timeout_through_the_task_runner_names_the_last_observation(
    mode: str,
    deferrable: bool,
    remote_dir: Path,
    airflow_db: Path,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import importlib.util
    import time

    pytest.importorskip("airflow.models.task_state_store", reason="reschedule mode needs Airflow 3.3+")
    target = remote_dir / "rescheduled_short.bin"
    write_file(target, b"r" * 10)
    dag_id = f"timeout_{time.monotonic_ns()}"
    dag_file = airflow_db / f"{dag_id}.py"
    dag_file.write_text(DAG_FILE.format(dag_id=dag_id, path=str(target), mode=mode, deferrable=deferrable))
    spec = importlib.util.spec_from_file_location(dag_id, dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    dag_run = module.dag.test()

    assert dag_run.state == "failed"
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "AirflowSensorTimeout" in text
    match = re.search(r"SFTP file \S+rescheduled_short\.bin was not complete after [^\n]*", text)
    assert match, text[-3000:]
    message = match.group(0)
    assert f"last seen 10 bytes with mtime {mtime_text(target)}" in message
    assert "not complete because size 10 has not reached expected_size 11" in message
    assert waited_seconds(message) >= 2.5


def test_trigger_checks_its_timeout_arguments() -> None:
    from airflow_s3sftp.core import stability
    from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger

    policy = stability.Policy.build(target="sftp://h:22/in/a", stable_for=1, checksum=None).to_dict()
    assert SFTPFileStableTrigger(path="/in/a", policy=policy, timeout=0).timeout == 0  # Airflow allows 0
    with pytest.raises(ValueError, match="timeout must be at least 0"):
        SFTPFileStableTrigger(path="/in/a", policy=policy, timeout=-1)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        SFTPFileStableTrigger(path="/in/a", policy=policy, timeout=float("inf"))
    with pytest.raises(ValueError, match="started_at must be an ISO 8601 UTC time, got 'yesterday'"):
        SFTPFileStableTrigger(path="/in/a", policy=policy, started_at="yesterday")
    with pytest.raises(ValueError, match="started_at"):
        SFTPFileStableTrigger(path="/in/a", policy=policy, started_at="2026-12-06T14:00:00")  # no zone
