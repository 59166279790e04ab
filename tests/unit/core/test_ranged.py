# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""RangedReader against in-memory sources: order, bounded memory, retries from the exact offset."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from airflow_s3sftp.core.options import RetryPolicy
from airflow_s3sftp.core.ranged import RangedReader

KiB = 1024


class FakeStream:
    """Bytes ``start``..``end`` of ``data``, with random delays and an optional break after ``fail_after``."""

    def __init__(
        self,
        source: FakeSource,
        start: int,
        end: int,
        fail_after: int | None,
        error: BaseException,
    ) -> None:
        self.source, self.pos, self.end = source, start, end + 1
        self.fail_after, self.error = fail_after, error
        self.closed = False

    def read(self, amt: int | None = None, /) -> bytes:
        if self.source.max_delay:
            time.sleep(self.source.rng.uniform(0, self.source.max_delay))
        if self.fail_after is not None and self.fail_after <= 0:
            raise self.error
        amt = self.end - self.pos if amt is None else amt
        amt = min(amt, self.source.read_size, self.end - self.pos)
        if self.fail_after is not None:
            amt = min(amt, self.fail_after)
            self.fail_after -= amt
        data = self.source.data[self.pos : self.pos + amt]
        self.pos += len(data)
        return data

    def close(self) -> None:
        with self.source.lock:
            if not self.closed:
                self.source.open_now -= 1
            self.closed = True


class FakeSource:
    """An in-memory object served as ranged requests, recording every request it gets."""

    def __init__(self, size: int, *, seed: int = 1, max_delay: float = 0.0, read_size: int = 10**9) -> None:
        self.rng = random.Random(seed)
        self.data = self.rng.randbytes(size)
        self.max_delay, self.read_size = max_delay, read_size
        self.lock = threading.Lock()
        self.requests: list[tuple[int, int]] = []
        self.open_now = self.max_open = 0
        # start offset -> (break after this many bytes, error), used once
        self.breaks: dict[int, tuple[int, BaseException]] = {}
        self.early_end: set[int] = set()
        self.on_open: list[object] = []

    def open_range(self, start: int, end: int) -> FakeStream:
        with self.lock:
            self.requests.append((start, end))
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        for hook in self.on_open:
            hook(start, end)  # type: ignore[operator]
        if start in self.early_end:
            self.early_end.discard(start)
            stream = FakeStream(self, start, end, None, ConnectionError())
            stream.end = start + (end + 1 - start) // 2  # the server hangs up half-way, quietly
            return stream
        fail_after, error = self.breaks.pop(start, (None, ConnectionError("reset by peer")))
        return FakeStream(self, start, end, fail_after, error)


class RecordingHasher:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def update(self, data: bytes, /) -> None:
        self.seen.append(bytes(data))


def transient(err: BaseException) -> bool:
    return isinstance(err, ConnectionError)


def read_all(reader: RangedReader, consume_delay: float = 0.0) -> bytes:
    out = bytearray()
    with reader:
        for chunk in reader:
            assert isinstance(chunk, bytes)
            out += chunk
            if consume_delay:
                time.sleep(consume_delay)
    return bytes(out)


