# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Large fan-out: one mapped task instance per S3 object, spread over every worker of the deployment.

Three tasks:

1. ``list_keys`` lists ``s3://<bucket>/<prefix>/<ds>/`` with ``S3Hook.list_keys`` and keeps the keys
   ending in ``suffix`` (``.csv`` by default). It fails when there are none (the day's export is
   missing) or when two keys would land on the same file name.
2. ``deliver`` is :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator` mapped over those
   keys (dynamic task mapping): each mapped task instance streams one object to
   ``<target_dir>/<ds>/<base name>``, atomically, with a ``.sha256`` sidecar and a ``.done`` marker, on
   whichever worker picks it up. With ``if_exists="skip_identical"`` a cleared or re-run instance
   skips a file the server already holds byte for byte.
3. ``report`` collects the mapped XComs and returns the totals: count, transferred, skipped, bytes.

Bucket, prefix, suffix and target directory are Params (override them per run with
``airflow dags test ... --conf '{"bucket": "..."}'`` or in the trigger form); their defaults come from
``S3SFTP_EXPORTS_*`` environment variables. The connections default to ``aws_default`` and
``sftp_default`` (``S3SFTP_AWS_CONN_ID`` / ``S3SFTP_SFTP_CONN_ID`` override them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

log = logging.getLogger(__name__)

AWS_CONN_ID = os.environ.get("S3SFTP_AWS_CONN_ID", "aws_default")
SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
# How many objects of one run may be in flight at once across all workers: each is one SSH session on
# the partner's server, whose MaxStartups / MaxSessions and firewall limits are usually tighter than
# our worker pool.
MAX_PARALLEL_DELIVERIES = int(os.environ.get("S3SFTP_MAX_PARALLEL_DELIVERIES", "8"))
# A failed instance is retried alone; the others are not re-run. Tests set 0 to fail fast.
RETRIES = int(os.environ.get("S3SFTP_DELIVERY_RETRIES", "2"))

with DAG(
    dag_id="example_s3_to_sftp_mapped",
    description="Deliver the day's S3 objects to the partner's SFTP inbox, one mapped task per object",
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
        "suffix": Param(
            os.environ.get("S3SFTP_EXPORTS_SUFFIX", ".csv"),
            type="string",
            description="Deliver only keys ending in this ('' for every object under the prefix)",
        ),
        "target_dir": Param(
            os.environ.get("S3SFTP_EXPORTS_TARGET_DIR", "/inbound/partner/exports"),
            type="string",
            pattern=r"^/",
            description="Absolute directory on the partner's SFTP server; a day goes to <target_dir>/<ds>/",
        ),
    },
    tags=["example", "s3", "sftp", "delivery", "mapped"],
    doc_md=__doc__,
) as dag:

    @task
    def list_keys(bucket: str, prefix: str, suffix: str) -> list[str]:
        """Return the keys under ``prefix`` ending in ``suffix``; fail when none, or when base names clash."""
        listed = S3Hook(aws_conn_id=AWS_CONN_ID).list_keys(bucket_name=bucket, prefix=prefix) or []
        keys = sorted(key for key in listed if key.endswith(suffix) and not key.endswith("/"))
        if not keys:
            raise FileNotFoundError(f"No S3 objects under s3://{bucket}/{prefix} end in {suffix!r}")
        # Each object lands under its base name, so two keys in different "folders" would overwrite
        # each other: refuse before anything is sent.
        by_name: dict[str, list[str]] = {}
        for key in keys:
            by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
        clashes = {name: found for name, found in by_name.items() if len(found) > 1}
        if clashes:
            raise ValueError(f"Several S3 objects would land on the same SFTP file name: {clashes}")
        log.info("Found %s objects under s3://%s/%s", len(keys), bucket, prefix)
        return keys

    keys = list_keys(
        bucket="{{ params.bucket }}", prefix="{{ params.prefix }}/{{ ds }}/", suffix="{{ params.suffix }}"
    )

    # Mapping vs max_concurrency. S3ToSFTPStreamOperator(s3_prefix=..., max_concurrency=N) delivers many
    # objects inside ONE task instance: one worker process, its NIC and CPU, N connections; simple, and
    # the right choice up to a few hundred objects. Mapping makes one task instance per object instead,
    # which the scheduler queues like any other task, so the Celery or Kubernetes executor spreads them
    # over every worker; each has its own retries, logs and state in the grid, and clearing one
    # re-sends one object. The cost is scheduling overhead per object and [core] max_map_length
    # (1024 by default) instances per mapped task: for more objects than that, have list_keys return
    # batches and expand over s3_keys instead, so each instance delivers a batch with max_concurrency.
    deliver = S3ToSFTPStreamOperator.partial(
        task_id="deliver",
        s3_bucket="{{ params.bucket }}",
        sftp_path="{{ params.target_dir }}/{{ ds }}/",
        create_dirs=True,  # one new directory per day
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        if_exists="skip_identical",
        checksum="sha256",
        sidecar=True,
        done_marker=".done",
        max_active_tis_per_dagrun=MAX_PARALLEL_DELIVERIES,
        map_index_template="{{ task.s3_key }}",  # the grid shows the key instead of 0, 1, 2...
    ).expand(s3_key=keys)

    @task
    def report(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Return the totals over every mapped instance's record, and where each file landed."""
        # A lazy sequence of the mapped instances' XComs: one slice fetches them all in one request, where
        # iterating would fetch them one by one (and once more past the end).
        delivered = list(records[:])
        summary = {
            "count": len(delivered),
            "transferred": sum(1 for record in delivered if not record["skipped"]),
            "skipped": sum(1 for record in delivered if record["skipped"]),
            "bytes": sum(int(record["size"]) for record in delivered if not record["skipped"]),
            "files": sorted(record["sftp_path"] for record in delivered),
        }
        log.info(
            "%s objects: %s transferred (%s bytes), %s already identical on the server",
            summary["count"],
            summary["transferred"],
            summary["bytes"],
            summary["skipped"],
        )
        return summary

    report(deliver.output)
