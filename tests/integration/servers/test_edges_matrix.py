# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Edges on every server of the matrix: names at the length limit, taken claim names, our own temp files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger
from tests.integration.servers.conftest import MatrixServer, conn_id

NO_CONTEXT: Any = {}


def deliver(server: MatrixServer, bucket: str, key: str, target: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sftp_conn_id", conn_id(server))
    op = S3ToSFTPStreamOperator(task_id="deliver", s3_bucket=bucket, s3_key=key, sftp_path=target, **kwargs)
    return op.execute(context=NO_CONTEXT)  # type: ignore[no-any-return]


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("length", [223, 229, 230, 248])
def test_long_names_are_delivered_atomically_with_sidecar_and_marker(sftp_server, s3, bucket, length):
    """Names whose temp names (and whose sidecar's and marker's temp names) pass 255 bytes."""
    name = "n" * (length - 4) + ".bin"
    data = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
    directory = sftp_server.new_dir()
    result = deliver(
        sftp_server,
        bucket,
        f"in/{name}",
        sftp_server.remote(directory) + "/",
        sidecar=True,
        done_marker=".done",
    )
    assert (directory / name).read_bytes() == data
    assert result["checksum"] == sha(data) and result["published_with"] == "posix-rename"
    assert (directory / f"{name}.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  {name}\n"
    assert (directory / f"{name}.done").read_bytes() == b""
    assert sorted(p.name for p in directory.iterdir()) == sorted([name, f"{name}.sha256", f"{name}.done"])


def test_a_full_length_name_is_delivered_atomically(sftp_server, s3, bucket):
    name = "m" * 251 + ".bin"  # 255 bytes: the longest legal name
    data = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key=name, Body=data)
    directory = sftp_server.new_dir()
    deliver(sftp_server, bucket, name, sftp_server.remote(directory) + "/")
    assert (directory / name).read_bytes() == data
    assert [p.name for p in directory.iterdir()] == [name]


@pytest.mark.parametrize(
    ("name", "extras", "over"),
    [
        ("k" * 300, {}, 45),  # S3 allows it; no filesystem does
        ("s" * 250, {"sidecar": True}, 2),  # the file fits, its sidecar "<name>.sha256" does not
        ("d" * 252, {"done_marker": ".done"}, 2),
    ],
)
def test_a_name_that_can_never_fit_is_refused_before_a_byte_is_written(
    sftp_server, s3, bucket, name, extras, over
):
    s3.put_object(Bucket=bucket, Key=name, Body=b"data")
    directory = sftp_server.new_dir()
    with pytest.raises(ValueError, match=rf"too long: \d+ bytes, {over} over the server's limit of 255"):
        deliver(sftp_server, bucket, name, sftp_server.remote(directory) + "/", **extras)
    assert list(directory.iterdir()) == []


async def collect(events: AsyncIterator[Any], seconds: float, stop_after: int) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []

    async def gather() -> None:
        async for event in events:
            payloads.append(event.payload)
            if len(payloads) >= stop_after:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gather(), seconds)
    with contextlib.suppress(AttributeError):
        await events.aclose()  # type: ignore[attr-defined]
    return payloads


def test_a_taken_claim_name_is_retried_each_poll_on_every_server(sftp_server):
    inbound, claimed = sftp_server.new_dir(), sftp_server.new_dir()
    data = os.urandom(20_000)
    (inbound / "a.csv").write_bytes(data)
    (claimed / "a.csv").write_bytes(b"yesterday's, still being processed")
    trigger = SFTPFileStableEventTrigger(
        sftp_server.remote(inbound) + "/*.csv",
        sftp_conn_id=conn_id(sftp_server),
        stable_for=0.3,
        poke_interval=0.2,
        claim_to=sftp_server.remote(claimed),
    )

    async def scenario() -> list[dict[str, Any]]:
        events = trigger.run()
        first = await collect(events, 3.0, stop_after=1)  # refused: the watch must go on, not end
        (claimed / "a.csv").unlink()  # the consumer is done with yesterday's file
        return first + await collect(trigger.run(), 15.0, stop_after=1)

    events = asyncio.run(scenario())
    assert len(events) == 1
    assert events[0]["path"] == sftp_server.remote(claimed / "a.csv")
    assert events[0]["checksum"] == sha(data)
    assert (claimed / "a.csv").read_bytes() == data and not (inbound / "a.csv").exists()


def test_a_dot_pattern_never_claims_our_own_temp_or_backup_files(sftp_server):
    inbound, claimed = sftp_server.new_dir(), sftp_server.new_dir()
    ours = [".report.csv.0123456789ab.s3sftp-part", ".report.csv.0123456789ab.s3sftp-old"]
    for name in ours:
        (inbound / name).write_bytes(b"in flight")
    (inbound / ".hidden").write_bytes(b"someone else's dotfile")
    trigger = SFTPFileStableEventTrigger(
        sftp_server.remote(inbound) + "/.*",
        sftp_conn_id=conn_id(sftp_server),
        stable_for=0.3,
        poke_interval=0.2,
        claim_to=sftp_server.remote(claimed),
        checksum=None,
    )
    events = asyncio.run(collect(trigger.run(), 4.0, stop_after=3))
    assert [event["source_path"] for event in events] == [sftp_server.remote(inbound / ".hidden")]
    assert sorted(p.name for p in inbound.iterdir()) == sorted(ours)
