# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Read a byte range source with parallel ranged requests, handing the bytes on strictly in order."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from airflow_s3sftp.core.reader import _DEFAULT_RETRY, MiB, ReadAhead, _End

if TYPE_CHECKING:
    from airflow_s3sftp.core.options import RetryPolicy
    from airflow_s3sftp.core.reader import Hasher, Readable

log = logging.getLogger(__name__)

OpenRange = Callable[[int, int], "Readable"]
"""Open bytes ``start`` to ``end`` (inclusive) of the source: a ranged GET pinned to one object version."""


class _Part:
    """One ranged request: its byte range and the chunks read from it not yet handed on."""

    __slots__ = ("chunks", "done", "end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end  # exclusive
        self.chunks: deque[bytes] = deque()
        self.done = False


class RangedReader(ReadAhead):
    """Read a source of known size as parallel ranged requests, yielding its bytes strictly in order.

    The source is cut into parts of ``part_size`` bytes; ``parts`` worker threads fetch them
    with ``open_range``, at most ``parts`` parts ahead of the part being handed on, so memory
    stays around ``parts * part_size + depth * chunk_size`` bytes whatever the size of the
    source. A sequencer thread takes the chunks of the oldest part as they arrive, feeds them
    to ``hashers`` in offset order (so hashing overlaps with the consumer's writes) and queues
    them for the consumer. A part whose stream breaks (or ends early) is reopened at the exact
    offset where it broke, up to ``retry.s3_retries`` times per transfer, when ``is_retryable`` says
    the error is transient. The consumer interface is the one of
    :class:`~airflow_s3sftp.core.reader.ChunkReader`.

    Parallel ranges pay off where one stream is capped per connection (S3 over a long path);
    on a fast local link one stream is usually enough.

    :param open_range: opens the source from ``start`` to ``end`` inclusive
    :param size: total size of the source in bytes
    :param start: offset to start reading at
    :param part_size: bytes per ranged request
    :param parts: parallel requests, and the number of parts held in memory at most
    :param chunk_size: bytes per read and per queued chunk
    :param depth: chunks queued for the consumer
    :param hashers: hash objects updated with every byte, in order
    :param is_retryable: tells whether an error from ``read`` or ``open_range`` is transient
    :param retry: reopens allowed (``s3_retries``, over all parts) and the backoff between them
    :param describe: names the source in log lines and errors
    :param on_chunk: called on the sequencer thread with the new offset after each chunk is hashed
    """

    def __init__(
        self,
        open_range: OpenRange,
        *,
        size: int,
        start: int = 0,
        part_size: int = 8 * MiB,
        parts: int = 4,
        chunk_size: int = MiB,
        depth: int = 4,
        hashers: Sequence[Hasher] = (),
        is_retryable: Callable[[BaseException], bool] = lambda err: False,
        retry: RetryPolicy = _DEFAULT_RETRY,
        describe: str = "source",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        if part_size <= 0 or parts <= 0:
            raise ValueError("part_size and parts must be positive")
        if size < 0 or not 0 <= start <= size:
            raise ValueError(f"start must lie within the source (start={start}, size={size})")
        super().__init__(
            chunk_size=chunk_size,
            depth=depth,
            hashers=hashers,
            is_retryable=is_retryable,
            retry=retry,
            describe=describe,
            on_chunk=on_chunk,
        )
        self._open_range = open_range
        self._size = size
        self._part_size = part_size
        self._window = parts
        self._starts = list(range(start, size, part_size))
        self._cond = threading.Condition()
        self._parts: dict[int, _Part] = {}
        self._next_claim = 0  # index of the next part a worker will fetch
        self._current = 0  # index of the part the sequencer hands on
        self._failure: BaseException | None = None
        self._open: set[Readable] = set()
        self._workers = [
            threading.Thread(target=self._work, name=f"s3sftp-range-{n}", daemon=True)
            for n in range(min(parts, len(self._starts)))
        ]
        self._sequencer = threading.Thread(target=self._sequence, name="s3sftp-sequencer", daemon=True)
        self.max_parts_in_memory = 0  # high-water mark, for tests and benchmarks

    def _threads(self) -> Sequence[threading.Thread]:
        return (*self._workers, self._sequencer)

    def close(self) -> None:
        """Stop every thread, abort the open requests and drop what was buffered."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            streams = list(self._open)
        for stream in streams:  # unblocks a worker stuck in read(); best effort
            self._closed(stream)
        super().close()

    # -- workers: fetch parts in parallel -------------------------------------------------------

    def _claim(self) -> _Part | None:
        with self._cond:
            while True:
                if self._stop.is_set() or self._failure is not None or self._next_claim >= len(self._starts):
                    return None
                if self._next_claim < self._current + self._window:
                    index = self._next_claim
                    self._next_claim += 1
                    start = self._starts[index]
                    part = _Part(start, min(start + self._part_size, self._size))
                    self._parts[index] = part
                    self.max_parts_in_memory = max(self.max_parts_in_memory, len(self._parts))
                    return part
                self._cond.wait()

    def _work(self) -> None:
        try:
            while (claimed := self._claim()) is not None:
                self._fetch(claimed)
        except BaseException as err:  # handed to the consumer by the sequencer
            with self._cond:
                if self._failure is None:
                    self._failure = err
                self._cond.notify_all()

    def _fetch(self, part: _Part) -> None:
        offset = part.start
        stream: Readable | None = None
        try:
            while offset < part.end and not self._stop.is_set():
                try:
                    if stream is None:
                        stream = self._open_range(offset, part.end - 1)
                        with self._cond:
                            self._open.add(stream)
                    chunk, broken = self._read_chunk(stream, min(self._chunk_size, part.end - offset))
                    if chunk:
                        offset += len(chunk)
                        with self._cond:
                            part.chunks.append(chunk)
                            # Done only when complete: a failed part never lets the next one through.
                            part.done = offset >= part.end
                            self._cond.notify_all()
                    if broken is not None:
                        raise broken
                    if not chunk:
                        raise ConnectionError(
                            f"{self._describe} ended at byte {offset} in the middle of bytes "
                            f"{part.start}-{part.end - 1}"
                        )
                except Exception as err:
                    if self._stop.is_set():
                        return
                    attempt = self._may_retry(err)
                    if not attempt:
                        raise
                    self._backoff(err, offset, attempt)
                    self._release(stream)
                    stream = None
        finally:
            self._release(stream)

    def _release(self, stream: Readable | None) -> None:
        if stream is not None:
            with self._cond:
                self._open.discard(stream)
            self._closed(stream)

    # -- sequencer: hand the chunks on in offset order ------------------------------------------

    def _sequence(self) -> None:
        try:
            finished = self._hand_on_all()
        except BaseException as err:
            self._put(err)
        else:
            if finished:
                self._put(_End())

    def _hand_on_all(self) -> bool:
        offset = self._starts[0] if self._starts else self._size
        for index in range(len(self._starts)):
            while True:
                with self._cond:
                    while True:
                        if self._stop.is_set():
                            return False
                        if self._failure is not None:
                            raise self._failure
                        part = self._parts.get(index)
                        if part is not None and (part.chunks or part.done):
                            break
                        self._cond.wait()
                    chunks = list(part.chunks)
                    part.chunks.clear()
                    finished = part.done
                for chunk in chunks:
                    offset += len(chunk)
                    if not self._hand_on(chunk, offset):
                        return False
                if finished:
                    break
            with self._cond:
                del self._parts[index]
                self._current = index + 1  # frees a slot for the next part
                self._cond.notify_all()
        return True
