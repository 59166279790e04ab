# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The server matrix: OpenSSH, Green End (as sshd's subsystem), ProFTPD mod_sftp and asyncssh, each real."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from testservers.embedded_sftp import EmbeddedSFTPServer
from testservers.processes import conn_env, start_proftpd, start_sftp_server

SERVERS = ["openssh", "greenend", "proftpd", "asyncssh"]


@dataclass
class MatrixServer:
    """One running SFTP server: its name, port, Airflow connection, and where its files are locally."""

    name: str
    port: int
    conn: dict[str, object]
    local_root: Path  # the directory the server's files live in, as this process sees it
    remote_root: str  # the same directory as the server names it
    owner: tuple[int, int]

    def remote(self, local: Path) -> str:
        return self.remote_root.rstrip("/") + "/" + local.relative_to(self.local_root).as_posix()

    def new_dir(self) -> Path:
        path = self.local_root / uuid.uuid4().hex[:12]
        path.mkdir()
        os.chown(path, *self.owner)
        return path

    def connect(self) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
        """Open an SFTP session of its own (host key pinned), e.g. to probe or observe."""
        extra = self.conn["extra"]
        assert isinstance(extra, dict)
        key_type, key_data = str(extra["host_key"]).split()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(
            f"[127.0.0.1]:{self.port}",
            key_type,
            paramiko.PKey.from_type_string(key_type, __import__("base64").b64decode(key_data)),
        )
        client.connect(
            "127.0.0.1",
            port=self.port,
            username=str(self.conn["login"]),
            key_filename=str(extra["key_file"]),
            look_for_keys=False,
            allow_agent=False,
        )
        return client, client.open_sftp()


def _start(name: str) -> Iterator[MatrixServer]:
    if name == "asyncssh":
        root = Path(tempfile.mkdtemp(prefix="s3sftp-asyncssh-root-"))
        with EmbeddedSFTPServer() as embedded:
            port = embedded.start(root)
            yield MatrixServer(name, port, embedded.connection(), root, "/", (os.getuid(), os.getgid()))
        return
    if name == "proftpd-no-posix-rename":
        server = start_proftpd(extra_config=("SFTPExtensions -posixRename",))
    else:
        server = start_sftp_server(name)
    try:
        stat = server.root.stat()
        yield MatrixServer(
            name, server.port, server.connection(), server.root, str(server.root), (stat.st_uid, stat.st_gid)
        )
    finally:
        server.stop()


@pytest.fixture(scope="module", params=SERVERS)
def sftp_server(request: pytest.FixtureRequest, test_user: None) -> Iterator[MatrixServer]:
    """Each server of the matrix in turn, with ``sftp_<name>`` defined as an Airflow connection."""
    for server in _start(request.param):
        name, value = conn_env(f"sftp_{server.name}".replace("-", "_"), server.conn)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(name, value)
            yield server


@pytest.fixture(scope="module")
def proftpd_without_posix_rename(test_user: None) -> Iterator[MatrixServer]:
    """ProFTPD with ``posix-rename@openssh.com`` switched off: the fallback meets a real server."""
    for server in _start("proftpd-no-posix-rename"):
        name, value = conn_env("sftp_proftpd_no_posix_rename", server.conn)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(name, value)
            yield server


def conn_id(server: MatrixServer) -> str:
    return f"sftp_{server.name}".replace("-", "_")
