# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTP connections shared by the transfer hook and the sensor: bulk settings, one attempt, clear errors."""

from __future__ import annotations

import errno
import logging
import os
import socket
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import paramiko
from airflow.providers.sftp.hooks.sftp import SFTPHook

from airflow_s3sftp.exceptions import (
    AuthenticationError,
    ConnectionConfigError,
    ConnectionLostError,
    HostKeyVerificationError,
    UnknownHostError,
    is_final,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)


def connection_not_found_errors() -> tuple[type[Exception], ...]:
    """Return the classes Airflow raises for a connection id it does not know (they moved in Airflow 3)."""
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[attr-defined]

    found: list[type[Exception]] = [AirflowNotFoundException]
    try:
        from airflow.sdk.exceptions import AirflowNotFoundException as SDKNotFound  # noqa: TID251 - guarded
    except ImportError:  # Airflow 2
        pass
    else:
        found.append(SDKNotFound)
    return tuple(found)


def host_key_text(key: paramiko.PKey) -> str:
    """Return what a user compares with the partner: the key's type and SHA256 fingerprint."""
    return f"{key.get_name()} {key.fingerprint}"


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse a server whose host key is not configured, naming the key it offered."""

    def __init__(self, conn_id: str, where: str) -> None:
        self.ssh_conn_id, self.where = conn_id, where

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.close()
        raise HostKeyVerificationError(
            f"Host key of SFTP server {self.where} is unknown (it offered {host_key_text(key)}): set the "
            f"host_key extra of connection {self.ssh_conn_id!r} to the key the partner confirms, e.g. "
            f"'{key.get_name()} {key.get_base64()}' (or add it to known_hosts); no_host_key_check turns "
            "checking off"
        )


class BulkSFTPHook(SFTPHook):
    """The sftp provider's hook, tuned for bulk data and connecting with one attempt and clear errors.

    zlib is off unless the connection's ``compress`` extra asks for it (it cuts incompressible data
    to about a quarter of the speed); AES-GCM is preferred when the connection names no ciphers
    (paramiko then needs no separate HMAC per packet: ~25% less client CPU). :meth:`get_conn`
    makes one connection attempt: a failure that cannot heal (refused login, unknown or changed
    host key, missing or unreadable key file, unknown host, no common cipher) raises a
    :class:`~airflow_s3sftp.exceptions.TaskWideError` naming the connection and the extra to fix;
    one that can (a dropped connection, a timeout, a throttling server) raises
    :class:`~airflow_s3sftp.exceptions.ConnectionLostError`, which the caller retries with backoff.

    :param ssh_conn_id: the Airflow ``sftp`` (or ``ssh``) connection
    :param kwargs: passed to :class:`~airflow.providers.sftp.hooks.sftp.SFTPHook`
    """

    def __init__(self, ssh_conn_id: str = "sftp_default", **kwargs: Any) -> None:
        try:
            super().__init__(ssh_conn_id=ssh_conn_id, **kwargs)
            extra = self.get_connection(ssh_conn_id).extra_dejson
        except connection_not_found_errors() as err:
            raise ConnectionConfigError(
                f"SFTP connection {ssh_conn_id!r} is not defined: create it (or fix sftp_conn_id)"
            ) from err
        if "compress" not in extra:
            self.compress = False
        # A connection that names its ciphers or disabled algorithms keeps exactly those.
        self.prefer_aes_gcm = not self.ciphers and not self.disabled_algorithms
        if self.no_host_key_check:
            log.warning(
                "Connection %r sets no_host_key_check: the host key of %s is NOT verified, so a "
                "man-in-the-middle could receive the files",
                ssh_conn_id,
                server_name(self),
            )

    def get_conn(self) -> paramiko.SFTPClient:  # type: ignore[override]  # as SFTPHook.get_conn
        """Return the SFTP session, connecting with one attempt (see the class docstring)."""
        if self.conn is None:
            client = self._connect()
            try:
                self.conn = client.open_sftp()
            except (OSError, EOFError, paramiko.SSHException) as err:
                client.close()
                raise ConnectionLostError(
                    f"SSH connection to {server_name(self)} (connection {self.ssh_conn_id!r}) dropped while "
                    f"opening SFTP: {err!r}"
                ) from err
            self.client = client
        return self.conn

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        self.close_conn()
        if self.client is not None:
            self.client.close()
            self.client = None

    def _check_key_file(self) -> None:
        """Refuse a ``key_file`` that is missing or unreadable here, before any byte goes to the server."""
        if not self.key_file:
            return
        path = os.path.expanduser(self.key_file)
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise ConnectionConfigError(
                f"The key_file extra of connection {self.ssh_conn_id!r} names {self.key_file!r}, which "
                f"{'does not exist' if err.errno == errno.ENOENT else 'cannot be read'} on this worker "
                f"({err.strerror})"
            ) from err

    def _client(self) -> paramiko.SSHClient:
        """Return an SSH client that checks host keys as the connection says (as ``SSHHook`` does)."""
        client = paramiko.SSHClient()
        if self.allow_host_key_change:
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        else:
            client.load_system_host_keys()
            refuse = _RejectUnknownHostKey(str(self.ssh_conn_id), server_name(self))
            client.set_missing_host_key_policy(refuse)
        if self.no_host_key_check:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # nosec B507 - the user asked
            known_hosts = os.path.expanduser("~/.ssh/known_hosts")
            if not self.allow_host_key_change and os.path.isfile(known_hosts):
                client.load_host_keys(known_hosts)
        elif self.host_key is not None:
            name = self.remote_host if self.port == 22 else f"[{self.remote_host}]:{self.port}"
            client.get_host_keys().add(name, self.host_key.get_name(), self.host_key)
        return client

    def _transport(self, sock: Any, **kwargs: Any) -> paramiko.Transport:
        """Return the transport ``SSHClient.connect`` handshakes on, with our cipher preference."""
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        if self.ciphers:
            try:
                options.ciphers = self.ciphers
            except ValueError as err:
                raise ConnectionConfigError(
                    f"The ciphers extra of connection {self.ssh_conn_id!r} names a cipher paramiko does not "
                    f"know ({', '.join(self.ciphers)}); known: {', '.join(options.ciphers)}"
                ) from err
        elif self.prefer_aes_gcm:
            known = options.ciphers
            gcm = tuple(name for name in known if "-gcm@" in name)
            options.ciphers = gcm + tuple(name for name in known if name not in gcm)
        return transport

    def _connect(self) -> paramiko.SSHClient:
        self._check_key_file()
        client = self._client()
        kwargs: dict[str, Any] = {
            "hostname": self.remote_host,
            "username": self.username,
            "timeout": self.conn_timeout,
            "compress": self.compress,
            "port": self.port,
            "sock": self.host_proxy,
            "look_for_keys": self.look_for_keys,
            "banner_timeout": self.banner_timeout,
            "auth_timeout": getattr(self, "auth_timeout", None),
            "transport_factory": self._transport,
        }
        if self.password:
            kwargs["password"] = self.password.strip()
        if self.pkey:
            kwargs["pkey"] = self.pkey
        if self.key_file:
            kwargs["key_filename"] = os.path.expanduser(self.key_file)
        if self.disabled_algorithms:
            kwargs["disabled_algorithms"] = self.disabled_algorithms
        try:
            with connection_errors(self):
                client.connect(**kwargs)
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None and self.keepalive_interval:
            transport.set_keepalive(self.keepalive_interval)
        return client


def bulk_sftp_hook(conn_id: str, **kwargs: Any) -> BulkSFTPHook:
    """Return a :class:`BulkSFTPHook` for ``conn_id`` (a missing connection raises a clear error)."""
    return BulkSFTPHook(ssh_conn_id=conn_id, **kwargs)


def server_name(hook: SFTPHook) -> str:
    """Return ``host:port`` of the hook's server, for messages (never a secret)."""
    return f"{hook.remote_host}:{hook.port}"


