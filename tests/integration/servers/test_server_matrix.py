# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Delivery, faults, sensing and write ordering on every server: OpenSSH, Green End, ProFTPD, asyncssh."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_s3sftp.core.servers import detect_server, probe_extensions
from airflow_s3sftp.core.sftp import PipelinedWriter
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from tests.faults import FaultyProxy
from tests.integration.servers.conftest import MatrixServer, conn_id

MiB = 1024 * 1024
NO_CONTEXT: Any = {}


def deliver(server: MatrixServer, bucket: str, key: str, target: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sftp_conn_id", conn_id(server))
    op = S3ToSFTPStreamOperator(task_id="deliver", s3_bucket=bucket, s3_key=key, sftp_path=target, **kwargs)
    return op.execute(context=NO_CONTEXT)  # type: ignore[no-any-return]


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("size", [0, 1, 3 * MiB + 17])
def test_delivery_lands_exact_bytes_and_nothing_else(sftp_server, s3, bucket, size):
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="in/file.bin", Body=data)
    directory = sftp_server.new_dir()
    result = deliver(sftp_server, bucket, "in/file.bin", sftp_server.remote(directory / "file.bin"))
    assert (directory / "file.bin").read_bytes() == data
    assert result["checksum"] == sha(data)
    assert sorted(p.name for p in directory.iterdir()) == ["file.bin"]


def test_replacing_an_existing_file_is_atomic(sftp_server, s3, bucket):
    directory = sftp_server.new_dir()
    (directory / "f").write_bytes(b"previous version")
    os.chown(directory / "f", *sftp_server.owner)
    data = os.urandom(MiB + 3)
    s3.put_object(Bucket=bucket, Key="f", Body=data)
    result = deliver(sftp_server, bucket, "f", sftp_server.remote(directory / "f"))
    assert (directory / "f").read_bytes() == data
    # Every server of the matrix offers posix-rename@openssh.com (docs/servers.md).
    assert result["published_with"] == "posix-rename"
    assert sorted(p.name for p in directory.iterdir()) == ["f"]


def test_no_posix_rename_fallback_on_a_real_server(proftpd_without_posix_rename, s3, bucket):
    server = proftpd_without_posix_rename
    client, sftp = server.connect()
    try:
        assert "posix-rename@openssh.com" not in probe_extensions(sftp.get_channel().get_transport())
    finally:
        sftp.close()
        client.close()
    directory = server.new_dir()
    (directory / "f").write_bytes(b"previous version")
    os.chown(directory / "f", *server.owner)
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="f", Body=data)
    result = deliver(server, bucket, "f", server.remote(directory / "f"))
    assert result["published_with"] == "rename-with-backup"
    assert (directory / "f").read_bytes() == data
    assert sorted(p.name for p in directory.iterdir()) == ["f"]


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_connection_fault_mid_transfer_recovers(sftp_server, s3, bucket, set_connection, mode):
    data = os.urandom(12 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    directory = sftp_server.new_dir()
    with FaultyProxy(sftp_server.port, after=4 * MiB, mode=mode, direction="up") as proxy:
        faulty = set_connection(f"sftp_faulty_{mode}", sftp_server.conn | {"port": proxy.port})
        result = deliver(
            sftp_server,
            bucket,
            "k",
            sftp_server.remote(directory / "k"),
            sftp_conn_id=faulty,
            tuning={"io_timeout": 3},
        )
    assert proxy.faults == 1
    assert result["attempts"] == 2
    assert (directory / "k").read_bytes() == data
    assert result["checksum"] == sha(data)
    assert sorted(p.name for p in directory.iterdir()) == ["k"]


def test_sensor_poke_and_deferrable_confirm_a_delivered_file(sftp_server, s3, bucket):
    data = os.urandom(700_000)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    directory = sftp_server.new_dir()
    remote = sftp_server.remote(directory / "k")
    delivered = deliver(sftp_server, bucket, "k", remote)

    common: dict[str, Any] = {
        "path": remote,
        "sftp_conn_id": conn_id(sftp_server),
        "stable_for": 0.5,
        "poke_interval": 0.2,
        "timeout": 30,
        "expected_checksum": delivered["checksum"],
        "chunk_size": 64 * 1024,
    }
    poked = SFTPFileStableSensor(task_id="poke", deferrable=False, **common).execute(NO_CONTEXT)
    assert poked["checksum"] == sha(data) and poked["size"] == len(data)

    sensor = SFTPFileStableSensor(task_id="deferred", deferrable=True, **common)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(NO_CONTEXT)

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in deferred.value.trigger.run()]

    events = asyncio.run(collect())
    assert len(events) == 1
    assert sensor.execute_complete(NO_CONTEXT, events[0])["checksum"] == sha(data)


