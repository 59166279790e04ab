# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The smoke leg of every Airflow minor: deliver one object, sense it (poke, deferrable), run an example DAG."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.version_compat import AIRFLOW_VERSION

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "example_dags"
NO_CONTEXT: Any = {}


def test_deliver_one_object_then_sense_it_by_poke_and_deferred(s3, bucket, remote_dir):
    data = os.urandom(2 * 1024 * 1024 + 7)
    s3.put_object(Bucket=bucket, Key="smoke/one.bin", Body=data)
    target = str(remote_dir / "one.bin")
    result = S3ToSFTPStreamOperator(
        task_id="deliver", s3_bucket=bucket, s3_key="smoke/one.bin", sftp_path=target
    ).execute(context=NO_CONTEXT)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert (remote_dir / "one.bin").read_bytes() == data
    assert result["checksum"] == digest

    common: dict[str, Any] = {"path": target, "stable_for": 0.3, "poke_interval": 0.1, "timeout": 30}
    poked = SFTPFileStableSensor(task_id="poke", deferrable=False, **common).execute(NO_CONTEXT)
    assert poked["checksum"] == digest

    sensor = SFTPFileStableSensor(task_id="deferred", deferrable=True, **common)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(NO_CONTEXT)

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in deferred.value.trigger.run()]

    events = asyncio.run(collect())
    assert len(events) == 1
    assert sensor.execute_complete(NO_CONTEXT, events[0])["checksum"] == digest


def test_airflow_dags_test_runs_the_delivery_example(s3, bucket, remote_dir):
    """``airflow dags test`` of example_s3_to_sftp_delivery in a fresh AIRFLOW_HOME, on this Airflow."""
    data = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="daily/2024-01-01/export.csv.gz", Body=data)
    home = Path(tempfile.mkdtemp(prefix="s3sftp-smoke-home-"))
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(EXAMPLE_DAGS / "example_s3_to_sftp_delivery.py", dags)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "S3SFTP_DELIVERY_BUCKET": bucket,
        "S3SFTP_DELIVERY_TARGET_DIR": str(remote_dir),
        "S3SFTP_DELIVERY_RETRIES": "0",
        "S3SFTP_STABLE_FOR_SECONDS": "0.5",
        "S3SFTP_POKE_INTERVAL_SECONDS": "0.2",
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    airflow = [sys.executable, "-m", "airflow"]
    try:
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        # Airflow 3.0 finds a DAG for `dags test` only once the DAG processor has stored it.
        subprocess.run(
            [*airflow, "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=300
        )
        run = subprocess.run(
            [*airflow, "dags", "test", "example_s3_to_sftp_delivery", "2024-01-01"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, f"airflow {AIRFLOW_VERSION} dags test failed:\n{output[-4000:]}"
        assert (remote_dir / "export.csv.gz").read_bytes() == data
    finally:
        shutil.rmtree(home, ignore_errors=True)
