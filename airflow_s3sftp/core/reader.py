# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Read a byte stream ahead of the writer, in order, with bounded memory, hashing on the way."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from airflow_s3sftp.core.options import RetryPolicy

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_DEFAULT_RETRY = RetryPolicy(delay=0.5)


class Readable(Protocol):
    """A stream of bytes such as botocore's ``StreamingBody``."""

    def read(self, amt: int | None = ..., /) -> bytes: ...

    def close(self) -> None: ...


class Hasher(Protocol):
    """The part of ``hashlib``'s interface the reader feeds."""

    def update(self, data: bytes, /) -> None: ...


OpenStream = Callable[[int], Readable]
"""Open the source at a byte offset (a ranged GET pinned to one object version)."""


class OpenSource(Protocol):
    """Open bytes ``start`` to ``end`` (inclusive; None for the end) of the source.

    One callable serves both readers: :class:`ChunkReader` passes only ``start``, the ranged
    reader passes both.
    """

    def __call__(self, start: int, end: int | None = None, /) -> Readable: ...


class _End:
    """Marks the end of the stream in the queue."""


class ReadAhead:
    """What both readers share: a bounded queue to the consumer, in-order hashing, retries.

    Subclasses produce chunks on their own threads and hand each one on with :meth:`_hand_on`
    in offset order; the consumer iterates. ``depth`` chunks wait in the queue at most.
    """

    def __init__(
        self,
        *,
        chunk_size: int,
        depth: int,
        hashers: Sequence[Hasher],
        is_retryable: Callable[[BaseException], bool],
        retry: RetryPolicy,
        describe: str,
        on_chunk: Callable[[int], None] | None,
    ) -> None:
        if chunk_size <= 0 or depth <= 0:
            raise ValueError("chunk_size and depth must be positive")
        self._chunk_size = chunk_size
        self._hashers = tuple(hashers)
        self._is_retryable = is_retryable
        self._retry = retry
        self._describe = describe
        self._on_chunk = on_chunk
        self._queue: queue.Queue[bytes | BaseException | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._retry_lock = threading.Lock()
        self.retries = 0

    def _threads(self) -> Sequence[threading.Thread]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads():
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the threads and drop what they buffered."""
        self._stop.set()
        for thread in self._threads():
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
                thread.join(timeout=0.05)

    def _put(self, item: bytes | BaseException | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _hand_on(self, chunk: bytes, offset: int) -> bool:
        """Hash ``chunk`` (which ends at ``offset``), record the offset and queue it for the consumer."""
        for hasher in self._hashers:
            hasher.update(chunk)
        if self._on_chunk is not None:
            self._on_chunk(offset)
        return self._put(chunk)

    def _read_chunk(self, stream: Readable, wanted: int) -> tuple[bytes, Exception | None]:
        """Return up to ``wanted`` bytes and the error that cut them short, if any.

        Short reads are joined into whole chunks so the writer issues few, big requests; the
        bytes read before an error are kept, so a retry starts exactly where the stream broke.
        """
        pieces: list[bytes] = []
        broken: Exception | None = None
        try:
            while wanted > 0:
                data = stream.read(wanted)
                if not data:
                    break
                pieces.append(data)
                wanted -= len(data)
        except Exception as err:
            broken = err
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), broken

    def _may_retry(self, err: BaseException) -> int:
        """Count one more reopen after ``err`` and return its number, or 0 when it must not be retried."""
        with self._retry_lock:
            if not self._is_retryable(err) or self.retries >= self._retry.s3_retries:
                return 0
            self.retries += 1
            return self.retries

    def _backoff(self, err: BaseException, offset: int, attempt: int) -> None:
        delay = self._retry.backoff(attempt)
        log.warning(
            "Reading %s broke at byte %s (%s); reopening there in %.1fs (attempt %s of %s)",
            self._describe,
            offset,
            err,
            delay,
            attempt,
            self._retry.s3_retries,
        )
        self._stop.wait(delay)

    @staticmethod
    def _closed(stream: Readable | None) -> None:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # the stream may be broken already; closing is best effort
                log.debug("Closing a source stream failed", exc_info=True)


class ChunkReader(ReadAhead):
    """Read a source in a background thread into a bounded queue of fixed-size chunks.

    At most ``depth`` chunks of ``chunk_size`` bytes wait in memory, whatever the size of the
    source. Every chunk is fed to ``hashers`` in order on the reader thread, so hashing
    overlaps with the SFTP writes. A stream that breaks mid-way is reopened at the exact offset
    where it broke, up to ``retry.s3_retries`` times, when ``is_retryable`` says the error is transient;
    a stream that ends before ``size`` bytes counts as broken.

    :param open_stream: opens the source at a byte offset
    :param size: expected total size in bytes, or None when unknown
    :param start: offset to start reading at
    :param chunk_size: bytes per read and per queued chunk
    :param depth: chunks buffered ahead of the consumer
    :param hashers: hash objects updated with every byte, in order
    :param is_retryable: tells whether an error from ``read`` or ``open_stream`` is transient
    :param retry: reopens allowed (``s3_retries``) and the backoff between them
    :param describe: names the source in log lines and errors
    :param on_chunk: called on the reader thread with the new offset after each chunk is hashed
    """

    def __init__(
        self,
        open_stream: OpenStream,
        *,
        size: int | None,
        start: int = 0,
        chunk_size: int = MiB,
        depth: int = 8,
        hashers: Sequence[Hasher] = (),
        is_retryable: Callable[[BaseException], bool] = lambda err: False,
        retry: RetryPolicy = _DEFAULT_RETRY,
        describe: str = "source",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            chunk_size=chunk_size,
            depth=depth,
            hashers=hashers,
            is_retryable=is_retryable,
            retry=retry,
            describe=describe,
            on_chunk=on_chunk,
        )
        self._open_stream = open_stream
        self._size = size
        self._offset = start
        self._thread = threading.Thread(target=self._run, name="s3sftp-reader", daemon=True)

    def _threads(self) -> Sequence[threading.Thread]:
        return (self._thread,)

    def _run(self) -> None:
        try:
            self._read_all()
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(err)
        else:
            self._put(_End())

    def _read_all(self) -> None:
        stream: Readable | None = None
        try:
            while not self._stop.is_set():
                if self._size is not None and self._offset >= self._size:
                    return
                wanted = (
                    self._chunk_size
                    if self._size is None
                    else min(self._chunk_size, self._size - self._offset)
                )
                try:
                    if stream is None:
                        stream = self._open_stream(self._offset)
                    chunk, broken = self._read_chunk(stream, wanted)
                except Exception as err:  # opening failed
                    chunk, broken = b"", err
                if chunk:
                    self._offset += len(chunk)
                    if not self._hand_on(chunk, self._offset):
                        return
                if broken is None and not chunk:
                    if self._size is None:
                        return
                    broken = ConnectionError(f"{self._describe} ended at byte {self._offset} of {self._size}")
                if broken is not None:
                    attempt = self._may_retry(broken)
                    if not attempt:
                        raise broken
                    self._backoff(broken, self._offset, attempt)
                    self._closed(stream)
                    stream = None
        finally:
            self._closed(stream)
