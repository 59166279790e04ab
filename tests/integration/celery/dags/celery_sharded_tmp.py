from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

with DAG(
    dag_id="celery_sharded_tmp",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=1)},
    params={"bucket": "x", "prefix": "big", "target_dir": "/tmp"},
) as dag:
    S3ToSFTPStreamOperator.partial(
        task_id="deliver",
        s3_bucket="{{ params.bucket }}",
        sftp_path="{{ params.target_dir }}/",
        create_dirs=True,
        if_exists="skip_identical",
        max_concurrency=4,
    ).expand(s3_prefix=[f"{{{{ params.prefix }}}}/{i}" for i in range(int(os.environ.get("S3SFTP_SHARDS", "8")))])
