# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""``python -m demo`` end to end, and the embedded asyncssh SFTP server it is built on."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import asyncssh
import paramiko
import pytest

from testservers.embedded_sftp import EmbeddedSFTPServer

REPO = Path(__file__).resolve().parents[2]


def session_members(sid: int) -> list[str]:
    """Return the live processes of session ``sid`` (the demo runs as a session leader)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(f"{entry.name} {cmdline[:120]}")
    return found


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_demo_delivers_verifies_and_leaves_nothing_running(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    # The test session defines AIRFLOW_CONN_* for its own sshd and moto: the demo must ignore them.
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--size-mib", "2", "--summary-json", str(summary_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    leftovers = session_members(process.pid)

    assert process.returncode == 0, output
    summary = json.loads(summary_path.read_text())
    assert summary["state"] == "success"
    assert summary["sftp_path"] == "/inbound/partner/sample-2MiB.bin"
    assert summary["size"] == 2 * 1024 * 1024
    assert summary["checksum_verified"] is True
    assert summary["checksum"] == summary["sensor_checksum"] == f"sha256:{summary['seeded_sha256']}"
    assert summary["landed_sha256"] == summary["seeded_sha256"]
    assert summary["published_with"].startswith("posix-rename")
    assert summary["mb_per_s"] > 0
    # What the user reads.
    lines = {line.split(None, 1)[0]: line for line in output.splitlines() if line.startswith("  ")}
    assert "/inbound/partner/sample-2MiB.bin on 127.0.0.1:" in lines["landed"]
    assert "2,097,152" in lines["bytes"]
    assert "MB/s" in lines["throughput"]
    assert "checksum verified" in lines["sensor"]
    assert "no process left running" in lines["cleanup"]
    # Nothing left behind: no process of the demo's session, no listener, no work directory.
    assert leftovers == []
    assert summary["leftover_processes"] == []
    assert not listening(summary["s3_port"])
    assert not listening(summary["sftp_port"])
    assert not Path(summary["workdir"]).exists()


def test_demo_refuses_real_mode_without_connections(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.pop("AIRFLOW__SECRETS__BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--real", "--bucket", "nowhere"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "AIRFLOW_CONN_AWS_DEFAULT and AIRFLOW_CONN_SFTP_DEFAULT" in result.stderr


def connect(
    server: EmbeddedSFTPServer, *, username: str | None = None, key_file: Path | None = None
) -> paramiko.SSHClient:
    assert server.host_key is not None and server.port is not None
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_data = server.host_key.split()
    client.get_host_keys().add(
        f"[127.0.0.1]:{server.port}",
        key_type,
        paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data)),
    )
    client.connect(
        "127.0.0.1",
        port=server.port,
        username=username or server.username,
        key_filename=str(key_file or server.client_key_path),
        look_for_keys=False,
        allow_agent=False,
    )
    return client


class TestEmbeddedSFTPServer:
    def test_serves_its_root_as_slash_with_posix_rename(self, tmp_path: Path) -> None:
        (tmp_path / "outside.txt").write_text("not served")
        root = tmp_path / "root"
        root.mkdir()
        with EmbeddedSFTPServer() as server:
            server.start(root)
            assert server.host_key is not None and server.host_key.startswith("ssh-ed25519 AAAA")
            client = connect(server)
            sftp = client.open_sftp()
            sftp.mkdir("/inbox")
            with sftp.open("/inbox/.part", "wb") as remote:
                remote.write(b"new content")
            with sftp.open("/inbox/data.bin", "wb") as remote:
                remote.write(b"old")
            sftp.posix_rename("/inbox/.part", "/inbox/data.bin")
            names = sftp.listdir("/inbox")
            with pytest.raises(FileNotFoundError):
                sftp.stat("/../outside.txt")
            client.close()

        assert names == ["data.bin"]
        assert (root / "inbox" / "data.bin").read_bytes() == b"new content"

    def test_accepts_only_its_user_and_key(self, tmp_path: Path) -> None:
        with EmbeddedSFTPServer(username="alice") as server:
            server.start(tmp_path)
            with pytest.raises(paramiko.AuthenticationException):
                connect(server, username="bob")
            other_key = tmp_path / "other_key"
            other_key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
            with pytest.raises(paramiko.AuthenticationException):
                connect(server, key_file=other_key)
            connect(server).close()

    def test_stop_closes_connections_and_the_listener(self, tmp_path: Path) -> None:
        server = EmbeddedSFTPServer()
        port = server.start(tmp_path)
        client = connect(server)
        key_dir = server.workdir
        threads_before = {t.name for t in threading.enumerate()}

        server.stop()

        assert "embedded-sftp-server" in threads_before
        assert "embedded-sftp-server" not in {t.name for t in threading.enumerate()}
        assert not listening(port)
        assert key_dir is not None and not key_dir.exists()
        transport = client.get_transport()
        assert transport is not None
        transport.join(timeout=5)
        assert not transport.is_active()
        client.close()

    def test_airflow_connection_pins_the_host_key(self, tmp_path: Path) -> None:
        with EmbeddedSFTPServer() as server:
            port = server.start(tmp_path)
            conn = server.connection()

        assert conn["port"] == port and conn["host"] == "127.0.0.1" and conn["login"] == "demo"
        assert conn["extra"]["host_key"] == server.host_key
        assert conn["extra"]["key_file"].endswith("id_ed25519")
        assert json.loads(json.dumps(conn)) == conn  # JSON-able, as AIRFLOW_CONN_* wants it


def test_embedded_server_works_with_the_openssh_fixture_helpers(tmp_path: Path) -> None:
    from tests.conftest import open_sftp

    with EmbeddedSFTPServer() as server:
        server.start(tmp_path)
        client, sftp = open_sftp(server)  # type: ignore[arg-type]
        with sftp.open("/hello.txt", "wb") as remote:
            remote.write(b"hello")
        sftp.close()
        client.close()

    assert (tmp_path / "hello.txt").read_bytes() == b"hello"
