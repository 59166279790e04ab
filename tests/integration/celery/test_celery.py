# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A sharded delivery under a real CeleryExecutor: Redis broker, two Celery workers, one SIGKILLed.

(a) 10,000 objects under one prefix, the DAG's mapped shards spread over two workers; once deliveries are
under way, one worker is killed with SIGKILL (its whole process tree: no ack, no cleanup). The scheduler
sees the dead task instances' heartbeats stop, retries them, the other worker finishes: every object is
on the SFTP server exactly once with S3's bytes, nothing hidden is left over, and the shards' reports
together list every key exactly once. (b) The same DAG over fresh prefixes, with two workers and then with
one: all delivered once both ways; the two throughputs are printed (a measurement, not an assertion).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.celery.celery_deployment import (
    Redis,
    kill_worker,
    running_celery_deployment,
    running_redis,
    worker_component,
)
from tests.integration.deployment.airflow_deployment import Deployment
from testservers.processes import MotoServer, SSHDServer

DAGS = Path(__file__).resolve().parent / "dags"
DAG_ID = "celery_sharded_tmp"
SHARDS = 8
OBJECTS = 10_000
# (b) runs twice; the CI leg keeps it short, a benchmark run sets S3SFTP_CELERY_BENCH_OBJECTS=10000.
BENCH_OBJECTS = int(os.environ.get("S3SFTP_CELERY_BENCH_OBJECTS", "2000"))
WORKERS = {"worker-1": 2, "worker-2": 2}
TERMINAL = ("success", "failed")
HIDDEN = (".s3sftp-part", ".s3sftp-stripe", ".s3sftp-journal", ".s3sftp-old")


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def deployment(sshd: SSHDServer, moto: MotoServer, redis: Redis) -> Iterator[Deployment]:
    started = time.monotonic()
    env = {
        "AIRFLOW__CORE__PARALLELISM": "16",
        "S3SFTP_SHARDS": str(SHARDS),
        # A killed worker's task instances stop heartbeating (every second, [workers]
        # min_heartbeat_interval): the scheduler fails them after 15 s and retries them.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    }
    with running_celery_deployment([*DAGS.glob("*.py")], env, redis, WORKERS) as deployment:
        deployment.wait_for(
            "the sharded DAG parsed",
            lambda: deployment.query("SELECT dag_id FROM dag WHERE dag_id = ? AND is_paused = 0", DAG_ID),
            timeout=180,
        )
        deployment.wait_for("the api-server", lambda: deployment.api("GET", "/monitor/health"))
        print(f"\ncelery deployment ready in {time.monotonic() - started:.1f}s")
        yield deployment


def upload(moto: MotoServer, bucket: str, prefix: str, count: int) -> dict[str, bytes]:
    """Put ``count`` small objects (1-3 KiB, random) under ``prefix`` from 32 threads; return key -> bytes."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=moto.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(max_pool_connections=32),
    )
    objects = {
        f"{prefix}/{i % SHARDS}/obj-{i:05d}.bin": os.urandom(1024 + (i * 7919) % 2048) for i in range(count)
    }
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))
    return objects


def trigger(deployment: Deployment, bucket: str, prefix: str, target: Path) -> str:
    conf = {"bucket": bucket, "prefix": prefix, "target_dir": str(target)}
    run = deployment.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    return str(run["dag_run_id"])


def run_state(deployment: Deployment, run_id: str) -> str | None:
    rows = deployment.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
    return rows[0][0] if rows and rows[0][0] in TERMINAL else None


def task_rows(deployment: Deployment, run_id: str) -> list[tuple[Any, ...]]:
    return deployment.query(
        "SELECT map_index, state, try_number, hostname FROM task_instance WHERE dag_id = ? AND run_id = ?"
        " ORDER BY map_index",
        DAG_ID,
        run_id,
    )


def files_under(target: Path) -> list[Path]:
    return [path for path in target.rglob("*") if path.is_file()]


def owned_dir(sshd: SSHDServer, name: str) -> Path:
    path = sshd.root / name
    path.mkdir()
    os.chown(path, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    return path


def check_delivered_once(target: Path, objects: dict[str, bytes], s3: Any, bucket: str, prefix: str) -> None:
    """Every object exactly once on the server (by name, flat), equal to S3's bytes; nothing else."""
    present = files_under(target)
    names = Counter(path.name for path in present)
    leftovers = [str(path) for path in target.rglob("*") if any(mark in path.name for mark in HIDDEN)]
    assert leftovers == []
    assert [name for name, n in names.items() if n > 1] == []
    expected = {key.rsplit("/", 1)[1]: data for key, data in objects.items()}
    assert set(names) == set(expected), (len(names), len(expected))
    # S3's own view of each object (its ETag is the MD5 of a single-part upload) and the uploaded SHA-256.
    etags: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        etags.update({item["Key"].rsplit("/", 1)[1]: item["ETag"].strip('"') for item in page["Contents"]})
    assert set(etags) == set(expected)
    for path in present:
        data = path.read_bytes()
        assert hashlib.sha256(data).digest() == hashlib.sha256(expected[path.name]).digest(), path
        assert hashlib.md5(data).hexdigest() == etags[path.name], path


def test_a_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    deployment: Deployment, sshd: SSHDServer, moto: MotoServer, s3: Any, bucket: str
) -> None:
    started = time.monotonic()
    prefix = f"big-{uuid.uuid4().hex[:6]}"
    objects = upload(moto, bucket, prefix, OBJECTS)
    uploaded = time.monotonic()
    target = owned_dir(sshd, f"celery-{uuid.uuid4().hex[:8]}")
    run_id = trigger(deployment, bucket, prefix, target)

    victim = "worker-1"

    def under_way() -> bool:
        running_on_victim = [row for row in task_rows(deployment, run_id) if row[1] == "running" and row[3] == victim]
        return bool(running_on_victim) and len(files_under(target)) >= 500

    try:
        deployment.wait_for("deliveries under way on the victim", under_way, timeout=120)
    except AssertionError:
        print(task_rows(deployment, run_id), len(files_under(target)))
        for component in ("scheduler", *WORKERS):
            print(f"--- {component}\n{deployment.log_text(component)[-4000:]}")
        for path in sorted((deployment.home / "logs").rglob("attempt=1.log"))[:1]:
            print(f"--- {path}\n{path.read_text(errors='replace')[-6000:]}")
        raise
    before_kill = task_rows(deployment, run_id)
    delivered_at_kill = len(files_under(target))
    killed = kill_worker(deployment, victim)
    killed_at = time.monotonic()
    print(f"\nkilled {victim} ({len(killed)} processes) with {delivered_at_kill} files delivered: {before_kill}")

    state = deployment.wait_for("the run to finish", lambda: run_state(deployment, run_id), timeout=240)
    finished = time.monotonic()
    rows = task_rows(deployment, run_id)
    assert state == "success", rows
    # The victim's shards were retried on the survivor; every shard ended on it or finished before the kill.
    lost = {row[0] for row in before_kill if row[1] == "running" and row[3] == victim}
    assert lost
    for map_index, row_state, try_number, hostname in rows:
        assert row_state == "success"
        if map_index in lost:
            assert try_number >= 2 and hostname == "worker-2", rows
    check_delivered_once(target, objects, s3, bucket, prefix)
    print(
        f"(a) {OBJECTS} objects, {SHARDS} shards: upload {uploaded - started:.1f}s, delivery "
        f"{finished - uploaded:.1f}s ({OBJECTS / (finished - uploaded):.0f} files/s), "
        f"{finished - killed_at:.1f}s from the kill to the end; tries {[(r[0], r[2], r[3]) for r in rows]}"
    )
