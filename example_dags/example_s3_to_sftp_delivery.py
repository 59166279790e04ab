# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Partner delivery: stream the daily S3 export to the partner's SFTP inbox and prove it landed whole.

Three tasks:

1. ``deliver`` streams ``s3://<bucket>/<prefix>/<ds>/<file_name>`` to ``<target_dir>/<file_name>`` on the
   partner's server with :class:`~airflow_s3sftp.operators.s3_to_sftp.S3ToSFTPStreamOperator`: in offset
   order, under a hidden temp name, verified, then renamed, so the partner never sees a partial file.
2. ``confirm`` watches the published file with
   :class:`~airflow_s3sftp.sensors.sftp.SFTPFileStableSensor` from the triggerer (``deferrable=True``) and
   fires only when the content read back from the server hashes to the checksum ``deliver`` computed
   while streaming (pulled from its XCom).
3. ``report`` logs and returns size, checksum and throughput.

Bucket, prefix, file name and target directory are Params (override them per run with
``airflow dags test ... --conf '{"bucket": "..."}'`` or in the trigger form); their defaults come from
``S3SFTP_DELIVERY_*`` environment variables. The connections default to ``aws_default`` and
``sftp_default`` (``S3SFTP_AWS_CONN_ID`` / ``S3SFTP_SFTP_CONN_ID`` override them).
"""

from __future__ import annotations

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
# The file is published by an atomic rename, so a short stability window is enough to confirm it;
# sensor timings are not templated, hence environment variables rather than Params.
STABLE_FOR_SECONDS = float(os.environ.get("S3SFTP_STABLE_FOR_SECONDS", "30"))
POKE_INTERVAL_SECONDS = float(os.environ.get("S3SFTP_POKE_INTERVAL_SECONDS", "10"))
# A failed delivery is retried (it replaces atomically, so a retry never leaves a half file behind);
# demos and tests set 0 to fail fast.
RETRIES = int(os.environ.get("S3SFTP_DELIVERY_RETRIES", "2"))

with DAG(
    dag_id="example_s3_to_sftp_delivery",
    description="Stream the daily S3 export to the partner's SFTP inbox, verified end to end",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": pendulum.duration(minutes=5)},
    params={
        "bucket": Param(
            os.environ.get("S3SFTP_DELIVERY_BUCKET", "partner-exports"),
            type="string",
            minLength=3,
            description="S3 bucket holding the daily exports",
        ),
        "prefix": Param(
            os.environ.get("S3SFTP_DELIVERY_PREFIX", "daily"),
            type="string",
            description="Key prefix; the object is <prefix>/<ds>/<file_name>",
        ),
        "file_name": Param(
            os.environ.get("S3SFTP_DELIVERY_FILE_NAME", "export.csv.gz"),
            type="string",
            pattern=r"^[^/]+$",
            description="Base name of the object, kept on the SFTP side",
        ),
        "target_dir": Param(
            os.environ.get("S3SFTP_DELIVERY_TARGET_DIR", "/inbound/partner"),
            type="string",
            pattern=r"^/",
            description="Absolute directory on the partner's SFTP server (created when missing)",
        ),
    },
    tags=["example", "s3", "sftp", "delivery"],
    doc_md=__doc__,
) as dag:
    # A trailing "/" makes sftp_path a directory: the operator appends the key's base name.
    deliver = S3ToSFTPStreamOperator(
        task_id="deliver",
        s3_bucket="{{ params.bucket }}",
        s3_key="{{ params.prefix }}/{{ ds }}/{{ params.file_name }}",
        sftp_path="{{ params.target_dir }}/",
        # The partner's inbox may be new; without this a missing directory fails the task.
        create_dirs=True,
        aws_conn_id=AWS_CONN_ID,
        sftp_conn_id=SFTP_CONN_ID,
        checksum="sha256",
        verify="size",
        if_exists="replace",
        # Tuning knobs go in one dict (checked when the DAG is parsed): here, ride out a flaky link.
        tuning={"connection_retries": 5, "io_timeout": 60},
    )

    # Path, size and checksum come from what ``deliver`` actually wrote: the sensor fails at once if the
    # server holds different bytes, instead of waiting for its timeout.
    confirm = SFTPFileStableSensor(
        task_id="confirm",
        path="{{ ti.xcom_pull(task_ids='deliver')['sftp_path'] }}",
        sftp_conn_id=SFTP_CONN_ID,
        expected_size="{{ ti.xcom_pull(task_ids='deliver')['size'] }}",
        expected_checksum="{{ ti.xcom_pull(task_ids='deliver')['checksum'] }}",
        stable_for=STABLE_FOR_SECONDS,
        poke_interval=POKE_INTERVAL_SECONDS,
        timeout=60 * 60,
        deferrable=True,
    )

    @task
    def report(delivered: dict[str, Any], confirmed: dict[str, Any]) -> dict[str, Any]:
        """Log and return what landed where, how fast, and whether the sensor saw the same bytes."""
        summary = {
            "s3_uri": delivered["s3_uri"],
            "sftp_path": delivered["sftp_path"],
            "size": delivered["size"],
            "checksum": delivered["checksum"],
            "seconds": delivered["seconds"],
            "mb_per_s": delivered["mb_per_s"],
            "published_with": delivered["published_with"],
            "sensor_checksum": confirmed["checksum"],
            "checksum_verified": confirmed["checksum"] == delivered["checksum"],
            "stable_seconds": confirmed["stable_seconds"],
        }
        log.info(
            "Delivered %s -> %s: %s bytes in %.2fs (%.1f MB/s), %s, confirmed on the server: %s",
            summary["s3_uri"],
            summary["sftp_path"],
            summary["size"],
            summary["seconds"],
            summary["mb_per_s"],
            summary["checksum"],
            summary["checksum_verified"],
        )
        return summary

    # The sensor reads deliver's XCom through templates, which do not create a dependency: declare it.
    deliver >> confirm
    report(deliver.output, confirm.output)
