# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Daily folder delivery: every CSV under the day's S3 prefix to the partner's SFTP inbox, in one task.

Three steps:

1. ``deliver`` lists ``s3://<bucket>/<prefix>/<ds>/``, keeps the keys ending in ``.csv`` (nested ones
   too) and streams them to ``<target_dir>/<ds>/`` with
   :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator`, up to four at once, each keeping
   its path below the prefix. Every file is published atomically (temp name, verify, rename), then gets
   a ``<name>.sha256`` sidecar (``sha256sum -c`` format) and last an empty ``<name>.done`` marker, so
   the partner can pick up a file as soon as its marker appears.
2. ``confirm`` waits, with one :class:`~airflow_s3sftp.sensors.sftp.SFTPFileStableSensor` per
   delivered file (dynamic task mapping over the records of ``deliver``'s report: the JSON Lines object
   ``report=`` names, one record per object, giving the ``sftp_path`` and the ``checksum`` computed
   while streaming; the XCom itself holds only counts), until the file on the server reads back to that
   checksum. Each file gets its own task instance, log and state; mapping is capped by
   ``[core] max_map_length`` (1024 by default): for larger prefixes see the sharded example.
3. ``summarize`` logs and returns how many objects were found, transferred and skipped, the bytes sent
   and where each file landed.

Re-running a day is cheap and safe: ``if_exists="skip_identical"`` skips every file the server already
holds byte for byte (proved from the sidecar against S3's own checksum without reading anything when S3
has a SHA-256 for the object, otherwise by reading the remote file back), so a retry after a partial
failure only sends what is missing or different. If some objects fail, the others are still delivered
and the task fails listing the failures.

Bucket, prefix and target directory are Params (override them per run with
``airflow dags test ... --conf '{"bucket": "..."}'`` or in the trigger form); their defaults come from
``S3SFTP_EXPORTS_*`` environment variables. The connections default to ``aws_default`` and
``sftp_default`` (``S3SFTP_AWS_CONN_ID`` / ``S3SFTP_SFTP_CONN_ID`` override them).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor

log = logging.getLogger(__name__)

AWS_CONN_ID = os.environ.get("S3SFTP_AWS_CONN_ID", "aws_default")
SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
# Matched against the path below the prefix. "**" crosses "/", so this takes top-level and nested CSVs
# ("**/*.csv" matches the same: its "**/" may also be empty). Not templated, hence not a Param.
GLOB = os.environ.get("S3SFTP_EXPORTS_GLOB", "**.csv")
# A retry re-sends only what is not already there, thanks to skip_identical; tests set 0 to fail fast.
RETRIES = int(os.environ.get("S3SFTP_DELIVERY_RETRIES", "2"))
# How long each file must stay unchanged before the sensor reads it back; demos and tests shorten them.
STABLE_FOR_SECONDS = float(os.environ.get("S3SFTP_STABLE_FOR_SECONDS", "30"))
POKE_INTERVAL_SECONDS = float(os.environ.get("S3SFTP_POKE_INTERVAL_SECONDS", "10"))

with DAG(
    dag_id="example_s3_to_sftp_prefix",
    description="Deliver every CSV of the day's S3 prefix to the partner's SFTP inbox, idempotently",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": pendulum.duration(minutes=5)},
    params={
        "bucket": Param(
            os.environ.get("S3SFTP_EXPORTS_BUCKET", "partner-exports"),
            type="string",
            minLength=3,
            description="S3 bucket holding the daily exports",
        ),
        "prefix": Param(
            os.environ.get("S3SFTP_EXPORTS_PREFIX", "exports"),
            type="string",
            pattern=r"^[^/](.*[^/])?$",
            description="Key prefix, no leading or trailing '/'; the day's objects are under <prefix>/<ds>/",
        ),
        "target_dir": Param(
            os.environ.get("S3SFTP_EXPORTS_TARGET_DIR", "/inbound/partner/exports"),
            type="string",
            pattern=r"^/",
            description="Absolute directory on the partner's SFTP server; a day goes to <target_dir>/<ds>/",
        ),
    },
    tags=["example", "s3", "sftp", "delivery"],
    doc_md=__doc__,
) as dag:
    # One task, many objects: the objects share this worker's process and up to max_concurrency SSH
    # connections. That is the right shape up to a few hundred files a run; for more, or when one
    # worker's bandwidth is the limit, see example_s3_to_sftp_mapped.py.
    deliver = S3ToSFTPStreamOperator(
        task_id="deliver",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.prefix }}/{{ ds }}/",
        s3_glob=GLOB,
        sftp_path="{{ params.target_dir }}/{{ ds }}/",
        create_dirs=True,  # one new directory per day, plus the key tree below the prefix
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        max_concurrency=4,
        if_exists="skip_identical",
        checksum="sha256",
        sidecar=True,
        done_marker=".done",
        # Every object's record, one JSON line each, written as the task goes (the XCom keeps counts).
        report="s3://{{ params.bucket }}/reports/{{ dag.dag_id }}/{{ run_id }}.jsonl",
    )

    def delivered_records(delivered: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the records of the delivered (or identical, skipped) objects from the task's report."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, key = delivered["report"][len("s3://") :].partition("/")
        lines = S3Hook(aws_conn_id=AWS_CONN_ID).read_key(key, bucket).splitlines()
        return [record for record in map(json.loads, lines) if "error" not in record]

    @task
    def files_to_confirm(delivered: dict[str, Any]) -> list[dict[str, str]]:
        """Return one sensor's arguments per delivered (or identical, skipped) file."""
        return [
            {"path": record["sftp_path"], "expected_checksum": record["checksum"]}
            for record in delivered_records(delivered)
        ]

    # One sensor per file, each proving that the published file reads back to the checksum the delivery
    # computed. (The sidecar route works too: expected_checksum_from="sidecar" with just the paths.)
    confirm = SFTPFileStableSensor.partial(
        task_id="confirm",
        sftp_conn_id=SFTP_CONN_ID,
        stable_for=STABLE_FOR_SECONDS,
        poke_interval=POKE_INTERVAL_SECONDS,
        timeout=60 * 60,
        deferrable=True,
    ).expand_kwargs(files_to_confirm(deliver.output))

    @task
    def summarize(delivered: dict[str, Any]) -> dict[str, Any]:
        """Log and return the totals of the delivery, and where each file landed."""
        summary = {
            "count": delivered["count"],
            "transferred": delivered["transferred"],
            "skipped": delivered["skipped"],
            "bytes": delivered["bytes"],
            "files": sorted(record["sftp_path"] for record in delivered_records(delivered)),
        }
        log.info(
            "%s objects: %s transferred (%s bytes), %s already identical on the server",
            summary["count"],
            summary["transferred"],
            summary["bytes"],
            summary["skipped"],
        )
        return summary

    confirm >> summarize(deliver.output)
