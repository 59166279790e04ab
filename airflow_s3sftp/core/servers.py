# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""What we know about an SFTP server from its banner: does it apply pipelined writes in order?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paramiko import SFTPClient


@dataclass(frozen=True)
class ServerProfile:
    """The facts about one SFTP server that change how we write to it."""

    name: str
    banner: str
    pipelined_writes_in_order: bool


def detect_server(sftp: SFTPClient) -> ServerProfile:
    """Return the profile of the server behind ``sftp``; unknown servers get one write in flight."""
    channel = sftp.get_channel()
    transport = channel.get_transport() if channel is not None else None
    banner = str(getattr(transport, "remote_version", "") or "")
    if "OpenSSH" in banner:
        # OpenSSH's sftp-server handles requests one at a time, in arrival order.
        return ServerProfile("openssh", banner, pipelined_writes_in_order=True)
    return ServerProfile("unknown", banner, pipelined_writes_in_order=False)
