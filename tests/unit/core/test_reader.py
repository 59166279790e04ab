"""The read-ahead reader: order, bounded memory, hashing, resume from the exact offset."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from airflow_s3sftp.core.options import RetryPolicy
from airflow_s3sftp.core.reader import ChunkReader

DATA = os.urandom(1_000_003)


class Flaky(io.BytesIO):
    """Serves DATA from an offset and breaks once after ``break_after`` bytes."""

    def __init__(self, start: int, break_after: int | None) -> None:
        super().__init__(DATA[start:])
        self.break_after = break_after

    def read(self, amt=-1):  # type: ignore[no-untyped-def]
        if self.break_after is not None and self.tell() + (amt or 0) > self.break_after:
            raise ConnectionResetError("peer reset the connection")
        return super().read(amt)


def test_chunks_in_order_and_hashed():
    hasher = hashlib.sha256()
    with ChunkReader(
        lambda start: io.BytesIO(DATA[start:]), size=len(DATA), chunk_size=4096, hashers=[hasher]
    ) as r:
        assert b"".join(r) == DATA
    assert hasher.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_resumes_at_exact_offset_after_a_break():
    opened: list[int] = []

    def open_stream(start: int) -> Flaky:
        opened.append(start)
        return Flaky(start, 300_000 if len(opened) == 1 else None)

    hasher = hashlib.sha256()
    with ChunkReader(
        open_stream,
        size=len(DATA),
        chunk_size=100_000,
        hashers=[hasher],
        is_retryable=lambda err: isinstance(err, ConnectionError),
        retry=RetryPolicy(delay=0.01),
    ) as reader:
        assert b"".join(reader) == DATA
        assert reader.retries == 1
    assert opened == [0, 300_000]
    assert hasher.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_early_end_counts_as_broken_and_gives_up_after_max_retries():
    with (
        ChunkReader(
            lambda start: io.BytesIO(DATA[start:500]),
            size=len(DATA),
            retry=RetryPolicy(s3_retries=2, delay=0.01),
        ) as r,
        pytest.raises(ConnectionError, match="ended at byte 500 of 1000003"),
    ):
        b"".join(r)


def test_non_retryable_error_is_raised_to_the_consumer():
    def open_stream(start: int) -> io.BytesIO:
        raise PermissionError("denied")

    with ChunkReader(open_stream, size=10) as reader, pytest.raises(PermissionError, match="denied"):
        list(reader)


def test_memory_is_bounded_by_depth():
    reads = threading.Semaphore(0)

    class Counting(io.BytesIO):
        def read(self, amt=-1):  # type: ignore[no-untyped-def]
            reads.release()
            return super().read(amt)

    reader = ChunkReader(lambda start: Counting(DATA), size=len(DATA), chunk_size=1000, depth=3)
    with reader:
        consumed = iter(reader)
        next(consumed)
        threading.Event().wait(0.2)  # let the reader run ahead as far as it can
        assert reader._queue.qsize() <= 3
    count = 0
    while reads.acquire(blocking=False):
        count += 1
    assert count <= 6  # one consumed + three queued + one blocked in put, never the whole stream


def test_close_stops_the_thread_early():
    reader = ChunkReader(lambda start: io.BytesIO(DATA), size=len(DATA), chunk_size=10, depth=2)
    with reader:
        next(iter(reader))
    assert not reader._thread.is_alive()
