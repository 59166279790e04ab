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
from typing import Protocol

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class Readable(Protocol):
    """A stream of bytes such as botocore's ``StreamingBody``."""

    def read(self, amt: int | None = ..., /) -> bytes: ...

    def close(self) -> None: ...


class Hasher(Protocol):
    """The part of ``hashlib``'s interface the reader feeds."""

    def update(self, data: bytes, /) -> None: ...


OpenStream = Callable[[int], Readable]
"""Open the source at a byte offset (a ranged GET pinned to one object version)."""


class _End:
    """Marks the end of the stream in the queue."""


class ChunkReader:
    """Read a source in a background thread into a bounded queue of fixed-size chunks.

    At most ``depth`` chunks of ``chunk_size`` bytes wait in memory, whatever the size of the
    source. Every chunk is fed to ``hashers`` in order on the reader thread, so hashing
    overlaps with the SFTP writes. A stream that breaks mid-way is reopened at the exact offset
    where it broke, up to ``max_retries`` times, when ``is_retryable`` says the error is transient;
    a stream that ends before ``size`` bytes counts as broken.

    :param open_stream: opens the source at a byte offset
    :param size: expected total size in bytes, or None when unknown
    :param start: offset to start reading at
    :param chunk_size: bytes per read and per queued chunk
    :param depth: chunks buffered ahead of the consumer
    :param hashers: hash objects updated with every byte, in order
    :param is_retryable: tells whether an error from ``read`` or ``open_stream`` is transient
    :param max_retries: reopen attempts per transfer
    :param retry_delay: first backoff in seconds, doubled on every attempt
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
        max_retries: int = 5,
        retry_delay: float = 0.5,
        describe: str = "source",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        if chunk_size <= 0 or depth <= 0:
            raise ValueError("chunk_size and depth must be positive")
        self._open_stream = open_stream
        self._size = size
        self._offset = start
        self._chunk_size = chunk_size
        self._hashers = tuple(hashers)
        self._is_retryable = is_retryable
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._describe = describe
        self._on_chunk = on_chunk
        self._queue: queue.Queue[bytes | BaseException | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3sftp-reader", daemon=True)
        self.retries = 0

    def __enter__(self) -> ChunkReader:
        self._thread.start()
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
        """Stop the reader thread and drop what it buffered."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
            self._thread.join(timeout=0.05)

    def _put(self, item: bytes | BaseException | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

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
                try:
                    if stream is None:
                        stream = self._open_stream(self._offset)
                    chunk = self._read_chunk(stream)
                except Exception as err:
                    if not self._is_retryable(err) or self.retries >= self._max_retries:
                        raise
                    self._backoff(err)
                    stream = self._closed(stream)
                    continue
                if not chunk:
                    if self._size is None:
                        return
                    early_end = ConnectionError(
                        f"{self._describe} ended at byte {self._offset} of {self._size}"
                    )
                    if self.retries >= self._max_retries:
                        raise early_end
                    self._backoff(early_end)
                    stream = self._closed(stream)
                    continue
                for hasher in self._hashers:
                    hasher.update(chunk)
                self._offset += len(chunk)
                if self._on_chunk is not None:
                    self._on_chunk(self._offset)
                if not self._put(chunk):
                    return
        finally:
            self._closed(stream)

    def _read_chunk(self, stream: Readable) -> bytes:
        # A short read is not the end: keep reading until the chunk is full or the stream ends,
        # so chunks stay large and the writer issues few, big requests.
        parts: list[bytes] = []
        wanted = self._chunk_size
        if self._size is not None:
            wanted = min(wanted, self._size - self._offset)
        while wanted > 0:
            data = stream.read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _backoff(self, err: BaseException) -> None:
        self.retries += 1
        delay = self._retry_delay * 2 ** (self.retries - 1)
        log.warning(
            "Reading %s broke at byte %s (%s); reopening there in %.1fs (attempt %s of %s)",
            self._describe,
            self._offset,
            err,
            delay,
            self.retries,
            self._max_retries,
        )
        self._stop.wait(delay)

    @staticmethod
    def _closed(stream: Readable | None) -> None:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # the stream is already broken; closing is best effort
                log.debug("Closing a broken source stream failed", exc_info=True)
        return None
