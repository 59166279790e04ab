# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTP connections shared by the transfer hook and the sensor: bulk settings and clear errors."""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import paramiko
from airflow.providers.sftp.hooks.sftp import SFTPHook

from airflow_s3sftp.exceptions import AuthenticationError, HostKeyVerificationError

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)


def bulk_sftp_hook(conn_id: str, **kwargs: Any) -> SFTPHook:
    """Return an ``SFTPHook`` for bulk data: zlib compression off unless the connection asks for it.

    zlib cuts incompressible data to about a quarter of the speed; an explicit ``compress`` extra
    in the connection still wins.
    """
    hook = SFTPHook(ssh_conn_id=conn_id, **kwargs)
    if "compress" not in hook.get_connection(conn_id).extra_dejson:
        hook.compress = False
    if hook.no_host_key_check:
        log.warning(
            "Connection %r sets no_host_key_check: the host key of %s is NOT verified, so a "
            "man-in-the-middle could receive the files",
            conn_id,
            server_name(hook),
        )
    return hook


def server_name(hook: SFTPHook) -> str:
    """Return ``host:port`` of the hook's server, for messages (never a secret)."""
    return f"{hook.remote_host}:{hook.port}"


@contextmanager
def clear_connection_errors(hook: SFTPHook, conn_id: str) -> Iterator[None]:
    """Turn paramiko's connection failures into errors that name the server, the user and the cause."""
    where = server_name(hook)
    try:
        yield
    except paramiko.BadHostKeyException as err:
        raise HostKeyVerificationError(
            f"Host key of SFTP server {where} does not match the one configured in connection "
            f"{conn_id!r}: it changed, or someone is intercepting the connection (server offered "
            f"{err.key.get_name()} {err.key.fingerprint})"
        ) from err
    except paramiko.AuthenticationException as err:
        raise AuthenticationError(
            f"{where} refused the login of user {hook.username!r} (connection {conn_id!r}): {err}"
        ) from err
    except paramiko.SSHException as err:
        if "known_hosts" in str(err):
            raise HostKeyVerificationError(
                f"Host key of SFTP server {where} is unknown: set the host_key extra of connection "
                f"{conn_id!r} (or add the key to known_hosts); no_host_key_check turns checking off"
            ) from err
        raise ConnectionError(f"SSH connection to {where} failed: {err}") from err
    except socket.gaierror as err:
        raise ConnectionError(f"SFTP host {hook.remote_host!r} cannot be resolved: {err}") from err
    except (ConnectionRefusedError, TimeoutError, paramiko.ssh_exception.NoValidConnectionsError) as err:
        raise ConnectionError(f"Cannot connect to SFTP server {where}: {err}") from err
