# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Do non-overlapping pipelined WRITEs on one Green End handle land in the FILE out of order?

The order of the replies says little (a worker may finish its write and answer late); the file
says it all. A poller on the server's disk watches the file while the writes are in flight: every
written byte is non-zero, so a region the file holds below its end that is still unwritten (a
hole, found with ``SEEK_HOLE`` and confirmed by reading zeros there) is a write that landed before
one at a lower offset. OpenSSH's sftp-server, which handles requests one at a time, is the control.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from paramiko import Message, SFTPClient
from paramiko.sftp import CMD_STATUS, CMD_WRITE, SFTP_OK, int64

from tests.integration.servers.conftest import MatrixServer, _start

BLOCK = 32 * 1024
WRITES = 256  # 8 MiB per file
IN_FLIGHT = 64
#: Files written at most: OpenSSH (the control) gets them all; Green End until the poller sees a hole
#: (measured: 2 holes in 24 files of 256 writes, 64 in flight, on a loaded 2-core machine).
FILES = {"greenend": 400, "openssh": 24}


@pytest.fixture(scope="module", params=["greenend", "openssh"])
def server(request: pytest.FixtureRequest, test_user: None) -> Iterator[MatrixServer]:
    yield from _start(request.param)


class HoleWatcher(threading.Thread):
    """Polls one file on the server's disk; records every hole seen below the file's end."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.looks = 0
        self.holes: list[tuple[int, int]] = []  # (hole offset, file size) with zeros read at the hole

    def run(self) -> None:
        while not self.path.exists():
            if self.stop.is_set():
                return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while not self.stop.is_set():
                size = os.fstat(fd).st_size
                self.looks += 1
                if not size:
                    continue
                hole = os.lseek(fd, 0, os.SEEK_HOLE)  # the end of the file when there is none
                if hole < size and os.pread(fd, 1, hole) == b"\0":
                    self.holes.append((hole, size))
        finally:
            os.close(fd)


class _Replies:
    """Receives paramiko's replies to our WRITEs (``_async_response``), checking each status."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.errors: list[str] = []

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        code = msg.get_int() if kind == CMD_STATUS else None
        if code != SFTP_OK:
            self.errors.append(f"reply {num}: kind {kind} status {code}")
        self.order.append(num)


def _pipelined_writes(sftp: SFTPClient, handle: bytes, data: bytes) -> list[int]:
    """Write ``data`` in BLOCK-sized WRITEs in offset order, IN_FLIGHT outstanding; return the reply order."""
    replies = _Replies()
    sent: list[int] = []
    for index in range(len(data) // BLOCK):
        while len(sent) - len(replies.order) >= IN_FLIGHT:
            sftp._read_response()  # type: ignore[attr-defined]  # dispatches to replies
        piece = data[index * BLOCK : (index + 1) * BLOCK]
        sent.append(sftp._async_request(replies, CMD_WRITE, handle, int64(index * BLOCK), piece))  # type: ignore[attr-defined]
    while len(replies.order) < len(sent):
        sftp._read_response()  # type: ignore[attr-defined]
    assert replies.errors == []
    return [sent.index(num) for num in replies.order]


def test_pipelined_writes_land_out_of_order_in_the_file_on_green_end_only(server: MatrixServer) -> None:
    directory = server.new_dir()
    client, sftp = server.connect()
    # No zero byte in the data: any zero below the end of the file is a place no write has reached.
    data = bytes(b or 1 for b in os.urandom(WRITES * BLOCK))
    holes: list[tuple[int, int]] = []
    looks = inversions = 0
    try:
        for number in range(FILES[server.name]):
            local = directory / f"f{number}"
            watcher = HoleWatcher(local)
            watcher.start()
            with sftp.open(server.remote(local), "wb") as handle:
                order = _pipelined_writes(sftp, handle.handle, data)
            inversions += sum(1 for a, b in itertools.pairwise(order) if b < a)
            watcher.stop.set()
            watcher.join(timeout=10)
            holes += watcher.holes
            looks += watcher.looks
            assert local.read_bytes() == data  # every write landed in the end, wherever it went first
            if holes:
                break
    finally:
        client.close()
    print(
        f"{server.name}: {len(holes)} holes seen in {looks} looks at {number + 1} files "
        f"({inversions} replies out of order): {holes[:5]}"
    )
    assert looks > number + 1  # the poller looked while the writes were in flight
    if server.name == "openssh":
        # One request at a time, in arrival order: the file is always a prefix.
        assert holes == []
        assert inversions == 0
    else:
        # Green End's thread pool: a WRITE at a higher offset lands before one below it. Pipelined
        # writes on Green End are NOT in order in the file: strict_order=None keeps one in flight
        # there, and several channels (parts) are how to fill its window.
        assert holes, f"no hole seen in {number + 1} files of {WRITES} pipelined writes"
        hole, size = holes[0]
        assert hole % BLOCK == 0 and hole < size
