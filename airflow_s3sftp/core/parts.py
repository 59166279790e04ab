# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Several SFTP channels per object: stripes written in order into hidden part files, joined by the server.

One SFTP channel carries at most the server's channel window per round trip (OpenSSH opens 2 MiB:
about 21 MB/s at 100 ms). Each SSH channel has a window of its own, so a long link is filled by
several channels at once. They must not write into one file at scattered offsets (the file would
reach its final size before its bytes are there: the race this package exists to prevent), so:

- the object is cut into stripes of ``stripe_size`` bytes; stripe ``j`` goes to channel
  ``j mod N``, appended to that channel's hidden **part file**: every part file is written strictly
  in offset order, by one channel, from the one in-order S3 stream (which hashes the whole object
  in order as it is read);
- when every part file is complete (fsynced, its size checked), the server copies the stripes, in
  the order of their offsets, into the delivery's hidden temp file with OpenSSH's ``copy-data``
  extension (all requests pipelined: one round trip or so for the whole join); the temp file thus
  also receives every byte in offset order; then the part files are removed, and the delivery
  verifies and renames the temp file as always.

The parts need the object's size twice on the server for a moment; :func:`plan_striping` falls
back to one channel (logged) where the server offers no ``copy-data``, grants no extra channel, or
``statvfs`` says the room is not there.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from paramiko import SFTPAttributes

    from airflow_s3sftp.core.remote import Remote, RemoteFile

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True)
class Striping:
    """How one object is spread over channels: ``channels`` part files, stripes of ``stripe_size``."""

    channels: int
    stripe_size: int

    def lane_of(self, offset: int) -> int:
        """Return the channel (part file) that carries the byte at ``offset``."""
        return (offset // self.stripe_size) % self.channels

    def pieces(self, size: int) -> list[tuple[int, int, int, int]]:
        """Return ``(lane, offset in its part file, length, offset in the object)`` per stripe, in order."""
        out = []
        for index, begin in enumerate(range(0, size, self.stripe_size)):
            lane = index % self.channels
            out.append(
                (
                    lane,
                    (index // self.channels) * self.stripe_size,
                    min(self.stripe_size, size - begin),
                    begin,
                )
            )
        return out

    def part_sizes(self, size: int) -> list[int]:
        """Return the bytes each part file holds once the whole object is written."""
        sizes = [0] * self.channels
        for lane, _, length, _ in self.pieces(size):
            sizes[lane] += length
        return sizes


def part_token(token: str, lane: int) -> str:
    """Return the 12-hex token of part file ``lane`` of the delivery whose temp token is ``token``.

    Derived, not random: the delivery that owns the parts can name (and remove) them on any
    session, and the sweep recognises them as temp files of the same final name.
    """
    return hashlib.sha256(f"{token}/part/{lane}".encode()).hexdigest()[:12]


class _Lane(threading.Thread):
    """One channel's worker: appends the stripes it is handed to its part file, in order.

    It holds up to ``budget`` bytes handed over and not yet sent (at least one piece): enough for
    the producer to hand a whole stripe to each of the other lanes in turn while this one keeps
    its channel's window full.
    """

    def __init__(self, file: RemoteFile, budget: int) -> None:
        super().__init__(name=f"s3sftp-lane-{file.path.rsplit('/', 1)[-1]}", daemon=True)
        self.file = file
        self.budget = budget
        self.pending: collections.deque[bytes | None] = collections.deque()
        self.held = 0  # bytes in ``pending``
        self.room = threading.Condition()
        self.error: BaseException | None = None
        self.landed: SFTPAttributes | None = None
        self._sync = True
        self._aborted = False

    def run(self) -> None:
        try:
            while True:
                with self.room:
                    self.room.wait_for(lambda: bool(self.pending))
                    data = self.pending[0]
                if data is None:
                    break
                if self._aborted:
                    return
                self.file.write(data)
                with self.room:
                    self.pending.popleft()
                    self.held -= len(data)
                    self.room.notify_all()
            if not self._aborted:
                self.landed = self.file.finish(sync=self._sync)
        except BaseException as err:  # handed to the caller's thread, which raises it
            with self.room:
                self.error = err
                self.pending.clear()
                self.held = 0
                self.room.notify_all()

    def put(self, data: bytes | None, stop: threading.Event) -> None:
        size = 0 if data is None else len(data)
        with self.room:
            while True:
                if self.error is not None:
                    raise self.error
                if stop.is_set():
                    raise RuntimeError("striped write aborted")
                if not self.held or self.held + size <= self.budget:
                    self.pending.append(data)
                    self.held += size
                    self.room.notify_all()
                    return
                if not self.is_alive():
                    raise RuntimeError("a lane stopped")
                self.room.wait(timeout=0.5)  # woken by the lane; the timeout re-checks ``stop``

    def stop(self) -> None:
        """End the lane without finishing its file (after a failure)."""
        with self.room:
            self._aborted = True
            self.pending.clear()
            self.pending.append(None)
            self.held = 0
            self.room.notify_all()

    def finish(self, sync: bool) -> None:
        self._sync = sync


class StripedFile:
    """A :class:`~airflow_s3sftp.core.remote.RemoteFile` spread over several channels, joined on the server.

    :param remote: the delivery's port (its channel joins the parts into ``target``)
    :param target: the delivery's temp file, open and still empty
    :param parts: one part file per channel, each created on its own channel's port, empty
    :param striping: how the object is spread
    :param size: the object's size
    :param budget: bytes handed to a channel and not yet sent, at most (memory: about ``budget`` per
        channel); None: two stripes, so that every channel keeps its window full while the others
        receive a stripe each
    """

    def __init__(
        self,
        remote: Remote,
        target: RemoteFile,
        parts: Sequence[RemoteFile],
        striping: Striping,
        size: int,
        *,
        budget: int | None = None,
    ) -> None:
        self.path = target.path
        self._remote, self._target, self._striping, self._size = remote, target, striping, size
        self._lanes = [_Lane(part, budget or 2 * striping.stripe_size) for part in parts]
        self._stop = threading.Event()
        self._position = target.position
        for lane in self._lanes:
            lane.start()

    @property
    def part_paths(self) -> list[str]:
        return [lane.file.path for lane in self._lanes]

    @property
    def position(self) -> int:
        return self._position

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        stripe = self._striping.stripe_size
        while view:
            room = stripe - self._position % stripe
            piece, view = view[:room], view[room:]
            # A whole chunk within one stripe goes as it is; only a chunk across stripes is copied.
            whole = len(piece) == len(data) and isinstance(data, bytes)
            self._lanes[self._striping.lane_of(self._position)].put(
                data if whole else bytes(piece), self._stop
            )
            self._position += len(piece)
        return len(data)

    def finish(self, *, sync: bool) -> SFTPAttributes | None:
        for lane in self._lanes:
            lane.finish(sync)
            lane.put(None, self._stop)
        for lane in self._lanes:
            lane.join()
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error
        expected = self._striping.part_sizes(self._size)
        for lane, wanted in zip(self._lanes, expected, strict=True):
            if lane.landed is None or lane.landed.st_size != wanted:
                got = None if lane.landed is None else lane.landed.st_size
                raise OSError(f"SFTP part file {lane.file.path!r} holds {got} bytes, expected {wanted}")
        self._remote.join(self._target, self.part_paths, self._striping.pieces(self._size))
        return self._target.finish(sync=sync)

    def checkpoint(self, on_synced: Callable[[int], None]) -> None:
        """Take no checkpoint: parts are joined only once complete, so a new process starts them again."""

    def server_time(self) -> float | None:
        return self._target.server_time()

    def abort(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            lane.stop()
        for lane in self._lanes:
            lane.join(timeout=5)  # a lane stuck on a stalled channel ends with the channel's timeout
            lane.file.abort()
        self._target.abort()
