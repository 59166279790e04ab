# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Promises met on a real sshd: failed verifications, a superseded temp file, the if_exists="fail" race.

The faults come from outside, on the server's disk (the sshd fixture serves a local directory):
:class:`ActWhen` runs an action at a moment named by the server's files, holding the SFTP traffic
until the action is done, so no timing decides whether the fault lands before the delivery looks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_s3sftp.exceptions import ChecksumMismatchError, SupersededError, VerificationError
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.faults import FaultyProxy

MiB = 1024 * 1024


class ActWhen(FaultyProxy):
    """Forward a connection untouched, except: run ``action()`` once, at the first upstream chunk that
    finds ``when()`` true, before that chunk is forwarded.

    The chunk waits for the action, so every request it carries (and every later one) reaches the
    server after the action: a condition met while the file is still being written guarantees that
    the delivery's stat, read-back and rename all see what the action did.
    """

    def __init__(self, target_port: int, *, when: Callable[[], bool], action: Callable[[], None]) -> None:
        super().__init__(target_port, after=0)
        self.when, self.action = when, action
        self.acted = threading.Event()
        self._act_lock = threading.Lock()

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if counted and not self.acted.is_set():
                    with self._act_lock:
                        if not self.acted.is_set() and self.when():
                            self.action()
                            self.acted.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def temp_of(directory: Path, name: str) -> Path | None:
    return next(directory.glob(f".{name}.*.s3sftp-part"), None)


def written_at_least(directory: Path, name: str, size: int) -> Callable[[], bool]:
    """True once the temp file of ``name`` holds ``size`` bytes (writes land in order on OpenSSH)."""

    def check() -> bool:
        temp = temp_of(directory, name)
        try:
            return temp is not None and temp.stat().st_size >= size
        except FileNotFoundError:
            return False

    return check


def pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def run(**kwargs: object) -> dict[str, object]:
    op = S3ToSFTPStreamOperator(task_id="deliver", **kwargs)  # type: ignore[arg-type]
    return op.execute(context={})  # type: ignore[arg-type]


@pytest.fixture
def upload(s3, bucket):  # type: ignore[no-untyped-def]
    def _upload(key: str, size: int = 8 * MiB) -> bytes:
        data = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return data

    return _upload


def deliver_through(proxy: ActWhen, sshd, set_connection, bucket: str, key: str, target: Path, **kwargs):  # type: ignore[no-untyped-def]
    conn_id = set_connection("sftp_act", sshd.connection() | {"port": proxy.port})
    return run(
        s3_bucket=bucket,
        s3_key=key,
        sftp_path=str(target),
        sftp_conn_id=conn_id,
        tuning={"connection_retries": 0, "chunk_size": MiB, **kwargs.pop("tuning", {})},
        **kwargs,
    )


@pytest.mark.parametrize("strict_order", [False, True], ids=["pipelined", "strict"])
def test_a_temp_file_that_grew_on_the_server_fails_the_size_check_and_nothing_is_published(
    sshd, upload, bucket, remote_dir, set_connection, strict_order
):
    data = upload("k")

    def extend() -> None:  # one byte past the end: the in-order writes below it never shrink the file
        temp = temp_of(remote_dir, "k")
        assert temp is not None
        pwrite(temp, b"!", len(data))

    proxy = ActWhen(sshd.port, when=written_at_least(remote_dir, "k", MiB), action=extend)
    with (
        proxy,
        pytest.raises(VerificationError, match=rf"has {len(data) + 1} bytes after sending {len(data)}"),
    ):
        deliver_through(
            proxy, sshd, set_connection, bucket, "k", remote_dir / "k", tuning={"strict_order": strict_order}
        )
    assert proxy.acted.is_set()
    assert sorted(p.name for p in remote_dir.iterdir()) == []  # nothing published, the temp file removed


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_a_byte_flipped_on_the_server_fails_the_read_back_and_nothing_is_published(
    sshd, upload, bucket, remote_dir, set_connection, algorithm
):
    data = upload("k")
    (remote_dir / "k").write_bytes(b"previous version")

    def flip() -> None:  # byte 0 is written already and never written again
        temp = temp_of(remote_dir, "k")
        assert temp is not None
        pwrite(temp, bytes([data[0] ^ 0xFF]), 0)

    proxy = ActWhen(sshd.port, when=written_at_least(remote_dir, "k", MiB), action=flip)
    with proxy, pytest.raises(ChecksumMismatchError, match="read back"):
        deliver_through(
            proxy,
            sshd,
            set_connection,
            bucket,
            "k",
            remote_dir / "k",
            checksum=algorithm,
            verify="checksum",
        )
    assert proxy.acted.is_set()
    assert (remote_dir / "k").read_bytes() == b"previous version"
    assert sorted(p.name for p in remote_dir.iterdir()) == ["k"]


def test_a_temp_file_removed_by_someone_else_ends_in_superseded_on_a_real_server(
    sshd, upload, bucket, remote_dir, set_connection
):
    upload("k")
    other = b"the other writer's complete file"

    def supersede() -> None:  # a newer delivery's cleanup takes our temp file, then publishes its own
        temp = temp_of(remote_dir, "k")
        assert temp is not None
        temp.unlink()
        (remote_dir / "k").write_bytes(other)

    proxy = ActWhen(sshd.port, when=written_at_least(remote_dir, "k", MiB), action=supersede)
    with proxy, pytest.raises(SupersededError, match="removed by someone else"):
        deliver_through(proxy, sshd, set_connection, bucket, "k", remote_dir / "k")
    assert proxy.acted.is_set()
    assert (remote_dir / "k").read_bytes() == other  # never deleted, never overwritten
    assert sorted(p.name for p in remote_dir.iterdir()) == ["k"]


@pytest.mark.parametrize("strict_order", [False, True], ids=["pipelined", "strict"])
def test_if_exists_fail_refuses_a_target_that_appeared_during_the_transfer(
    sshd, upload, bucket, remote_dir, set_connection, strict_order
):
    upload("k")
    other = b"appeared during the transfer"

    def appear() -> None:
        (remote_dir / "k").write_bytes(other)

    proxy = ActWhen(sshd.port, when=written_at_least(remote_dir, "k", MiB), action=appear)
    with proxy, pytest.raises(FileExistsError, match=r"appeared during the transfer \(if_exists='fail'\)"):
        deliver_through(
            proxy,
            sshd,
            set_connection,
            bucket,
            "k",
            remote_dir / "k",
            if_exists="fail",
            tuning={"strict_order": strict_order},
        )
    assert proxy.acted.is_set()
    assert (remote_dir / "k").read_bytes() == other
    assert sorted(p.name for p in remote_dir.iterdir()) == ["k"]  # our temp file removed
