# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Event-driven inbound: each partner file, once provably complete, lands in S3 verified and is archived.

No sensor holds a slot and nothing runs on a clock. An :class:`~airflow.sdk.AssetWatcher` with
:class:`~airflow_s3sftp.triggers.sftp.SFTPFileStableEventTrigger` watches ``<inbound_dir>/*.csv`` from the
triggerer. When a file's size and mtime have stayed the same for ``stable_for`` seconds and two SHA-256
digests a poll apart agree, the trigger renames it into ``<claim_dir>`` (never overwriting) and fires an
asset event whose payload names the claimed path and its checksum. The scheduler then creates a run of this
DAG (several events may share one run).

``take`` takes each file by renaming it from ``<claim_dir>`` into ``<processed_dir>`` (so exactly one run
takes a file, however the events were batched), with the checksum its event proved. It also takes any other
claimed file still waiting in ``<claim_dir>``: an event the scheduler left without a run
(apache/airflow#56050), or whose triggerer stopped between claim and event, is picked up by the next run
instead of being lost (its bytes are hashed on the way, without a proof to compare with).

``land`` (:class:`~airflow_s3sftp.operators.sftp_to_s3.SFTPToS3StreamOperator`) streams the taken files into
``s3://<bucket>/<prefix><name>``: the object appears only if the bytes hash to the event's checksum and the
file did not change during the read; then each file is moved into ``<archive_dir>``. A file replaced after
its event lands nothing, stays in ``<processed_dir>``, and fails the run naming it.

Directories, bucket and timings come from ``S3SFTP_INBOUND_*`` environment variables (read when the DAG is
parsed: the watcher is part of the DAG's definition); the connections default to ``sftp_default``
(``S3SFTP_SFTP_CONN_ID``) and ``aws_default`` (``S3SFTP_AWS_CONN_ID``). Needs Airflow 3.0+.
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Any

import pendulum
from airflow.providers.sftp.hooks.sftp import SFTPHook
from airflow.sdk import DAG, Asset, AssetWatcher, task  # noqa: TID251 (AssetWatcher: Airflow 3 only)

from airflow_s3sftp.operators.sftp_to_s3 import SFTPToS3StreamOperator
from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger

log = logging.getLogger(__name__)

SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
AWS_CONN_ID = os.environ.get("S3SFTP_AWS_CONN_ID", "aws_default")
INBOUND_DIR = os.environ.get("S3SFTP_INBOUND_DIR", "/inbound/from-partner")
CLAIM_DIR = os.environ.get("S3SFTP_INBOUND_CLAIM_DIR", "/inbound/claimed")
PROCESSED_DIR = os.environ.get("S3SFTP_INBOUND_PROCESSED_DIR", "/inbound/processed")
ARCHIVE_DIR = os.environ.get("S3SFTP_INBOUND_ARCHIVE_DIR", "/inbound/archive")
BUCKET = os.environ.get("S3SFTP_INBOUND_BUCKET", "partner-landing")
PREFIX = os.environ.get("S3SFTP_INBOUND_PREFIX", "partner/")
PATTERN = os.environ.get("S3SFTP_INBOUND_PATTERN", "*.csv")
STABLE_FOR_SECONDS = float(os.environ.get("S3SFTP_INBOUND_STABLE_FOR_SECONDS", "60"))
POKE_INTERVAL_SECONDS = float(os.environ.get("S3SFTP_INBOUND_POKE_INTERVAL_SECONDS", "10"))

partner_files = Asset(
    name="sftp_partner_inbound",
    uri=f"sftp://{SFTP_CONN_ID}{INBOUND_DIR}",
    watchers=[
        AssetWatcher(
            name="sftp_partner_inbound_watcher",
            trigger=SFTPFileStableEventTrigger(
                path=f"{INBOUND_DIR}/{PATTERN}",
                sftp_conn_id=SFTP_CONN_ID,
                stable_for=STABLE_FOR_SECONDS,
                checksum="sha256",
                claim_to=CLAIM_DIR,
                poke_interval=POKE_INTERVAL_SECONDS,
            ),
        )
    ],
)

with DAG(
    dag_id="example_sftp_inbound_asset",
    description="Land each partner file in S3, verified against its event's checksum, then archive it",
    schedule=[partner_files],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    # No max_active_runs=1: with it, events arriving during a run can be left without a run (#56050).
    tags=["example", "sftp", "s3", "asset", "event-driven"],
    doc_md=__doc__,
) as dag:

    @task(multiple_outputs=True)
    def take(triggering_asset_events: Any = None) -> dict[str, Any]:
        """Take every claimed file (the events' first, then any left over) into this run's hands."""
        proven: dict[str, str | None] = {}
        for event in (triggering_asset_events or {}).get(partner_files, []):
            payload = (event.extra or {}).get("payload") or {}
            if "path" in payload:
                proven[payload["path"]] = payload.get("checksum")
        files = []
        with SFTPHook(ssh_conn_id=SFTP_CONN_ID).get_managed_conn() as sftp:
            waiting = sorted(
                posixpath.join(CLAIM_DIR, name)
                for name in sftp.listdir(CLAIM_DIR)
                if not name.startswith(".") and posixpath.join(CLAIM_DIR, name) not in proven
            )
            for claimed in [*proven, *waiting]:
                taken = posixpath.join(PROCESSED_DIR, posixpath.basename(claimed))
                try:
                    sftp.rename(claimed, taken)  # plain SFTP rename: fails if taken exists, one run wins
                except OSError as err:
                    log.info("Not taking %s (%s): another run took it, or %s exists", claimed, err, taken)
                    continue
                checksum = proven.get(claimed)
                files.append({"name": posixpath.basename(taken), "claimed_path": claimed, "path": taken,
                              "checksum": checksum, "from_event": checksum is not None})  # fmt: skip
        log.info("Took %d file(s): %s", len(files), [f["name"] for f in files])
        return {
            "files": files,
            "paths": [f["path"] for f in files],
            "checksums": {f["path"]: f["checksum"] for f in files if f["checksum"]},
        }

    taken = take()
    land = SFTPToS3StreamOperator(
        task_id="land",
        sftp_paths=taken["paths"],
        expected_checksum=taken["checksums"],
        s3_bucket=BUCKET,
        s3_prefix=PREFIX,
        after="move",
        move_to=ARCHIVE_DIR,
        allow_empty=True,  # another run may have taken every file of this run's events
        sftp_conn_id=SFTP_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
        # Every file's record (its checksum, where it was moved), one JSON line each; the XCom keeps counts.
        report=f"s3://{BUCKET}/reports/{{{{ dag.dag_id }}}}/{{{{ run_id }}}}.jsonl",
    )
