# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A very large prefix (millions of objects) delivered in shards, spread over every worker, restartable.

Three tasks:

1. ``shards`` (:class:`~airflow_s3sftp.sharding.S3PrefixShardsOperator`) cuts ``s3://<bucket>/<prefix>/``
   into ``S3SFTP_SHARDS`` key ranges balanced by object count (one listing, a bounded sample kept;
   ``S3SFTP_SHARD_METHOD=hash`` lists nothing and cuts by a hash of the key instead). Its XCom is the
   list of small shard descriptors, not the keys.
2. ``deliver`` is :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator` mapped over the
   shards: each mapped task instance lists only its own range, page by page, and streams those objects
   to ``<target_dir>/`` (paths below the prefix kept), with its own retries, its own log and its own
   report ``s3://<report_bucket>/<report_prefix>/<run_id>/shard-<map index>.jsonl`` (one JSON line per
   object, written as the task goes, so a failed shard still leaves one). Its XCom stays small whatever
   the object count: counts, bytes and the first failures.
3. ``summarize`` adds the shards' counts up.

How many shards run at once, and how many SSH sessions each opens, is bounded against the partner's
server (its ``MaxStartups`` / ``MaxSessions``, firewall or contract): ``max_active_tis_per_dagrun``
caps the shards in flight per run, ``max_concurrency`` the sessions per shard, and the optional pool
``S3SFTP_PARTNER_POOL`` (create it with as many slots as the partner allows sessions) makes each shard
take ``max_concurrency`` slots, so all runs and DAGs that share the pool together stay within the limit.

A re-run (or a retry after a worker was lost) is cheap and safe: ``if_exists="skip_identical"``
skips every file the server already holds byte for byte, and a killed transfer leaves no partial file
under a final name.

Bucket, prefix, target directory and report location are Params (override them per run in the trigger
form or with ``--conf``); their defaults come from ``S3SFTP_ARCHIVE_*`` environment variables. The
connections default to ``aws_default`` and ``sftp_default`` (``S3SFTP_AWS_CONN_ID`` /
``S3SFTP_SFTP_CONN_ID`` override them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sharding import S3PrefixShardsOperator

log = logging.getLogger(__name__)

AWS_CONN_ID = os.environ.get("S3SFTP_AWS_CONN_ID", "aws_default")
SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
# Shards per run: enough that every worker slot has one (and a lost shard redoes little), few enough
# that the mapping stays far below [core] max_map_length (1024) and each shard's startup is amortised.
SHARDS = int(os.environ.get("S3SFTP_SHARDS", "32"))
SHARD_METHOD = os.environ.get("S3SFTP_SHARD_METHOD", "range")
# The partner's limit, split in two: shards of one run in flight x SSH sessions per shard (4 x 4 = 16
# sessions at most). Set them from what the partner allows, not from the size of the worker fleet.
MAX_ACTIVE_SHARDS = int(os.environ.get("S3SFTP_MAX_ACTIVE_SHARDS", "4"))
SESSIONS_PER_SHARD = int(os.environ.get("S3SFTP_SESSIONS_PER_SHARD", "4"))
# A pool shared by every DAG that talks to this partner, sized in sessions (unset: Airflow's default pool).
PARTNER_POOL = os.environ.get("S3SFTP_PARTNER_POOL") or None
# One report per shard and run; a retry of a shard rewrites its report whole.
REPORT = (
    "s3://{{ params.report_bucket }}/{{ params.report_prefix }}/{{ run_id }}/shard-{{ ti.map_index }}.jsonl"
)
RETRIES = int(os.environ.get("S3SFTP_DELIVERY_RETRIES", "3"))
# A retry after a lost worker removes that worker's temp files once idle for resume_after (180 s by
# default, above io_timeout, 120 s): Airflow retries a lost task after [scheduler]
# task_instance_heartbeat_timeout (300 s by default), so they are gone when the retry ends. A deployment
# that shortens that timeout shortens these two with it (io_timeout < resume_after < heartbeat timeout).
TUNING = {
    knob: float(value)
    for knob, value in (
        ("io_timeout", os.environ.get("S3SFTP_IO_TIMEOUT_SECONDS")),
        ("resume_after", os.environ.get("S3SFTP_RESUME_AFTER_SECONDS")),
    )
    if value
}
RETRY_DELAY_SECONDS = float(os.environ.get("S3SFTP_RETRY_DELAY_SECONDS", "60"))

with DAG(
    dag_id="example_s3_to_sftp_sharded",
    description="Deliver a very large S3 prefix to the partner's SFTP server in shards, each with a report",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": pendulum.duration(seconds=RETRY_DELAY_SECONDS)},
    params={
        "bucket": Param(
            os.environ.get("S3SFTP_ARCHIVE_BUCKET", "partner-archive"),
            type="string",
            minLength=3,
            description="S3 bucket holding the prefix",
        ),
        "prefix": Param(
            os.environ.get("S3SFTP_ARCHIVE_PREFIX", "archive"),
            type="string",
            pattern=r"^[^/](.*[^/])?$",
            description="Key prefix, no leading or trailing '/': every object below it is delivered",
        ),
        "target_dir": Param(
            os.environ.get("S3SFTP_ARCHIVE_TARGET_DIR", "/inbound/partner/archive"),
            type="string",
            pattern=r"^/",
            description="Absolute directory on the partner's SFTP server",
        ),
        "report_bucket": Param(
            os.environ.get("S3SFTP_ARCHIVE_REPORT_BUCKET", "partner-archive"),
            type="string",
            minLength=3,
            description="S3 bucket of the shards' reports",
        ),
        "report_prefix": Param(
            os.environ.get("S3SFTP_ARCHIVE_REPORT_PREFIX", "delivery-reports"),
            type="string",
            pattern=r"^[^/](.*[^/])?$",
            description="Key prefix of the reports (not below the delivered prefix)",
        ),
    },
    tags=["example", "s3", "sftp", "delivery", "sharding"],
    doc_md=__doc__,
) as dag:
    shards = S3PrefixShardsOperator(
        task_id="shards",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.prefix }}/",
        count=SHARDS,
        method=SHARD_METHOD,
        aws_conn_id=AWS_CONN_ID,
    )

    deliver = S3ToSFTPStreamOperator.partial(
        task_id="deliver",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.prefix }}/",
        sftp_path="{{ params.target_dir }}/",
        create_dirs=True,
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        if_exists="skip_identical",
        max_concurrency=SESSIONS_PER_SHARD,
        report=REPORT,
        tuning=TUNING or None,
        max_active_tis_per_dagrun=MAX_ACTIVE_SHARDS,
        **({"pool": PARTNER_POOL, "pool_slots": SESSIONS_PER_SHARD} if PARTNER_POOL else {}),
    ).expand(shard=shards.output)

    @task
    def summarize(delivered: Any) -> dict[str, Any]:
        """Add up the shards' summaries; each shard's per-object records are in its report."""
        summaries = list(delivered)
        totals = {
            name: sum(summary[name] for summary in summaries)
            for name in ("count", "transferred", "skipped", "bytes", "failed_count")
        }
        totals["reports"] = sorted(summary["report"] for summary in summaries)
        log.info(
            "%s shards, %s objects: %s transferred (%s bytes), %s already identical, %s failed",
            len(summaries),
            totals["count"],
            totals["transferred"],
            totals["bytes"],
            totals["skipped"],
            totals["failed_count"],
        )
        return totals

    summarize(deliver.output)
