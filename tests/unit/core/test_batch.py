"""The many-objects loop on an in-memory SFTP server: first session alone, fan-out, failures, progress."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from airflow_s3sftp.core.batch import Batch
from airflow_s3sftp.core.delivery import Source
from airflow_s3sftp.core.options import DeliveryOptions, RetryPolicy, Streaming
from airflow_s3sftp.exceptions import (
    AuthenticationError,
    ConnectionLostError,
    CredentialsError,
    MissingTargetError,
)
from tests.unit.core.fake_sftp import FakeFS, session_factory

KiB = 1024
OPTIONS = DeliveryOptions(
    streaming=Streaming(chunk_size=16 * KiB, progress_interval=0.0),
    retry=RetryPolicy(delay=0.0),
)


def data_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * (40 * KiB // 32 + len(key))


class Bucket:
    """The S3 side as the hook adapts it: ``source(bucket, key)`` and a log of what was asked, in order."""

    def __init__(self, events: list[str], failing: dict[str, BaseException] | None = None) -> None:
        self.events = events
        self.failing = failing or {}
        self.gate: threading.Barrier | None = None
        self.closed: list[str] = []

    @contextlib.contextmanager
    def source(self, bucket: str, key: str) -> Iterator[Source]:
        self.events.append(f"source {key}")
        if self.gate is not None:
            self.gate.wait()  # every worker holds an object at once, or the barrier breaks
        if key in self.failing:
            raise self.failing[key]
        data = data_of(key)
        try:
            yield Source(
                uri=f"s3://{bucket}/{key}",
                size=len(data),
                open=lambda start, end=None: io.BytesIO(data[start : None if end is None else end + 1]),
                etag=key,
            )
        finally:
            self.closed.append(key)


def counted(fs: FakeFS, events: list[str], refuse: BaseException | None = None):  # type: ignore[no-untyped-def]
    connect = session_factory(fs)

    def open_session():  # type: ignore[no-untyped-def]
        events.append("connect")
        if refuse is not None:
            raise refuse
        return connect()

    return open_session


def batch(fs, bucket, keys, *, events, directory="/in", options=OPTIONS, refuse=None, workers=3, sleeps=None):  # type: ignore[no-untyped-def]
    planned = [("b", key, f"{directory}/{key}") for key in keys]
    return Batch(
        planned,
        options,
        source=bucket.source,
        connect=counted(fs, events, refuse),
        endpoint=lambda: "fake@server:22",
        max_concurrency=workers,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
    )


def test_the_first_session_opens_alone_then_the_objects_fan_out():
    fs, events = FakeFS(), []
    bucket = Bucket(events)
    # Three renames at once: three deliveries hold a session each at the same moment.
    gate = threading.Barrier(3, timeout=30)
    fs.on_step = lambda step, path: gate.wait() if step == "posix-rename" else None
    keys = [f"k{i}" for i in range(6)]
    records = batch(fs, bucket, keys, events=events, workers=3).run()
    # One connection, the directory check on it, and only then any object.
    assert events[0] == "connect"
    assert events[1].startswith("source ")
    assert fs.connections == 3, "three objects at once need three sessions, and no more are opened"
    assert events.count("connect") == 3
    assert [r["sftp_path"] for r in records] == [f"/in/{k}" for k in keys]  # records in planned order
    for key in keys:
        assert bytes(fs.files[f"/in/{key}"]) == data_of(key)
    assert all("error" not in r for r in records)
    assert sorted(bucket.closed) == sorted(keys), "every source is left when its delivery ends"


def test_a_refused_login_is_raised_once_and_nothing_is_attempted():
    fs, events = FakeFS(), []
    bucket = Bucket(events)
    refused = AuthenticationError("fake@server:22 refused the login")
    with pytest.raises(AuthenticationError) as info:
        batch(fs, bucket, ["a", "b", "c"], events=events, refuse=refused).run()
    assert info.value is refused
    assert events == ["connect"], "a final failure is never tried again, and no object is read"
    (note,) = info.value.__notes__
    assert note.startswith("Task-wide failure, so the task stopped at once: 0 of 3 objects delivered, 3 not")
    assert "s3://b/a -> /in/a" in note and "s3://b/c -> /in/c" in note
    assert fs.files == {}


def test_a_dropping_first_connection_is_retried_with_backoff_then_named():
    fs, events, sleeps = FakeFS(), [], []
    options = DeliveryOptions(retry=RetryPolicy(retries=2, delay=0.5))
    with pytest.raises(ConnectionLostError, match=r"Could not connect to fake@server:22 after 3 attempts"):
        batch(
            fs, Bucket(events), ["a"], events=events, options=options, refuse=ConnectionLostError("reset"),
            sleeps=sleeps,
        ).run()  # fmt: skip
    assert events == ["connect"] * 3
    assert sleeps == [0.5, 1.0]


def test_a_missing_directory_shared_by_every_object_is_raised_once_before_any_read():
    fs, events = FakeFS(), []
    with pytest.raises(MissingTargetError, match="'/nowhere' does not exist") as info:
        batch(fs, Bucket(events), ["a", "b"], events=events, directory="/nowhere").run()
    assert events == ["connect"]
    assert "0 of 2 objects delivered" in info.value.__notes__[0]


def test_a_task_wide_failure_mid_batch_stops_the_rest_and_is_raised_once(caplog):
    fs, events = FakeFS(), []
    bucket = Bucket(events, failing={"k1": CredentialsError("S3 refused the credentials")})
    keys = ["k0", "k1", "k2", "k3"]
    with caplog.at_level(logging.ERROR), pytest.raises(CredentialsError) as info:
        batch(fs, bucket, keys, events=events, workers=1).run()
    assert [e for e in events if e.startswith("source")] == ["source k0", "source k1"], "k2, k3 not attempted"
    assert bytes(fs.files["/in/k0"]) == data_of("k0")
    assert sorted(fs.files) == ["/in/k0"]
    (note,) = info.value.__notes__
    assert "1 of 4 objects delivered, 3 not delivered" in note
    assert "s3://b/k3 -> /in/k3" in note and "s3://b/k0" not in note
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "raised once, not logged per object"


def test_a_per_object_failure_is_recorded_while_the_others_land(caplog):
    fs, events = FakeFS(), []
    bucket = Bucket(events, failing={"k2": FileNotFoundError("S3 object s3://b/k2 does not exist")})
    keys = [f"k{i}" for i in range(5)]
    with caplog.at_level(logging.ERROR):
        records = batch(fs, bucket, keys, events=events, workers=2).run()
    failed = records[2]
    assert failed == {
        "s3_uri": "s3://b/k2",
        "sftp_path": "/in/k2",
        "error": "FileNotFoundError: S3 object s3://b/k2 does not exist",
    }
    for key, record in zip(keys, records, strict=True):
        if key == "k2":
            continue
        assert "error" not in record and record["size"] == len(data_of(key))
        assert bytes(fs.files[f"/in/{key}"]) == data_of(key)
    assert "/in/k2" not in fs.files
    assert [r.getMessage() for r in caplog.records] == [
        "Delivering s3://b/k2 to /in/k2 failed: S3 object s3://b/k2 does not exist"
    ]


def test_a_missing_directory_of_some_objects_fails_only_those():
    fs, events = FakeFS(), []
    planned = [("b", "a", "/in/a"), ("b", "m", "/nowhere/m")]
    records = Batch(
        planned, OPTIONS, source=Bucket(events).source, connect=counted(fs, events), endpoint=lambda: "x"
    ).run()
    assert "SFTP directory '/nowhere' does not exist" in records[1]["error"]
    assert "error" not in records[0]
    assert bytes(fs.files["/in/a"]) == data_of("a")


def test_progress_counts_objects_failures_and_bytes(caplog):
    fs, events = FakeFS(), []
    bucket = Bucket(events, failing={"k1": FileNotFoundError("gone")})
    keys = ["k0", "k1", "k2"]
    caplog.set_level(logging.INFO, logger="airflow_s3sftp.core.batch")
    batch(fs, bucket, keys, events=events, workers=1).run()
    lines = [r.getMessage() for r in caplog.records if " objects done (" in r.getMessage()]
    size = len(data_of("k0"))
    # The last object leaves its line to the summary; sizes of the same length make the bytes exact.
    assert [line.split(", ")[:2] for line in lines] == [
        ["1 of 3 objects done (0 failed)", f"{size} bytes"],
        ["2 of 3 objects done (1 failed)", f"{size} bytes"],
    ]


def test_the_summary_counts_delivered_skipped_and_failed_objects():
    from airflow_s3sftp.core.batch import summarize

    records = [
        {"s3_uri": "s3://b/a", "size": 10, "skipped": False},
        {"s3_uri": "s3://b/b", "size": 7, "skipped": True},
        {"s3_uri": "s3://b/c", "sftp_path": "/in/c", "error": "FileNotFoundError: gone"},
    ]
    assert summarize(records) == {
        "failed": records[2:],
        "failed_count": 1,
        "count": 3,
        "transferred": 1,
        "skipped": 1,
        "bytes": 10,
    }


def test_an_iterator_plan_is_consumed_as_the_objects_go_and_records_reach_the_sink():
    fs, events = FakeFS(), []
    bucket = Bucket(events)
    pulled: list[int] = []
    handed: list[tuple[int, str]] = []
    workers = 2

    def listing():  # type: ignore[no-untyped-def]
        for i in range(40):
            pulled.append(i)
            # Never more than 2 * workers objects ahead of the finished ones.
            assert i - len(handed) <= 2 * workers + 1, (i, len(handed))
            yield ("b", f"k{i:02d}", f"/in/k{i:02d}")

    Batch(
        listing(),
        OPTIONS,
        source=bucket.source,
        connect=counted(fs, events),
        endpoint=lambda: "fake@server:22",
        max_concurrency=workers,
    ).stream(lambda index, record: handed.append((index, record["sftp_path"])))
    assert len(pulled) == 40
    assert sorted(handed) == [(i, f"/in/k{i:02d}") for i in range(40)]
    assert all(bytes(fs.files[f"/in/k{i:02d}"]) == data_of(f"k{i:02d}") for i in range(40))


def test_a_task_wide_failure_stops_consuming_an_iterator_plan():
    fs, events = FakeFS(), []
    bucket = Bucket(events, failing={"k03": CredentialsError("no credentials")})
    pulled: list[int] = []

    def listing():  # type: ignore[no-untyped-def]
        for i in range(1000):
            pulled.append(i)
            yield ("b", f"k{i:02d}", f"/in/k{i:02d}")

    handed: list[dict] = []
    with pytest.raises(CredentialsError) as err:
        Batch(
            listing(),
            OPTIONS,
            source=bucket.source,
            connect=counted(fs, events),
            endpoint=lambda: "fake@server:22",
            max_concurrency=1,
        ).stream(lambda index, record: handed.append(record))
    assert len(pulled) < 10, "the listing was not consumed after the failure"
    assert "the rest of the listing was not attempted" in "\n".join(err.value.__notes__)
    assert [record["sftp_path"] for record in handed if "error" not in record] == [
        "/in/k00",
        "/in/k01",
        "/in/k02",
    ]
