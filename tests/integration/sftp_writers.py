# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Adversarial SFTP uploaders for the stability sensor tests, each on a real SFTP session in a thread."""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

import paramiko

from tests.conftest import open_sftp
from testservers.processes import SSHDServer

OLD_MTIME = int(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).timestamp())


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(eq=False)  # threads must stay hashable
class SlowWriter(threading.Thread):
    """
    Upload ``data`` in ``pieces`` with pauses, the way a slow or parallel uploader does.

    ``out_of_order`` writes the last byte first, so the file has its final size at once and only its
    content is still changing. ``stall_after``/``stall`` pause once mid-file. ``preserve_mtime`` resets
    the mtime to an old time after every write, as uploaders that "preserve times" do.
    """

    server: SSHDServer
    path: str
    data: bytes
    pieces: int = 6
    pause: float = 0.3
    out_of_order: bool = False
    stall_after: int | None = None
    stall: float = 0.0
    preserve_mtime: bool = False
    finished_at: float | None = None  # time.monotonic() after the last write
    finished_utc: datetime.datetime | None = None
    error: BaseException | None = None
    sizes_seen: list[int] = field(default_factory=list)  # size after each write, from the writer's session

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        try:
            self._upload()
        except BaseException as err:  # surfaced by join_checked()
            self.error = err

    def _upload(self) -> None:
        client, sftp = open_sftp(self.server)
        try:
            step = -(-len(self.data) // self.pieces)
            with sftp.open(self.path, "wb") as remote:
                if self.out_of_order:
                    remote.seek(len(self.data) - 1)
                    remote.write(self.data[-1:])
                    remote.flush()
                    self._after_write(sftp)
                for index, offset in enumerate(range(0, len(self.data), step)):
                    time.sleep(self.pause)
                    if self.stall_after is not None and index == self.stall_after:
                        time.sleep(self.stall)
                    remote.seek(offset)
                    remote.write(self.data[offset : offset + step])
                    remote.flush()
                    self._after_write(sftp)
            if self.preserve_mtime:
                sftp.utime(self.path, (OLD_MTIME, OLD_MTIME))
            self.finished_at = time.monotonic()
            self.finished_utc = datetime.datetime.now(datetime.UTC)
        finally:
            sftp.close()
            client.close()

    def _after_write(self, sftp: paramiko.SFTPClient) -> None:
        if self.preserve_mtime:
            sftp.utime(self.path, (OLD_MTIME, OLD_MTIME))
        self.sizes_seen.append(int(sftp.stat(self.path).st_size or 0))

    def join_checked(self, timeout: float = 30) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.finished_at is not None, "the writer did not finish"


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
