# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A good guest on the partner's server: each mistake costs one connection (or none) and one clear error.

50 objects, ``max_concurrency=8``; a counting TCP proxy in front of each real server counts the
connections that reach it. sshd runs with a tight ``MaxStartups`` (OpenSSH 9.2 has no
``PerSourcePenalties``; that came in 9.8), as a partner's server would.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_s3sftp.exceptions import (
    AuthenticationError,
    ConnectionConfigError,
    HostKeyVerificationError,
    MissingTargetError,
    TaskWideError,
)
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.faults import FaultyProxy
from tests.servers import SSHDServer, start_proftpd, start_sshd

OBJECTS = 50


def _start(name: str) -> SSHDServer:
    if name == "proftpd":
        return start_proftpd(extra_config=("MaxLoginAttempts 3",))
    return start_sshd(sftp_server=name, extra_config=("MaxStartups 3:50:6",))


@pytest.fixture(scope="module", params=["openssh", "greenend", "proftpd"])
def server(request: pytest.FixtureRequest, test_user: None) -> Iterator[SSHDServer]:
    started = _start(request.param)
    yield started
    started.stop()


@pytest.fixture
def counted(server: SSHDServer) -> Iterator[FaultyProxy]:
    """A proxy that breaks nothing and counts the TCP connections that pass it."""
    with FaultyProxy(server.port, after=1 << 62, faulty=0) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def objects(moto) -> str:  # type: ignore[no-untyped-def]
    client = moto.client()
    name = "guest-objects"
    client.create_bucket(Bucket=name)
    for i in range(OBJECTS):
        client.put_object(Bucket=name, Key=f"in/{i:02d}.csv", Body=f"row {i}\n".encode())
    return name


@pytest.fixture
def target(server: SSHDServer, tmp_path: Path) -> Path:
    directory = server.root / tmp_path.name
    directory.mkdir()
    shutil.chown(directory, server.user)
    return directory


def fingerprint(public_key: Path) -> str:
    """Return ``SHA256:...`` of a public key, as ssh-keygen prints it."""
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def deliver(bucket: str, target: Path, conn_id: str, **kwargs: object) -> None:
    S3ToSFTPStreamOperator(
        task_id="deliver",
        s3_bucket=bucket,
        s3_prefix="in/",
        sftp_path=f"{target}/",
        sftp_conn_id=conn_id,
        max_concurrency=8,
        **kwargs,  # type: ignore[arg-type]
    ).execute(context={})  # type: ignore[arg-type]


def conn(server: SSHDServer, proxy: FaultyProxy, **changes: object) -> dict[str, object]:
    base = server.connection()
    extra = dict(base["extra"])  # type: ignore[call-overload]
    extra.update(changes.pop("extra", {}))  # type: ignore[call-overload]
    return base | {"port": proxy.port, "extra": {k: v for k, v in extra.items() if v is not None}} | changes


def test_wrong_password(server, counted, objects, target, set_connection, caplog):
    set_connection(
        "sftp_wrong_pw",
        conn(server, counted, password="not-the-password", extra={"key_file": None, "look_for_keys": False}),
    )
    with caplog.at_level(logging.INFO), pytest.raises(AuthenticationError) as info:
        deliver(objects, target, "sftp_wrong_pw")
    text = str(info.value)
    assert f"refused the login of user {server.user!r}" in text
    assert "connection 'sftp_wrong_pw'" in text and "password" in text
    assert counted.connections == 1
    assert f"0 of {OBJECTS} objects delivered, {OBJECTS} not delivered" in "\n".join(info.value.__notes__)
    assert list(target.iterdir()) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("airflow")]
    assert len(errors) <= 1
    assert "cipher" not in caplog.text.lower()


