# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""An embedded SFTP server built on asyncssh: one directory served as ``/`` on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.utils import CryptographyDeprecationWarning

if TYPE_CHECKING:
    from types import TracebackType

# As in airflow_s3sftp/hooks/__init__.py: asyncssh's algorithm tables touch names some cryptography
# releases deprecate (DSA, ARC4, TripleDES) while it loads; the demo's first lines should not be that.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")
    import asyncssh

__all__ = ["EmbeddedSFTPServer"]

_START_TIMEOUT = 15.0


class _OneUserServer(asyncssh.SSHServer):
    """SSH server policy: public-key login of one user with one key, nothing else."""

    def __init__(self, owner: EmbeddedSFTPServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._owner.username and key.public_data == self._owner._client_public_data


class EmbeddedSFTPServer:
    """
    Serve a local directory over SFTP from a background thread, for demos and tests.

    The server listens on ``127.0.0.1`` only, generates a fresh Ed25519 host key and client key in a
    temporary directory, accepts exactly one user logging in with that client key, and serves
    ``root_dir`` as ``/`` through asyncssh's :class:`asyncssh.SFTPServer` with its virtual chroot. It
    offers the OpenSSH extensions asyncssh implements, among them ``posix-rename@openssh.com``,
    ``fsync@openssh.com`` and ``limits@openssh.com``. No root, no system ``sshd``, no child process.

    Use it as a context manager::

        with EmbeddedSFTPServer() as server:
            port = server.start(root_dir)
            conn = server.connection()  # an Airflow ``sftp`` connection as a dict, host key included

    :param username: the one login the server accepts
    :param host: loopback address to listen on
    :param port: port to listen on; 0 picks a free one
    :param sftp_server_class: the asyncssh ``SFTPServer`` subclass serving each session, e.g. one
        that refuses ``posix_rename`` to play a server without that extension
    """

    def __init__(
        self,
        *,
        username: str = "demo",
        host: str = "127.0.0.1",
        port: int = 0,
        sftp_server_class: type[asyncssh.SFTPServer] = asyncssh.SFTPServer,
    ) -> None:
        self.username = username
        self.sftp_server_class = sftp_server_class
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.root: Path | None = None
        self.workdir: Path | None = None
        self.client_key_path: Path | None = None
        self.host_key: str | None = None  # "ssh-ed25519 AAAA...", as the ``host_key`` extra wants it
        self._client_public_data: bytes = b""
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None

    def __enter__(self) -> EmbeddedSFTPServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # The names of testservers.processes.SSHDServer, so helpers written for the OpenSSH fixture take this.
    @property
    def user(self) -> str:
        """Return the login (same as :attr:`username`)."""
        return self.username

    @property
    def key_file(self) -> Path | None:
        """Return the client key path (same as :attr:`client_key_path`)."""
        return self.client_key_path

    @property
    def running(self) -> bool:
        """Return whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, root_dir: str | Path) -> int:
        """Generate keys, start serving ``root_dir`` as ``/`` and return the port."""
        if self.running:
            raise RuntimeError(f"The embedded SFTP server already serves {self.root} on port {self.port}")
        root = Path(root_dir).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"SFTP root {root} is not a directory")
        self.root = root
        self.workdir = Path(tempfile.mkdtemp(prefix="s3sftp-embedded-sftp-"))
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519", comment="s3sftp-demo")
        self.client_key_path = self.workdir / "id_ed25519"
        self.client_key_path.touch(mode=0o600)
        self.client_key_path.write_bytes(client_key.export_private_key("openssh"))
        self.client_key_path.with_suffix(".pub").write_bytes(client_key.export_public_key("openssh"))
        self._client_public_data = client_key.public_data
        key_type, key_data = host_key.export_public_key("openssh").decode().split()[:2]
        self.host_key = f"{key_type} {key_data}"

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="embedded-sftp-server", daemon=True
        )
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self._listen(host_key, root), self._loop)
            self.port = future.result(timeout=_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self.port

    async def _listen(self, host_key: asyncssh.SSHKey, root: Path) -> int:
        def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return self.sftp_server_class(chan, chroot=str(root).encode())

        self._acceptor = await asyncssh.listen(
            self.host,
            self._requested_port,
            server_factory=lambda: _OneUserServer(self),
            server_host_keys=[host_key],
            sftp_factory=sftp_factory,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=0,
        )
        return int(self._acceptor.get_port())

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.close()
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), timeout=5)
        self._connections.clear()

    def stop(self) -> None:
        """Close every connection, stop the server thread and delete the generated keys."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = None
        self._thread = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def connection(self, **extra: Any) -> dict[str, Any]:
        """Return an Airflow ``sftp`` connection (as a dict) for this server, host key pinned."""
        if self.port is None or self.client_key_path is None or self.host_key is None:
            raise RuntimeError("Start the embedded SFTP server before asking for its connection")
        extras: dict[str, Any] = {"key_file": str(self.client_key_path), "host_key": self.host_key}
        extras.update(extra)
        return {
            "conn_type": "sftp",
            "host": self.host,
            "port": self.port,
            "login": self.username,
            "extra": {k: v for k, v in extras.items() if v is not None},
        }
