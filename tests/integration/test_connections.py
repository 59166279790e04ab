# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Many objects in flight over at most ``max_connections`` SSH connections, each on an SFTP channel of its own.

A TCP proxy in front of each real server holds every byte 8 ms each way (a 16 ms round trip, where
sessions share connections) and counts the connections that reach it; the files on the server's
disk are compared byte for byte with the objects.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_s3sftp.exceptions import AuthenticationError
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from benchmarks.throttle import ThrottleProxy
from tests.faults import FaultyProxy
from tests.servers import SSHDServer, start_proftpd, start_sshd

OBJECTS = 40


def _link(port: int) -> ThrottleProxy:
    """Return a proxy for a 16 ms round trip: above the 10 ms from which sessions share connections."""
    return ThrottleProxy(port, rate=0, latency=0.008, depth=8192)


def _body(i: int) -> bytes:
    # empty, tiny and a few hundred KiB (several WRITEs): every size a small-object batch meets
    return os.urandom((0, 7, 64 * 1024, 300 * 1024 + i)[i % 4])


@pytest.fixture(scope="module")
def objects(moto) -> tuple[str, dict[str, bytes]]:  # type: ignore[no-untyped-def]
    client = moto.client()
    name = "many-channels"
    client.create_bucket(Bucket=name)
    bodies = {f"{i:02d}.bin": _body(i) for i in range(OBJECTS)}
    for key, body in bodies.items():
        client.put_object(Bucket=name, Key=f"in/{key}", Body=body)
    return name, bodies


def _target(server: SSHDServer, tmp_path: Path) -> Path:
    directory = server.root / tmp_path.name
    directory.mkdir()
    shutil.chown(directory, server.user)
    return directory


def _conn(server: SSHDServer, proxy: FaultyProxy | ThrottleProxy, **extra: object) -> dict[str, object]:
    return server.connection(**extra) | {"port": proxy.port}


def _deliver(bucket: str, target: Path, conn_id: str, **kwargs: object) -> dict[str, object]:
    result: dict[str, object] = S3ToSFTPStreamOperator(
        task_id="deliver",
        s3_bucket=bucket,
        s3_prefix="in/",
        sftp_path=f"{target}/",
        sftp_conn_id=conn_id,
        **kwargs,  # type: ignore[arg-type]
    ).execute(context={})  # type: ignore[arg-type]
    return result


def _assert_delivered(target: Path, bodies: dict[str, bytes]) -> None:
    assert sorted(p.name for p in target.iterdir()) == sorted(bodies)  # no temp file left either
    for name, body in bodies.items():
        assert (target / name).read_bytes() == body, name


@pytest.fixture(scope="module", params=["openssh", "greenend", "proftpd"])
def server(request: pytest.FixtureRequest, test_user: None) -> Iterator[SSHDServer]:
    started = start_proftpd() if request.param == "proftpd" else start_sshd(sftp_server=request.param)
    yield started
    started.stop()


def test_many_objects_in_flight_over_at_most_max_connections(
    server, objects, tmp_path, set_connection, caplog
):
    bucket, bodies = objects
    target = _target(server, tmp_path)
    with _link(server.port) as counted:
        set_connection("sftp_few", _conn(server, counted))
        with caplog.at_level(logging.INFO, logger="airflow_s3sftp"):
            result = _deliver(bucket, target, "sftp_few", max_concurrency=12, max_connections=3)
        connections = counted.connections
    assert result["transferred"] == OBJECTS and result["failed"] == []
    _assert_delivered(target, bodies)
    assert 1 <= connections <= 3
    shared = "one session per connection" not in caplog.text
    assert shared == (server.name == "openssh")  # ProFTPD (measured) and Green End: not side by side


@pytest.fixture(scope="module")
def two_sessions(test_user: None) -> Iterator[SSHDServer]:
    """OpenSSH granting two channels per connection (``MaxSessions 2``)."""
    started = start_sshd(extra_config=("MaxSessions 2",))
    yield started
    started.stop()


def test_max_sessions_2_still_delivers_everything_on_fewer_channels(
    two_sessions, objects, tmp_path, set_connection, caplog
):
    bucket, bodies = objects
    target = _target(two_sessions, tmp_path)
    with _link(two_sessions.port) as counted:
        set_connection("sftp_max_sessions", _conn(two_sessions, counted))
        with caplog.at_level(logging.INFO, logger="airflow_s3sftp"):
            result = _deliver(bucket, target, "sftp_max_sessions", max_concurrency=12, max_connections=2)
        connections = counted.connections
    assert result["transferred"] == OBJECTS and result["failed"] == []
    _assert_delivered(target, bodies)
    assert 1 <= connections <= 2
    refusals = [r for r in caplog.records if "refused one more channel" in r.getMessage()]
    assert len(refusals) == 1  # logged once, and no object failed for it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("airflow")]


def test_a_wrong_key_makes_exactly_one_login_attempt(sshd, objects, tmp_path, set_connection):
    bucket, _ = objects
    target = _target(sshd, tmp_path)
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with FaultyProxy(sshd.port, after=1 << 62, faulty=0) as counted:
        set_connection("sftp_wrong_key", _conn(sshd, counted, key_file=str(wrong), look_for_keys=False))
        with pytest.raises(AuthenticationError):
            _deliver(bucket, target, "sftp_wrong_key", max_concurrency=16, max_connections=4)
        connections = counted.connections
    assert connections == 1
    assert list(target.iterdir()) == []


def test_on_loopback_sessions_keep_a_connection_each(sshd, objects, tmp_path, set_connection, caplog):
    bucket, bodies = objects
    target = _target(sshd, tmp_path)
    with FaultyProxy(sshd.port, after=1 << 62, faulty=0) as counted:
        set_connection("sftp_loopback", _conn(sshd, counted))
        with caplog.at_level(logging.INFO, logger="airflow_s3sftp"):
            result = _deliver(bucket, target, "sftp_loopback", max_concurrency=12, max_connections=3)
        connections = counted.connections
    assert result["transferred"] == OBJECTS
    _assert_delivered(target, bodies)
    assert 1 <= connections <= 3
    assert "one session per connection, 3 at once" in caplog.text  # CPU, not round trips, is the limit