def test_missing_key_file(server, counted, objects, target, set_connection, tmp_path):
    missing = tmp_path / "no-such-key"
    set_connection("sftp_no_key", conn(server, counted, extra={"key_file": str(missing)}))
    with pytest.raises(ConnectionConfigError) as info:
        deliver(objects, target, "sftp_no_key")
    assert str(info.value).startswith(
        f"The key_file extra of connection 'sftp_no_key' names {str(missing)!r}, which does not exist"
    )
    assert counted.connections == 0
    assert list(target.iterdir()) == []


def test_unknown_host_key(server, counted, objects, target, set_connection):
    set_connection("sftp_unknown_key", conn(server, counted, extra={"host_key": None}))
    with pytest.raises(HostKeyVerificationError) as info:
        deliver(objects, target, "sftp_unknown_key")
    offered = fingerprint(server.workdir / "ssh_host_ed25519_key.pub")
    assert f"is unknown (it offered ssh-ed25519 {offered})" in str(info.value)
    assert "host_key extra of connection 'sftp_unknown_key'" in str(info.value)
    assert counted.connections == 1


def test_changed_host_key(server, counted, objects, target, set_connection, tmp_path):
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    claimed = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    set_connection("sftp_changed_key", conn(server, counted, extra={"host_key": claimed}))
    with pytest.raises(HostKeyVerificationError) as info:
        deliver(objects, target, "sftp_changed_key")
    offered = fingerprint(server.workdir / "ssh_host_ed25519_key.pub")
    text = str(info.value)
    assert "does not match the one configured in connection 'sftp_changed_key'" in text
    assert f"server offered ssh-ed25519 {offered}" in text
    assert f"the host_key extra says ssh-ed25519 {fingerprint(other.with_suffix('.pub'))}" in text
    assert counted.connections == 1


def test_missing_connection(server, counted, objects, target):
    with pytest.raises(ConnectionConfigError, match=r"SFTP connection 'sftp_nobody' is not defined"):
        deliver(objects, target, "sftp_nobody")
    assert counted.connections == 0


def test_missing_directory_once(server, counted, objects, target, set_connection, caplog):
    set_connection("sftp_guest", conn(server, counted))
    missing = target / "typo"
    with caplog.at_level(logging.INFO), pytest.raises(MissingTargetError) as info:
        deliver(objects, missing, "sftp_guest")
    assert f"SFTP directory {str(missing)!r} does not exist" in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, TaskWideError)
    assert counted.connections == 1
    assert caplog.text.count("does not exist") == 0  # raised once, not logged per object
    assert not missing.exists()


def test_good_connection_fans_out_after_the_first(server, counted, objects, target, set_connection):
    set_connection("sftp_guest_ok", conn(server, counted))
    deliver(objects, target, "sftp_guest_ok")
    assert sorted(p.name for p in target.iterdir()) == [f"{i:02d}.csv" for i in range(OBJECTS)]
    assert 1 <= counted.connections <= 8


def test_missing_bucket_once(moto, server, counted, target, set_connection):
    set_connection("sftp_guest_bucket", conn(server, counted))
    with pytest.raises(MissingTargetError, match=r"S3 bucket 'no-such-bucket-guest' does not exist") as info:
        S3ToSFTPStreamOperator(
            task_id="deliver",
            s3_bucket="no-such-bucket-guest",
            s3_keys=[f"k{i}" for i in range(OBJECTS)],
            sftp_path=f"{target}/",
            sftp_conn_id="sftp_guest_bucket",
            max_concurrency=8,
        ).execute(context={})  # type: ignore[arg-type]
    assert f"of {OBJECTS} objects delivered" in "\n".join(info.value.__notes__)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("selection", [{"s3_key": "in/00.csv"}, {"s3_prefix": "in/"}])
def test_missing_aws_connection_is_named(objects, target, selection):
    with pytest.raises(ConnectionConfigError, match=r"AWS connection 'aws_typo' is not defined"):
        S3ToSFTPStreamOperator(
            task_id="deliver", s3_bucket=objects, sftp_path=f"{target}/", aws_conn_id="aws_typo", **selection
        ).execute(context={})  # type: ignore[arg-type]
    assert list(target.iterdir()) == []
