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
- as soon as the server has acknowledged every write of a stripe to its part file, and the
  stripe before it was sent for copying, the server copies it into the delivery's hidden temp file
  with OpenSSH's ``copy-data`` extension (a thread of its own on the delivery's channel, requests
  pipelined): the temp file thus receives every byte in offset order while the data still flows,
  and only the last stripes' copies are left once the parts are complete (their sizes checked);
  then the part files are removed (all REMOVEs at once), and the delivery verifies and renames the
  temp file as always.

Set-up and clean-up are pipelined too: the extra channels open at once, the part files' OPENs go
out together, the join's OPENs and CLOSEs too. Every channel holds up to two stripes handed over
and not yet sent, so that it keeps its window full while the producer serves the others.

The parts need the object's size twice on the server for a moment; ``Delivery._striping`` falls
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

    from airflow_s3sftp.core.remote import Joiner, Remote, RemoteFile

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Bytes all the channels of one object hold, handed over and not yet sent (each at least a stripe,
#: at most two): 8 channels of 2 MiB stripes hold 3 MiB each. Two stripes per channel let every
#: channel keep its window full while the producer deals the others a stripe each; one (the old
#: four chunks against 8 MiB stripes) left the channels waiting in turn (docs/performance.md).
LANES_MEMORY = 24 * MiB


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

    def __init__(self, file: RemoteFile, budget: int, progress: threading.Condition) -> None:
        super().__init__(name=f"s3sftp-lane-{file.path.rsplit('/', 1)[-1]}", daemon=True)
        self.file = file
        self.progress = progress  # notified when the server acknowledged more of the part file
        self.done = False
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
                with self.progress:
                    self.progress.notify_all()
            if not self._aborted:
                self.landed = self.file.finish(sync=self._sync)
        except BaseException as err:  # handed to the caller's thread, which raises it
            with self.room:
                self.error = err
                self.pending.clear()
                self.held = 0
                self.room.notify_all()
        finally:
            with self.progress:
                self.done = True
                self.progress.notify_all()

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


class _Join(threading.Thread):
    """Has the server copy each stripe into the temp file as soon as its part file holds it, in order.

    Stripe ``k`` is copied once the server acknowledged every write of it to its part file, and only
    after stripe ``k - 1`` was sent for copying: the temp file grows strictly in offset order while
    the data still flows, so the join costs the last few stripes' copies, not the whole object's.
    """

    def __init__(
        self,
        remote: Remote,
        target: RemoteFile,
        lanes: Sequence[_Lane],
        pieces: list[tuple[int, int, int, int]],
        progress: threading.Condition,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="s3sftp-join", daemon=True)
        self._remote, self._target, self._lanes, self._pieces = remote, target, lanes, pieces
        self._progress, self._halt = progress, stop
        self.joiner: Joiner | None = None
        self.error: BaseException | None = None
        self.copied = 0  # stripes sent for copying

    def run(self) -> None:
        try:
            self.joiner = self._remote.joiner(self._target, [lane.file.path for lane in self._lanes])
            for part, offset, length, at in self._pieces:
                lane = self._lanes[part]
                with self._progress:
                    while not (lane.file.confirmed >= offset + length or lane.done or self._halt.is_set()):
                        # Woken after every write a lane hands on; the timeout catches acknowledgements
                        # read while a lane waits for its channel's window.
                        self._progress.wait(timeout=0.05)
                if self._halt.is_set() or lane.error is not None:
                    return  # the lane's error (or the abort's cause) is raised by the caller
                if lane.file.confirmed < offset + length:
                    raise OSError(
                        f"SFTP part file {lane.file.path!r} ended at byte {lane.file.confirmed} before "
                        f"its stripe at {offset}-{offset + length - 1} was complete"
                    )
                self.joiner.copy(part, offset, length, at)
                self.copied += 1
            self.joiner.finish()
        except BaseException as err:  # handed to the caller's thread, which raises it
            self.error = err


class StripedFile:
    """A :class:`~airflow_s3sftp.core.remote.RemoteFile` spread over several channels, joined on the server.

    :param remote: the delivery's port (its channel joins the parts into ``target``: from the first
        write until :meth:`finish` or :meth:`abort`, nothing else may use that channel)
    :param target: the delivery's temp file, open and still empty
    :param parts: one part file per channel, each created on its own channel's port, empty
    :param striping: how the object is spread
    :param size: the object's size
    :param budget: bytes handed to a channel and not yet sent, at most (memory: about ``budget`` per
        channel); None: :data:`LANES_MEMORY` shared out, at least one stripe and at most two
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
        self._progress = threading.Condition()
        stripe = striping.stripe_size
        budget = budget or min(2 * stripe, max(stripe, LANES_MEMORY // max(1, len(parts))))
        self._lanes = [_Lane(part, budget, self._progress) for part in parts]
        self._stop = threading.Event()
        self._position = target.position
        for lane in self._lanes:
            lane.start()
        # Started by the first write: until then the delivery still speaks on its channel (the sweep,
        # the journal); from then until finish or abort, that channel is the join's alone.
        self._join = _Join(remote, target, self._lanes, striping.pieces(size), self._progress, self._stop)

    @property
    def part_paths(self) -> list[str]:
        return [lane.file.path for lane in self._lanes]

    @property
    def position(self) -> int:
        return self._position

    @property
    def confirmed(self) -> int:
        return self._target.confirmed

    def write(self, data: bytes) -> int:
        if not self._join.is_alive() and self._join.ident is None:
            self._join.start()
        if self._join.error is not None:
            raise self._join.error
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
        """Complete every part file, wait for the last copies into the temp file, then finish that.

        The part files are not fsynced: they are read by the server's copies and removed; the temp
        file holding the whole object is (with ``sync``).
        """
        for lane in self._lanes:
            lane.finish(False)
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
        if self._join.ident is None:
            self._join.start()
        self._join.join()
        if self._join.error is not None:
            raise self._join.error
        return self._target.finish(sync=sync)

    def checkpoint(self, on_synced: Callable[[int], None]) -> None:
        """Take no checkpoint: parts are joined only once complete, so a new process starts them again."""

    def server_time(self) -> float | None:
        return self._target.server_time()

    def abort(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            lane.stop()
        with self._progress:
            self._progress.notify_all()
        for lane in self._lanes:
            lane.join(timeout=5)  # a lane stuck on a stalled channel ends with the channel's timeout
            lane.file.abort()
        if self._join.ident is not None:
            self._join.join(timeout=5)  # as for a lane
        if self._join.joiner is not None and not self._join.is_alive():
            self._join.joiner.abort()
        self._target.abort()
