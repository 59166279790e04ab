# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Servers in child processes on loopback ports: SFTP (OpenSSH, Green End, ProFTPD) and moto's S3."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
GREENEND_SFTP_SERVER = "/usr/libexec/gesftpserver"
PROFTPD = shutil.which("proftpd") or "/usr/sbin/proftpd"
PROFTPD_MODULES = Path("/usr/lib/proftpd")
# When the tests run as root, the SFTP servers log in an unprivileged user so that permission checks are
# real. It is created per process with a random name and password (nothing committed) and removed at exit.
TEST_PASSWORD = secrets.token_urlsafe(18)
_created_user: str | None = None


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
    """Return the login of the test servers, creating the unprivileged test user when running as root.

    As root, one user ``s3sftp-<random>`` with the random :data:`TEST_PASSWORD` is created per process and
    removed by :func:`remove_test_user` (also registered with :mod:`atexit`). Otherwise the servers log in
    the current user.
    """
    global _created_user
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    if _created_user is None:
        name = f"s3sftp-{secrets.token_hex(4)}"
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        _created_user = name
        atexit.register(remove_test_user)
        subprocess.run(["chpasswd"], input=f"{name}:{TEST_PASSWORD}", text=True, check=True)
    return _created_user


def remove_test_user() -> None:
    """Remove the test user this process created (its servers must be stopped first)."""
    global _created_user
    if _created_user is None:
        return
    name, _created_user = _created_user, None
    subprocess.run(["userdel", "--force", "--remove", name], check=False, capture_output=True)


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
    name: str = "openssh"  # which SFTP server answers: "openssh", "greenend" or "proftpd"

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


def start_sshd(
    *, port: int | None = None, extra_config: tuple[str, ...] = (), sftp_server: str = "openssh"
) -> SSHDServer:
    """Start ``sshd`` on a loopback port with a generated config, host key and user key.

    ``sftp_server="greenend"`` runs the Green End SFTP server (Debian ``gesftpserver``) as sshd's sftp
    subsystem instead of OpenSSH's ``sftp-server``.

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
                # sshd takes the first value of a keyword: the caller's settings win over the defaults.
                *extra_config,
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
                f"Subsystem sftp {_SUBSYSTEMS[sftp_server]}",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return _serve(
        [SSHD, "-D", "-e", "-f", str(config)],
        workdir / "sshd.log",
        port=port,
        host_key_file=host_key,
        user=user,
        key_file=user_key,
        root=root,
        workdir=workdir,
        name=sftp_server,
    )


def _serve(argv: list[str], log_path: Path, *, port: int, host_key_file: Path, **fields: Any) -> SSHDServer:
    """Start a server process logging to ``log_path`` and wait for its port; ``fields`` describe it."""
    log = log_path.open("wb")
    process = subprocess.Popen(argv, stderr=log, stdout=log)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    host_pub = host_key_file.with_suffix(".pub").read_text().split()
    return SSHDServer(port=port, host_key=f"{host_pub[0]} {host_pub[1]}", process=process, **fields)


_SUBSYSTEMS = {"openssh": SFTP_SERVER, "greenend": GREENEND_SFTP_SERVER}


def start_proftpd(*, port: int | None = None, extra_config: tuple[str, ...] = ()) -> SSHDServer:
    """Start ProFTPD with mod_sftp (Debian ``proftpd-core`` + ``proftpd-mod-crypto``) on a loopback port.

    It gets its own config, ed25519 host key and user key (``SFTPAuthorizedUserKeys`` wants RFC 4716);
    the login and SFTP root are the same as :func:`start_sshd`'s, so a test can use either server.
    """
    if not (PROFTPD_MODULES / "mod_sftp.so").exists():
        raise FileNotFoundError(
            f"{PROFTPD_MODULES / 'mod_sftp.so'} is missing: apt-get install proftpd-core proftpd-mod-crypto"
        )
    workdir = Path(tempfile.mkdtemp(prefix="s3sftp-proftpd-"))
    workdir.chmod(0o755)
    user = ensure_test_user()
    pw = pwd.getpwnam(user)
    host_key, user_key = workdir / "ssh_host_ed25519_key", workdir / "id_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(
        subprocess.run(
            ["ssh-keygen", "-e", "-f", str(user_key.with_suffix(".pub"))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    authorized.chmod(0o644)
    root = workdir / "sftp-root"
    root.mkdir()
    os.chown(root, pw.pw_uid, pw.pw_gid)
    port = port or free_port()
    me = pwd.getpwuid(os.geteuid())
    config = workdir / "proftpd.conf"
    config.write_text(
        "\n".join(
            [
                'ServerName "s3sftp-test-proftpd"',
                "ServerType standalone",
                "DefaultServer on",
                f"Port {port}",
                "DefaultAddress 127.0.0.1",
                "UseIPv6 off",
                "UseReverseDNS off",
                f"ModulePath {PROFTPD_MODULES}",
                "LoadModule mod_sftp.c",
                f"PidFile {workdir / 'proftpd.pid'}",
                f"ScoreboardFile {workdir / 'proftpd.scoreboard'}",
                "DelayTable none",
                "WtmpLog off",
                "TransferLog none",
                f"SystemLog {workdir / 'system.log'}",
                "RequireValidShell off",
                "AuthOrder mod_auth_unix.c",
                "MaxInstances 200",
                # As root it serves each login as that user; otherwise it runs as (and serves) the caller.
                *([] if os.geteuid() == 0 else [f"User {me.pw_name}", f"Group {me.pw_gid}"]),
                "SFTPEngine on",
                f"SFTPLog {workdir / 'sftp.log'}",
                f"SFTPHostKey {host_key}",
                "SFTPAuthMethods publickey password",
                f"SFTPAuthorizedUserKeys file:{authorized}",
                "SFTPCompression off",
                "<Directory />",
                "  AllowOverwrite on",
                "</Directory>",
                *extra_config,
                "",
            ]
        )
    )
    return _serve(
        [PROFTPD, "--nodaemon", "-c", str(config)],
        workdir / "proftpd.log",
        port=port,
        host_key_file=host_key,
        user=user,
        key_file=user_key,
        root=root,
        workdir=workdir,
        name="proftpd",
    )


def start_sftp_server(name: str) -> SSHDServer:
    """Start the SFTP server called ``name``: ``openssh``, ``greenend`` or ``proftpd``."""
    if name == "proftpd":
        return start_proftpd()
    return start_sshd(sftp_server=name)


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