class RecordingWriter(PipelinedWriter):
    """The delivery's pipelined writer, recording the order in which the server answers the writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[int] = []
        self.sent: list[int] = []

    def write(self, data: bytes) -> int:
        original = self._sftp._async_request  # type: ignore[attr-defined]

        def send(*args: Any) -> int:
            num: int = original(*args)
            self.sent.append(num)
            return num

        self._sftp._async_request = send  # type: ignore[attr-defined]
        try:
            return super().write(data)
        finally:
            self._sftp._async_request = original  # type: ignore[attr-defined]

    def _async_response(self, kind: int, msg: Any, num: int) -> None:
        self.replies.append(num)
        super()._async_response(kind, msg, num)


def reply_inversions(server: MatrixServer, directory, writes: int, block: int = 32 * 1024) -> int:
    """Send ``writes`` pipelined WRITEs (64 in flight) and count replies that overtook an earlier one.

    A server answers a WRITE once it has applied it, so a reply that overtakes an earlier request's reply
    means the later write was applied first: pipelined writes landing out of order.
    """
    data = os.urandom(writes * block)
    client, sftp = server.connect()
    try:
        handle = sftp.open(server.remote(directory / "order.bin"), "wb")
        writer = RecordingWriter(sftp, handle, start=0, write_size=block, max_in_flight=64)
        writer.write(data)
        writer.flush()
        handle.close()
    finally:
        sftp.close()
        client.close()
    assert (directory / "order.bin").read_bytes() == data
    # Zero recorded replies would count zero inversions: the recorder must have seen every write answered.
    assert sorted(writer.replies) == sorted(writer.sent) and len(writer.replies) == writes
    return sum(
        1 for earlier, later in zip(writer.replies, writer.replies[1:], strict=False) if later < earlier
    )


def test_detected_profile_matches_how_the_server_applies_pipelined_writes(sftp_server):
    """Find out by test: does the server apply pipelined writes in order? The profile must agree."""
    client, sftp = sftp_server.connect()
    try:
        profile = detect_server(sftp)
        extensions = probe_extensions(sftp.get_channel().get_transport())
    finally:
        sftp.close()
        client.close()
    assert profile.name == sftp_server.name
    assert {"posix-rename@openssh.com", "fsync@openssh.com"} <= set(extensions)
    directory = sftp_server.new_dir()
    if profile.pipelined_writes_in_order:
        # A single-threaded server answers strictly in order, every time.
        assert reply_inversions(sftp_server, directory, writes=1024) == 0
    else:
        # Green End applies requests on a thread pool: some replies overtake others (measured: tens of
        # inversions per 1024 writes). Bounded: up to 5 rounds of 1024 writes.
        inversions = [reply_inversions(sftp_server, directory, writes=1024)]
        while inversions[-1] == 0 and len(inversions) < 5:
            inversions.append(reply_inversions(sftp_server, directory, writes=1024))
        assert inversions[-1] > 0, f"no reply out of order in {len(inversions)} rounds of 1024 writes"


def test_strict_order_delivers_the_same_bytes_and_its_cost_is_printed(sftp_server, s3, bucket):
    data = os.urandom(16 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    directory = sftp_server.new_dir()
    for strict in (False, True):
        started = time.monotonic()
        deliver(
            sftp_server,
            bucket,
            "k",
            sftp_server.remote(directory / f"k-{strict}"),
            tuning={"strict_order": strict},
        )
        seconds = time.monotonic() - started
        print(f"{sftp_server.name}: strict_order={strict}: {len(data) / seconds / 1e6:.1f} MB/s")
        assert (directory / f"k-{strict}").read_bytes() == data
