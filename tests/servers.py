# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Real servers for tests and benchmarks: OpenSSH ``sshd`` and moto's S3 server on loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# When the tests run as root, sshd logs in an unprivileged user so that permission checks are real.
TEST_USER = "s3sftp"
TEST_PASSWORD = "s3sftp-Secret-Pa55"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def ensure_test_user() -> str:
    """Return the login for the test sshd, creating the unprivileged test user when running as root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{TEST_USER}:{TEST_PASSWORD}", text=True, check=True)
    return TEST_USER


@dataclass
class SSHDServer:
    """A running OpenSSH server with its own host key, user key and SFTP root directory."""

    port: int
    user: str
    key_file: Path
    host_key: str  # "ssh-ed25519 AAAA..." as the sftp connection's ``host_key`` extra wants it
    root: Path  # a directory the test user owns; tests put their files below it
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def connection(self, **extra: object) -> dict[str, object]:
        """Return an Airflow ``sftp`` connection (as a dict) for this server."""
        extras: dict[str, object] = {"key_file": str(self.key_file), "host_key": self.host_key}
        extras.update(extra)
        return {
            "conn_type": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "login": self.user,
            "extra": {k: v for k, v in extras.items() if v is not None},
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "s3sftp-test", "-f", str(path)], check=True
    )


def start_sshd(*, port: int | None = None, extra_config: tuple[str, ...] = ()) -> SSHDServer:
    """Start ``sshd`` on a loopback port with a generated config, host key and user key.

    Its files live in a fresh world-traversable directory under /tmp, since the unprivileged
    test user must read its ``authorized_keys`` and write below the SFTP root.
    """
    workdir = Path(tempfile.mkdtemp(prefix="s3sftp-sshd-"))
    workdir.chmod(0o755)
    user = ensure_test_user()
    pw = pwd.getpwnam(user)
    host_key, user_key = workdir / "ssh_host_ed25519_key", workdir / "id_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    authorized = workdir / "authorized_keys"
    shutil.copy(user_key.with_suffix(".pub"), authorized)
    authorized.chmod(0o644)
    root = workdir / "sftp-root"
    root.mkdir()
    os.chown(root, pw.pw_uid, pw.pw_gid)
    port = port or free_port()
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin yes",
                "MaxSessions 100",
                "MaxStartups 200:30:400",
                "LogLevel ERROR",
                f"Subsystem sftp {SFTP_SERVER}",
                *extra_config,
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (workdir / "sshd.log").open("wb")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    host_pub = host_key.with_suffix(".pub").read_text().split()
    return SSHDServer(
        port=port,
        user=user,
        key_file=user_key,
        host_key=f"{host_pub[0]} {host_pub[1]}",
        root=root,
        workdir=workdir,
        process=process,
    )


@dataclass
class MotoServer:
    """moto's S3 server in a subprocess: a real HTTP endpoint."""

    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self) -> dict[str, object]:
        """Return an Airflow ``aws`` connection (as a dict) for this endpoint."""
        return {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_moto(port: int | None = None, *, enforce_iam_after: int | None = None) -> MotoServer:
    """Start ``moto_server`` on a loopback port and wait until it answers HTTP.

    ``enforce_iam_after=N`` lets the first N requests through unauthenticated (to set things up)
    and then checks credentials and IAM policies like AWS does.
    """
    port = port or free_port()
    moto = Path(sys.executable).with_name("moto_server")
    env = dict(os.environ)
    if enforce_iam_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(enforce_iam_after)
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise TimeoutError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)
    return MotoServer(port=port, process=process)


def conn_env(conn_id: str, conn: dict[str, object]) -> tuple[str, str]:
    """Return the ``AIRFLOW_CONN_<ID>`` variable name and JSON value for a connection dict."""
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn)


@contextlib.contextmanager
def running_servers() -> Iterator[tuple[SSHDServer, MotoServer]]:
    """Run one sshd and one moto server for the duration of the block."""
    sshd = start_sshd()
    try:
        moto = start_moto()
        try:
            yield sshd, moto
        finally:
            moto.stop()
    finally:
        sshd.stop()
