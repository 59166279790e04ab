# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The sharded example DAG under ``dag.test()``: every object once, one report per shard, a rerun skips all.

The same DAG runs under a real CeleryExecutor with a worker killed mid-run in tests/integration/celery.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.example_dags.test_example_dags import load_dag
from tests.integration.example_dags.test_example_dags_many import run, tree

DAG_ID = "example_s3_to_sftp_sharded"
SHARDS = 4


@pytest.fixture
def sharded_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four shards, no retries (read when the DAG file is parsed)."""
    monkeypatch.setenv("S3SFTP_SHARDS", str(SHARDS))
    monkeypatch.setenv("S3SFTP_DELIVERY_RETRIES", "0")


def test_sharded_dag_delivers_every_object_once_and_reports_each_shard(
    dags_folder: Path, sharded_env: None, s3: Any, bucket: str, remote_dir: Path
) -> None:
    objects = {
        f"archive/{'deep/' if i % 5 == 0 else ''}obj-{i:03d}.bin": os.urandom(100 + i) for i in range(40)
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    dag = load_dag(dags_folder, DAG_ID)
    assert dag.get_task("deliver").max_active_tis_per_dagrun == 4
    conf = {
        "bucket": bucket,
        "prefix": "archive",
        "target_dir": str(remote_dir),
        "report_bucket": bucket,
        "report_prefix": "reports",
    }

    dag_run, xcoms = run(dag, conf)

    assert dag_run.state == "success"
    shards = xcoms[("shards", -1)]
    assert len(shards) == SHARDS
    assert tree(remote_dir) == {key.removeprefix("archive/"): data for key, data in objects.items()}
    listed: Counter[str] = Counter()
    for index in range(SHARDS):
        body = s3.get_object(Bucket=bucket, Key=f"reports/{dag_run.run_id}/shard-{index}.jsonl")[
            "Body"
        ].read()
        records = [json.loads(line) for line in body.decode().splitlines()]
        assert records, f"shard {index} reported nothing"
        for record in records:
            key = record["s3_uri"].removeprefix(f"s3://{bucket}/")
            assert record["checksum"] == "sha256:" + hashlib.sha256(objects[key]).hexdigest()
            listed[key] += 1
        summary = xcoms[("deliver", index)]
        assert summary["count"] == len(records) and summary["failed_count"] == 0
    assert listed == Counter(dict.fromkeys(objects, 1))
    totals = xcoms[("summarize", -1)]
    assert totals["count"] == totals["transferred"] == len(objects) and totals["skipped"] == 0

    # A rerun sends nothing: every file is already there, byte for byte.
    rerun, again = run(dag, conf)
    assert rerun.state == "success"
    totals = again[("summarize", -1)]
    assert totals["count"] == totals["skipped"] == len(objects) and totals["transferred"] == 0
    assert tree(remote_dir) == {key.removeprefix("archive/"): data for key, data in objects.items()}
