# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""What an SFTP server can do and how it applies pipelined writes: :func:`detect_server`'s profile.

The profile comes from the SSH banner and the SFTP extensions the server announces in its VERSION
packet. paramiko reads that packet when it opens a session and throws the extension list away, so
:func:`probe_extensions` asks again on a second ``sftp`` subsystem channel of the same SSH connection (one
channel open, no new handshake) and closes it. The facts behind each rule are measured by
tests/integration/servers/test_server_matrix.py and tabled in docs/servers.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    import paramiko

_FXP_INIT, _FXP_VERSION = 1, 2
_MAX_PACKET = 256 * 1024


@dataclass(frozen=True)
class ServerProfile:
    """An SFTP server's identity and whether pipelined writes land in the order sent.

    The abilities a delivery uses (``posix-rename@openssh.com``, ``fsync@openssh.com``,
    ``limits@openssh.com``) are asked of the session where they are used, not kept here.

    :param name: ``openssh``, ``greenend``, ``proftpd``, ``asyncssh`` or ``unknown``
    :param pipelined_writes_in_order: WRITE requests sent back to back are applied in the order sent
        (a single-threaded server); ``False`` for a server that applies them on several threads, and for any
        server not known to be in order (then ``strict_order=None`` keeps one write in flight)
    :param copy_data: the server copies byte ranges between its files (``copy-data``): parts written on
        several channels can be joined on the server (:mod:`airflow_s3sftp.core.parts`)
    """

    name: str
    pipelined_writes_in_order: bool
    copy_data: bool = False

    @property
    def channels_side_by_side(self) -> bool:
        """Return whether several SFTP channels of one connection work at once, each on its own files.

        Measured: ProFTPD 1.3.8 answers "Invalid handle" to a WRITE now and then while another SFTP
        channel of the same connection opens and renames files; OpenSSH and asyncssh do not.
        """
        return self.name in ("openssh", "asyncssh")


def detect_server(sftp: paramiko.SFTPClient) -> ServerProfile:
    """Return the profile of the server behind ``sftp``, probing its extensions on a second channel."""
    transport = sftp.get_channel().get_transport()  # type: ignore[union-attr]
    return profile_for(str(transport.remote_version), probe_extensions(transport))


def profile_for(banner: str, extensions: Mapping[str, bytes]) -> ServerProfile:
    """Return the profile of a server from its SSH banner and its SFTP extensions (pure; unit-tested)."""
    software = banner.split("-", 2)[-1] if banner.startswith("SSH-") else banner
    vendor = _vendor_name(extensions.get("vendor-id", b""))
    if vendor == "Green End" or any(name.endswith("@rjk.greenend.org.uk") for name in extensions):
        # Runs as OpenSSH's sftp subsystem (so the banner is OpenSSH's) and applies requests on a thread
        # pool: the replies to pipelined writes come back out of order (measured), so writes land so too.
        name, in_order = "greenend", False
    elif software.startswith("mod_sftp"):
        name, in_order = "proftpd", True
    elif software.startswith("OpenSSH"):
        name, in_order = "openssh", True
    elif software.startswith("AsyncSSH"):
        name, in_order = "asyncssh", True
    else:
        name, in_order = "unknown", False
    return ServerProfile(name=name, pipelined_writes_in_order=in_order, copy_data="copy-data" in extensions)


def probe_extensions(transport: paramiko.Transport, *, timeout: float = 15.0) -> dict[str, bytes]:
    """Return the SFTP extensions the server announces in its VERSION packet, name to data.

    Opens an ``sftp`` subsystem channel of its own on ``transport``, sends INIT (version 3), reads the
    VERSION packet and closes the channel.
    """
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.invoke_subsystem("sftp")
        _send(channel, struct.pack(">BI", _FXP_INIT, 3))
        kind, body = _receive(channel)
        if kind != _FXP_VERSION:
            raise OSError(f"SFTP server answered INIT with packet type {kind}, not VERSION")
        return dict(_pairs(body[4:]))
    finally:
        channel.close()


def _vendor_name(data: bytes) -> str | None:
    try:
        return next(iter(value.decode("utf-8", "replace") for value in _strings(data)), None)
    except (struct.error, IndexError):
        return None


def _strings(data: bytes) -> list[bytes]:
    values, offset = [], 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + length > len(data):
            break
        values.append(data[offset : offset + length])
        offset += length
    return values


def _pairs(data: bytes) -> list[tuple[str, bytes]]:
    items = _strings(data)
    return [(items[i].decode("utf-8", "replace"), items[i + 1]) for i in range(0, len(items) - 1, 2)]


def _send(channel: paramiko.Channel, payload: bytes) -> None:
    channel.sendall(struct.pack(">I", len(payload)) + payload)


def _receive(channel: paramiko.Channel) -> tuple[int, bytes]:
    (length,) = struct.unpack(">I", _read_exactly(channel, 4))
    if not 1 <= length <= _MAX_PACKET:
        raise OSError(f"SFTP server sent a packet of {length} bytes")
    packet = _read_exactly(channel, length)
    return packet[0], packet[1:]


def _read_exactly(channel: paramiko.Channel, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = channel.recv(count - len(data))
        if not chunk:
            raise EOFError("SFTP server closed the channel during the extension probe")
        data += chunk
    return data
