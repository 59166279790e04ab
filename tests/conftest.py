# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Fixtures shared by all tests; the servers start only when a test asks for one (unit tests need none)."""

from __future__ import annotations

import os
import tempfile
import uuid

# Airflow reads its configuration at import time: give the tests a throwaway home first.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="s3sftp-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from testservers.processes import MotoServer, SSHDServer, conn_env, remove_test_user, start_moto, start_sshd

IS_ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_root: needs root (mounts, files owned by another user); skipped otherwise"
    )


def in_ci() -> bool:
    """Return True under CI (``CI=true``, as GitHub Actions and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests that need root, with one reason, when the suite does not run as root.

    In CI they must run: there, a run without root that collects any of them is refused outright
    (the secrets-in-logs and disk-full tests are among them), instead of passing with them skipped.
    """
    if IS_ROOT:
        return
    needing_root = [item.nodeid for item in items if item.get_closest_marker("requires_root")]
    if needing_root and in_ci():
        raise pytest.UsageError(
            f"CI=true but the suite runs as uid {os.geteuid()}: {len(needing_root)} tests need root "
            f"({', '.join(needing_root[:3])}{', ...' if len(needing_root) > 3 else ''}); run CI as root"
        )
    skip = pytest.mark.skip(reason="needs root: run the suite as root (CI does) to include it")
    for item in items:
        if item.get_closest_marker("requires_root"):
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    if IS_ROOT:
        return "running as root: tests marked requires_root are included; a random test user is created"
    return "running as a non-root user: tests marked requires_root are skipped (CI runs them as root)"


@pytest.fixture(scope="session")
def test_user() -> Iterator[None]:
    """Remove the random test user (created by the first server that needs it, as root) at the end."""
    yield
    remove_test_user()


@pytest.fixture(scope="session")
def sshd(test_user: None) -> Iterator[SSHDServer]:
    server = start_sshd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def set_connection(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Define an extra Airflow connection for one test: ``set_connection("sftp_bad", {...})``."""

    def _set(conn_id: str, conn: dict[str, Any]) -> str:
        name, value = conn_env(conn_id, conn)
        monkeypatch.setenv(name, value)
        return conn_id

    return _set


@pytest.fixture
def s3(moto: MotoServer):  # type: ignore[no-untyped-def]
    """A boto3 S3 client on the moto endpoint."""
    return moto.client()


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def remote_dir(sshd: SSHDServer) -> Path:
    """A fresh directory on the SFTP server, owned by the login user (same path locally and remotely)."""
    path = sshd.root / uuid.uuid4().hex[:12]
    path.mkdir()
    os.chown(path, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    return path


def open_sftp(server: SSHDServer) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    """Open an independent SFTP session, e.g. for an observer running beside a transfer."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_data = server.host_key.split()
    client.get_host_keys().add(
        f"[127.0.0.1]:{server.port}",
        key_type,
        paramiko.PKey.from_type_string(key_type, __import__("base64").b64decode(key_data)),
    )
    client.connect(
        "127.0.0.1",
        port=server.port,
        username=server.user,
        key_filename=str(server.key_file),
        look_for_keys=False,
        allow_agent=False,
    )
    return client, client.open_sftp()


@pytest.fixture
def observer_sftp(sshd: SSHDServer) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session of its own, independent of the one the code under test uses."""
    client, sftp = open_sftp(sshd)
    yield sftp
    sftp.close()
    client.close()