@pytest.mark.parametrize("seed", range(6))
def test_bytes_come_out_in_order_whatever_order_parts_complete(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randint(200 * KiB, 600 * KiB)
    source = FakeSource(size, seed=seed, max_delay=0.003, read_size=rng.choice([7 * KiB, 16 * KiB, 64 * KiB]))
    sha, recorder = hashlib.sha256(), RecordingHasher()
    reader = RangedReader(
        source.open_range,
        size=size,
        part_size=rng.choice([17 * KiB, 32 * KiB, 50 * KiB]),
        parts=rng.randint(2, 6),
        chunk_size=rng.choice([5 * KiB, 8 * KiB, 32 * KiB]),
        hashers=[sha, recorder],
    )
    assert read_all(reader) == source.data
    assert sha.hexdigest() == hashlib.sha256(source.data).hexdigest()
    assert b"".join(recorder.seen) == source.data
    assert reader.retries == 0
    assert source.open_now == 0  # every ranged stream was closed


def test_requests_cover_the_source_exactly_once_with_inclusive_ends() -> None:
    source = FakeSource(100 * KiB + 5)
    reader = RangedReader(source.open_range, size=len(source.data), part_size=32 * KiB, parts=3)
    assert read_all(reader) == source.data
    assert sorted(source.requests) == [
        (0, 32 * KiB - 1),
        (32 * KiB, 64 * KiB - 1),
        (64 * KiB, 96 * KiB - 1),
        (96 * KiB, 100 * KiB + 4),
    ]


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_never_more_than_parts_requests_ahead_of_a_slow_consumer(parts: int) -> None:
    part_size, chunk_size, depth = 16 * KiB, 4 * KiB, 2
    source = FakeSource(512 * KiB, max_delay=0.0005)
    consumed = [0]
    too_far: list[tuple[int, int]] = []

    def check(start: int, _end: int) -> None:
        # The sequencer may be up to `depth` chunks ahead of the consumer; workers at most
        # `parts` parts ahead of the sequencer.
        if start >= consumed[0] + depth * chunk_size + parts * part_size:
            too_far.append((start, consumed[0]))

    source.on_open.append(check)
    reader = RangedReader(
        source.open_range,
        size=len(source.data),
        part_size=part_size,
        parts=parts,
        chunk_size=chunk_size,
        depth=depth,
    )
    out = bytearray()
    with reader:
        for chunk in reader:
            out += chunk
            consumed[0] = len(out)
            time.sleep(0.001)
    assert bytes(out) == source.data
    assert too_far == []
    assert reader.max_parts_in_memory <= parts
    assert source.max_open <= parts


def test_broken_part_is_reopened_at_the_exact_offset_it_broke() -> None:
    source = FakeSource(256 * KiB)
    source.breaks[64 * KiB] = (10_001, ConnectionError("reset by peer"))
    source.breaks[192 * KiB] = (0, TimeoutError("read timed out"))  # fails on the first read
    sha = hashlib.sha256()
    reader = RangedReader(
        source.open_range,
        size=len(source.data),
        part_size=64 * KiB,
        parts=2,
        chunk_size=4 * KiB,
        hashers=[sha],
        is_retryable=lambda err: isinstance(err, (ConnectionError, TimeoutError)),
        retry=RetryPolicy(delay=0),
    )
    assert read_all(reader) == source.data
    assert sha.digest() == hashlib.sha256(source.data).digest()
    assert reader.retries == 2
    assert (64 * KiB + 10_001, 128 * KiB - 1) in source.requests
    assert source.requests.count((192 * KiB, 256 * KiB - 1)) == 2


def test_a_part_that_ends_early_counts_as_broken_and_resumes_where_it_stopped() -> None:
    source = FakeSource(128 * KiB)
    source.early_end.add(64 * KiB)
    reader = RangedReader(
        source.open_range,
        size=len(source.data),
        part_size=64 * KiB,
        parts=2,
        is_retryable=transient,
        retry=RetryPolicy(delay=0),
    )
    assert read_all(reader) == source.data
    assert reader.retries == 1
    assert (96 * KiB, 128 * KiB - 1) in source.requests


def test_non_retryable_error_reaches_the_consumer_after_an_in_order_prefix() -> None:
    source = FakeSource(256 * KiB, max_delay=0.002)
    source.breaks[128 * KiB] = (1000, ValueError("bad request"))
    reader = RangedReader(
        source.open_range,
        size=len(source.data),
        part_size=32 * KiB,
        parts=4,
        chunk_size=4 * KiB,
        is_retryable=transient,
        retry=RetryPolicy(delay=0),
    )
    out = bytearray()

    def drain() -> None:
        with reader:
            for chunk in reader:
                out.extend(chunk)

    with pytest.raises(ValueError, match="bad request"):
        drain()
    assert source.data.startswith(bytes(out))
    assert len(out) <= 128 * KiB + 1000
    assert reader.retries == 0


def test_retries_are_counted_per_transfer_and_run_out() -> None:
    source = FakeSource(64 * KiB)
    for n in range(8):
        source.breaks[n * 8 * KiB] = (100, ConnectionError(f"reset {n}"))
    reader = RangedReader(
        source.open_range,
        size=len(source.data),
        part_size=8 * KiB,
        parts=2,
        is_retryable=transient,
        retry=RetryPolicy(s3_retries=3, delay=0),
    )
    with pytest.raises(ConnectionError, match="reset"):
        read_all(reader)
    assert reader.retries == 3


def test_start_offset_and_empty_source() -> None:
    source = FakeSource(100 * KiB)
    reader = RangedReader(source.open_range, size=len(source.data), start=30_000, part_size=16 * KiB)
    assert read_all(reader) == source.data[30_000:]
    assert min(start for start, _ in source.requests) == 30_000

    empty = FakeSource(0)
    assert read_all(RangedReader(empty.open_range, size=0)) == b""
    assert empty.requests == []


def test_close_mid_stream_stops_all_threads_and_closes_streams() -> None:
    source = FakeSource(1024 * KiB, max_delay=0.001)
    before = threading.active_count()
    reader = RangedReader(source.open_range, size=len(source.data), part_size=16 * KiB, parts=4)
    with reader:
        first = next(iter(reader))
    assert first == source.data[: len(first)]
    assert threading.active_count() == before
    assert source.open_now == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"part_size": 0}, "must be positive"),
        ({"parts": 0}, "must be positive"),
        ({"start": 11}, "within the source"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RangedReader(FakeSource(10).open_range, size=10, **kwargs)  # type: ignore[arg-type]