def _login_fix(hook: SFTPHook) -> str:
    """Return which settings of the connection decide the login, for the message of a refused one."""
    used = [name for name, value in (("password", hook.password), ("key_file extra", hook.key_file)) if value]
    if getattr(hook, "pkey", None) is not None:
        used.append("private_key extra")
    return "check its login and " + (" / ".join(used) if used else "credentials (none are set)")


@contextmanager
def connection_errors(hook: BulkSFTPHook) -> Iterator[None]:
    """Sort the failures of one connection attempt: final ones name the extra to fix, the rest may heal."""
    where, conn_id = server_name(hook), hook.ssh_conn_id
    try:
        yield
    except paramiko.BadHostKeyException as err:
        raise HostKeyVerificationError(
            f"Host key of SFTP server {where} does not match the one configured in connection "
            f"{conn_id!r}: it changed, or someone is intercepting the connection (server offered "
            f"{host_key_text(err.key)}, the host_key extra says {host_key_text(err.expected_key)}); "
            "confirm the new key with the partner, then update the host_key extra"
        ) from err
    except paramiko.PasswordRequiredException as err:
        raise ConnectionConfigError(
            f"The key_file of connection {conn_id!r} is encrypted: set the private_key_passphrase extra "
            f"(or the password) to unlock it ({err})"
        ) from err
    except paramiko.AuthenticationException as err:
        if "transport shut down or saw EOF" in str(err):
            # The connection dropped during the login: nothing was refused, another attempt may pass.
            raise ConnectionLostError(f"SSH connection to {where} dropped during the login: {err}") from err
        raise AuthenticationError(
            f"{where} refused the login of user {hook.username!r} (connection {conn_id!r}: "
            f"{_login_fix(hook)}): {err}"
        ) from err
    except socket.gaierror as err:
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise UnknownHostError(
                f"SFTP host {hook.remote_host!r} of connection {conn_id!r} cannot be resolved: check its "
                f"host ({err})"
            ) from err
        raise ConnectionLostError(f"SFTP host {hook.remote_host!r} cannot be resolved now: {err}") from err
    except paramiko.SSHException as err:
        if str(err).startswith("Incompatible ssh"):
            raise ConnectionConfigError(
                f"SFTP server {where} and connection {conn_id!r} share no algorithm: check its ciphers and "
                f"disabled_algorithms extras ({err})"
            ) from err
        raise ConnectionLostError(
            f"SSH connection to {where} (connection {conn_id!r}) failed: {err}"
        ) from err
    except (OSError, EOFError) as err:
        if is_final(err):
            raise
        raise ConnectionLostError(
            f"Cannot connect to SFTP server {where} (connection {conn_id!r}): {err or type(err).__name__}"
        ) from err


@contextmanager
def clear_connection_errors(hook: SFTPHook, conn_id: str) -> Iterator[None]:
    """Turn paramiko's failures of an open session into errors that name the server and the cause."""
    where = server_name(hook)
    try:
        yield
    except paramiko.SSHException as err:
        raise ConnectionError(f"SSH connection to {where} failed: {err}") from err
    except (ConnectionRefusedError, TimeoutError) as err:
        raise ConnectionError(f"Cannot reach SFTP server {where} (connection {conn_id!r}): {err}") from err


def connect_sftp(hook: SFTPHook) -> paramiko.SFTPClient:
    """Connect ``hook`` and open an SFTP session (one attempt; see :class:`BulkSFTPHook`)."""
    sftp: paramiko.SFTPClient = hook.get_conn()
    return sftp


def close_sftp(hook: SFTPHook) -> None:
    """Close the SFTP session and the SSH connection of ``hook``."""
    hook.close_conn()
    if hook.client is not None:
        hook.client.close()
        hook.client = None
