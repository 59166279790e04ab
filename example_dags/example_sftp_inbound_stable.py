# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Receiving side: wait until a partner's upload to our SFTP server is complete, then process it.

The partner uploads ``<inbound_dir>/orders-<ds>.csv`` whenever they like, with whatever client they like:
perhaps in place, perhaps out of order, perhaps preserving the source's mtime. Nothing tells us when it
is done, so ``wait_for_upload``
(:class:`~airflow_s3sftp.sensors.sftp.SFTPFileStableSensor`) fires only once size and mtime stayed the
same for ``stable_for`` seconds *and* two SHA-256 digests of the content, taken a poll apart, agree. It
runs in ``reschedule`` mode, so the worker slot is free between pokes (its observations survive in the
task state store). ``summarize`` then reads the file through ``SFTPHook``, counts rows and columns, and
checks that it hashed the same bytes the sensor did.

``inbound_dir`` is a Param (default from ``S3SFTP_INBOUND_DIR``); the connection defaults to
``sftp_default`` (``S3SFTP_SFTP_CONN_ID`` overrides it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task
from airflow.providers.sftp.hooks.sftp import SFTPHook

from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor

log = logging.getLogger(__name__)

SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
# A partner's upload can stall for a while on a slow link: wait two quiet minutes before believing it
# is done. Sensor timings are not templated, hence environment variables rather than Params.
STABLE_FOR_SECONDS = float(os.environ.get("S3SFTP_STABLE_FOR_SECONDS", "120"))
POKE_INTERVAL_SECONDS = float(os.environ.get("S3SFTP_POKE_INTERVAL_SECONDS", "60"))
READ_SIZE = 1024 * 1024

with DAG(
    dag_id="example_sftp_inbound_stable",
    description="Wait for a partner's upload to be complete, then summarize it",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "inbound_dir": Param(
            os.environ.get("S3SFTP_INBOUND_DIR", "/inbound/from-partner"),
            type="string",
            pattern=r"^/",
            description="Absolute directory on our SFTP server where the partner uploads",
        ),
    },
    tags=["example", "sftp", "sensor"],
    doc_md=__doc__,
) as dag:
    # No expected checksum: we cannot know the content in advance, so the sensor proves it stopped
    # changing (two equal digests a poll apart, size and mtime unchanged in between).
    wait_for_upload = SFTPFileStableSensor(
        task_id="wait_for_upload",
        path="{{ params.inbound_dir }}/orders-{{ ds }}.csv",
        sftp_conn_id=SFTP_CONN_ID,
        stable_for=STABLE_FOR_SECONDS,
        checksum="sha256",
        min_size=1,
        mode="reschedule",
        poke_interval=POKE_INTERVAL_SECONDS,
        timeout=6 * 60 * 60,
    )

    @task
    def summarize(found: dict[str, Any]) -> dict[str, Any]:
        """Stream the file once: count rows and header columns, and hash it to match the sensor's view."""
        path = found["path"]
        hasher = hashlib.sha256()
        size = newlines = 0
        header = last = b""
        with SFTPHook(ssh_conn_id=SFTP_CONN_ID).get_managed_conn() as sftp, sftp.open(path, "rb") as remote:
            remote.prefetch(found["size"])  # pipelined reads instead of one round trip per block
            while chunk := remote.read(READ_SIZE):
                if not size:
                    header = chunk.split(b"\n", 1)[0].rstrip(b"\r")
                hasher.update(chunk)
                size += len(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
        checksum = f"sha256:{hasher.hexdigest()}"
        if checksum != found["checksum"]:
            # The file changed after the sensor fired: processing it would mean processing unknown bytes.
            raise ValueError(f"{path} changed after it was found complete: {found['checksum']} -> {checksum}")
        lines = newlines + (1 if last not in (b"", b"\n") else 0)  # a last line may lack its newline
        stats = {
            "path": path,
            "size": size,
            "rows": max(lines - 1, 0),  # not counting the header
            "columns": header.count(b",") + 1 if header else 0,
            "header": header.decode("utf-8", errors="replace"),
            "checksum": checksum,
            "stable_seconds": found["stable_seconds"],
        }
        log.info(
            "%s: %d bytes, %d rows of %d columns, %s", path, size, stats["rows"], stats["columns"], checksum
        )
        return stats

    summarize(wait_for_upload.output)
