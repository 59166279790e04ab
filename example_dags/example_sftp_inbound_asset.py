# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Event-driven inbound pipeline: a run per batch of partner files, once each is provably complete.

No sensor holds a slot and nothing runs on a clock. An :class:`~airflow.sdk.AssetWatcher` with
:class:`~airflow_s3sftp.triggers.sftp.SFTPFileStableEventTrigger` watches ``<inbound_dir>/*.csv`` from the
triggerer. When a file's size and mtime have stayed the same for ``stable_for`` seconds and two SHA-256
digests a poll apart agree, the trigger renames it into ``<claim_dir>`` (never overwriting) and fires an
asset event whose payload names the claimed path and its checksum. The scheduler then creates a run of this
DAG (several events may share one run).

``process`` takes each file by renaming it from ``<claim_dir>`` into ``<processed_dir>`` (so exactly one run
takes a file, however the events were batched), checks that the bytes still hash to the event's checksum,
and counts rows. It also takes any other claimed file still waiting in ``<claim_dir>``: an event the
scheduler left without a run (apache/airflow#56050), or whose triggerer stopped between claim and event,
is picked up by the next run instead of being lost.

Directories and timings come from ``S3SFTP_INBOUND_*`` environment variables (read when the DAG is parsed:
the watcher is part of the DAG's definition); the connection defaults to ``sftp_default``
(``S3SFTP_SFTP_CONN_ID``). Needs Airflow 3.0+.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from typing import Any

import pendulum
from airflow.providers.sftp.hooks.sftp import SFTPHook
from airflow.sdk import DAG, Asset, AssetWatcher, task  # noqa: TID251 (AssetWatcher: Airflow 3 only)

from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger

log = logging.getLogger(__name__)

SFTP_CONN_ID = os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default")
INBOUND_DIR = os.environ.get("S3SFTP_INBOUND_DIR", "/inbound/from-partner")
CLAIM_DIR = os.environ.get("S3SFTP_INBOUND_CLAIM_DIR", "/inbound/claimed")
PROCESSED_DIR = os.environ.get("S3SFTP_INBOUND_PROCESSED_DIR", "/inbound/processed")
PATTERN = os.environ.get("S3SFTP_INBOUND_PATTERN", "*.csv")
STABLE_FOR_SECONDS = float(os.environ.get("S3SFTP_INBOUND_STABLE_FOR_SECONDS", "60"))
POKE_INTERVAL_SECONDS = float(os.environ.get("S3SFTP_INBOUND_POKE_INTERVAL_SECONDS", "10"))
READ_SIZE = 1024 * 1024

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
    description="Process each partner file once it is provably complete, driven by asset events",
    schedule=[partner_files],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    # No max_active_runs=1: with it, events arriving during a run can be left without a run (#56050).
    tags=["example", "sftp", "asset", "event-driven"],
    doc_md=__doc__,
) as dag:

    @task
    def process(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Take every claimed file (the events' first, then any left over), verify and summarize it."""
        expected: dict[str, str | None] = {}
        for event in triggering_asset_events[partner_files]:
            payload = (event.extra or {}).get("payload") or {}
            if "path" in payload:
                expected[payload["path"]] = payload.get("checksum")
        with SFTPHook(ssh_conn_id=SFTP_CONN_ID).get_managed_conn() as sftp:
            waiting = sorted(
                posixpath.join(CLAIM_DIR, name)
                for name in sftp.listdir(CLAIM_DIR)
                if not name.startswith(".") and posixpath.join(CLAIM_DIR, name) not in expected
            )
            done = []
            for path in [*expected, *waiting]:
                taken = posixpath.join(PROCESSED_DIR, posixpath.basename(path))
                try:
                    sftp.rename(path, taken)  # plain SFTP rename: fails if taken exists, one run wins
                except OSError as err:
                    log.info("Not taking %s (%s): another run took it, or %s exists", path, err, taken)
                    continue
                done.append(_summarize(sftp, path, taken, expected.get(path)))
        log.info("Processed %d file(s): %s", len(done), [d["name"] for d in done])
        return done

    def _summarize(sftp: Any, claimed: str, taken: str, checksum: str | None) -> dict[str, Any]:
        hasher = hashlib.sha256()
        size = rows = 0
        with sftp.open(taken, "rb") as remote:
            remote.prefetch()
            while chunk := remote.read(READ_SIZE):
                hasher.update(chunk)
                size += len(chunk)
                rows += chunk.count(b"\n")
        actual = f"sha256:{hasher.hexdigest()}"
        if checksum is not None and actual != checksum:
            raise ValueError(f"{taken} changed after it was found complete: {checksum} -> {actual}")
        log.info("%s: %d bytes, %d lines, %s", taken, size, rows, actual)
        return {
            "name": posixpath.basename(taken),
            "claimed_path": claimed,
            "path": taken,
            "size": size,
            "lines": rows,
            "checksum": actual,
            "from_event": checksum is not None,
        }

    process()
