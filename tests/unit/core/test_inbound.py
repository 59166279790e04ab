# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The inbound engine on fakes of both ports: ordering, proofs, aborts, retries, resume."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_s3sftp.core.inbound import (
    InboundFile,
    InboundOptions,
    InboundTransfer,
    Stored,
    plan_files,
    split_glob,
)
from airflow_s3sftp.core.session import SessionPool
from airflow_s3sftp.exceptions import ChecksumMismatchError, ConnectionLostError, SFTPSourceChangedError

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class Attrs:
    st_size: int
    st_mtime: int
    st_mode: int = stat.S_IFREG | 0o644
    filename: str = ""


@dataclass
class Disk:
    files: dict[str, bytes] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)
    cut_after: list[int] = field(default_factory=list)  # bytes read on a connection before it drops
    during_read: Any = None  # called once after the first chunk is read
    lock: Any = field(default_factory=threading.Lock)
    connections: int = 0
    round_trip: float = 0.0
    lanes_granted: int = 0
    lane_reads: int = 0


class Remote:
    endpoint = "fake@sftp:22"

    def __init__(self, disk: Disk, *, lane: bool = False) -> None:
        self.disk, self.dead = disk, False
        self.lanes_of: list[Remote] = []
        self.lane = lane
        if not lane:
            disk.connections += 1

    def round_trip(self) -> float:
        return self.disk.round_trip

    def lanes(self, count: int) -> list[Remote]:
        while len(self.lanes_of) < min(count, self.disk.lanes_granted):
            self.lanes_of.append(Remote(self.disk, lane=True))
        return self.lanes_of[:count]

    def lost(self, err: BaseException) -> bool:
        return isinstance(err, ConnectionLostError) or self.dead

    def stat(self, path: str) -> Attrs | None:
        if self.dead:
            raise ConnectionLostError("gone")
        if path == "/archive":
            return Attrs(0, 0, stat.S_IFDIR | 0o755)
        if path not in self.disk.files:
            return None
        return Attrs(len(self.disk.files[path]), self.disk.mtimes.get(path, 1000))

    def read(self, path: str, size: int | None, *, start: int = 0):  # type: ignore[no-untyped-def]
        data = self.disk.files[path]
        end = len(data) if size is None else size
        sent = 0
        if self.lane:
            self.disk.lane_reads += 1
        for offset in range(start, end, 256 * 1024):
            if self.dead:
                raise ConnectionLostError("gone")
            with self.disk.lock:
                if self.disk.cut_after and sent >= self.disk.cut_after[0]:
                    self.disk.cut_after.pop(0)
                    self.dead = True
                    raise ConnectionLostError("cut")
            chunk = self.disk.files[path][offset : min(offset + 256 * 1024, end)]
            if len(chunk) < min(256 * 1024, end - offset):
                raise EOFError(f"SFTP file {path!r} ended early")
            sent += len(chunk)
            yield chunk
            if self.disk.during_read is not None:
                self.disk.during_read, act = None, self.disk.during_read
                act()

    def remove(self, path: str) -> bool:
        return self.disk.files.pop(path, None) is not None

    def publish(self, temp: str, final: str, *, replace: bool, backup: str, mode: int | None) -> str:
        if final in self.disk.files and not replace:
            raise FileExistsError(final)
        self.disk.files[final] = self.disk.files.pop(temp)
        return "rename"


class Session:
    def __init__(self, disk: Disk) -> None:
        self.port, self.closed = Remote(disk), False

    def remote(self, **settings: Any) -> Remote:
        return self.port

    def alive(self) -> bool:
        return not self.closed and not self.port.dead

    def close(self) -> None:
        self.closed = True


class Store:
    """A fake S3 object: records every call; parts may fail on demand."""

    uri = "s3://b/k"

    def __init__(
        self, existing: Stored | None = None, fail_parts: dict[int, list[Exception]] | None = None
    ) -> None:
        self.object: bytes | None = None
        self.existing = existing
        self.metadata: dict[str, str] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.aborted: list[str] = []
        self.fail_parts = fail_parts or {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def is_retryable(self, err: BaseException) -> bool:
        return isinstance(err, TimeoutError)

    def head(self) -> Stored | None:
        return self.existing

    def put(self, data: bytes, *, crc32: int, md5: bytes, sha256: str, if_none_match: bool) -> Stored:
        self.calls.append("put")
        self.object, self.metadata = data, {"sha256": sha256}
        return Stored(len(data), hashlib.md5(data).hexdigest(), crc32=zlib.crc32(data), sha256=sha256)

    def create_upload(self, *, sha256: str | None) -> str:
        self.calls.append("create")
        self.uploads["u1"] = {}
        self.metadata = {"sha256": sha256} if sha256 else {}
        return "u1"

    def upload_part(self, upload_id: str, number: int, data: bytes, *, crc32: int) -> dict[str, Any]:
        assert crc32 == zlib.crc32(data)
        with self.lock:
            failures = self.fail_parts.get(number)
            if failures:
                raise failures.pop(0)
            self.uploads[upload_id][number] = data
        return {"PartNumber": number, "ETag": f"e{number}"}

    def complete(
        self, upload_id: str, parts: list[dict[str, Any]], *, crc32: int, if_none_match: bool
    ) -> Stored:
        self.calls.append("complete")
        assert [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1))
        uploaded = self.uploads.pop(upload_id)
        self.object = b"".join(uploaded[p["PartNumber"]] for p in parts)
        return Stored(
            len(self.object),
            f"x-{len(parts)}",
            crc32=zlib.crc32(self.object),
            sha256=self.metadata.get("sha256"),
        )

    def abort(self, upload_id: str) -> None:
        self.aborted.append(upload_id)
        self.uploads.pop(upload_id, None)

    def set_sha256(self, stored: Stored, sha256: str) -> Stored:
        self.calls.append("copy")
        self.metadata["sha256"] = sha256
        return Stored(stored.size, "copied", crc32=stored.crc32, sha256=sha256)

    def delete(self, stored: Stored) -> None:
        self.object = None


def run(disk: Disk, store: Store, item: InboundFile | None = None, **options: Any):  # type: ignore[no-untyped-def]
    tuning = {"part_size": 5 * MiB, "connection_retry_delay": 0, **options.pop("tuning", {})}
    opts = InboundOptions.build(tuning=tuning, **options)
    item = item or InboundFile("/in/f", "b", "k")
    with SessionPool(lambda: Session(disk), 1) as pool:  # type: ignore[arg-type,return-value]
        return InboundTransfer(item, store, opts, pool, sleep=lambda _: None).run()


@pytest.mark.parametrize("size", [0, 5 * MiB - 1, 5 * MiB, 17 * MiB + 3])
def test_bytes_land_in_order_with_sha256_in_metadata(size):
    data = os.urandom(size)
    store = Store()
    record = run(Disk({"/in/f": data}), store)
    assert store.object == data
    assert store.metadata["sha256"] == sha(data) == record.checksum
    assert record.upload == ("put" if size < 5 * MiB else "multipart")
    assert store.uploads == {}


def test_a_failed_part_is_retried_and_a_final_failure_aborts():
    data = os.urandom(12 * MiB)
    store = Store(fail_parts={2: [TimeoutError("slow")]})
    run(Disk({"/in/f": data}), store)
    assert store.object == data and store.aborted == []
    store = Store(fail_parts={2: [PermissionError("denied")]})
    with pytest.raises(PermissionError):
        run(Disk({"/in/f": data}), store)
    assert store.object is None and store.aborted == ["u1"] and store.uploads == {}
    store = Store(fail_parts={1: [TimeoutError("slow")] * 5})
    with pytest.raises(TimeoutError):
        run(Disk({"/in/f": data}), store, tuning={"s3_retries": 2})
    assert store.aborted == ["u1"] and "complete" not in store.calls


def test_a_cut_resumes_at_the_last_byte_read_and_the_upload_stays_open():
    data = os.urandom(13 * MiB)
    disk = Disk({"/in/f": data}, cut_after=[3 * MiB, 4 * MiB])
    store = Store()
    record = run(disk, store)
    assert store.object == data
    assert record.attempts == 3 and record.resumed_from > 3 * MiB
    assert disk.connections == 3 and store.calls.count("create") == 1


def test_too_many_cuts_give_up_and_abort():
    disk = Disk({"/in/f": os.urandom(8 * MiB)}, cut_after=[MiB] * 5)
    store = Store()
    with pytest.raises(ConnectionLostError, match="gave up after"):
        run(disk, store, tuning={"connection_retries": 2})
    assert store.aborted == ["u1"] and store.object is None


@pytest.mark.parametrize("size", [MiB, 11 * MiB])
def test_a_file_changed_during_the_read_publishes_nothing(size):
    disk = Disk({"/in/f": os.urandom(size)})

    def grow() -> None:
        disk.files["/in/f"] += b"x"

    disk.during_read = grow
    store = Store()
    with pytest.raises(SFTPSourceChangedError, match="size"):
        run(disk, store)
    assert store.object is None and "complete" not in store.calls and "put" not in store.calls


def test_a_file_that_shrinks_during_the_read_publishes_nothing():
    disk = Disk({"/in/f": os.urandom(11 * MiB)})

    def shrink() -> None:
        disk.files["/in/f"] = disk.files["/in/f"][: 2 * MiB]

    disk.during_read = shrink
    store = Store()
    with pytest.raises(SFTPSourceChangedError, match="shrank"):
        run(disk, store)
    assert store.aborted == ["u1"] and store.object is None


def test_checksum_mismatch_aborts_and_keeps_the_file():
    disk = Disk({"/in/f": os.urandom(11 * MiB)})
    store = Store()
    with pytest.raises(ChecksumMismatchError):
        run(disk, store, InboundFile("/in/f", "b", "k", expected_checksum=sha(b"other")), after="delete")
    assert store.aborted == ["u1"] and "/in/f" in disk.files


def test_known_checksum_goes_in_at_create_unknown_by_a_copy():
    data = os.urandom(6 * MiB)
    store = Store()
    run(Disk({"/in/f": data}), store, InboundFile("/in/f", "b", "k", expected_checksum=sha(data)))
    assert "copy" not in store.calls
    store = Store()
    run(Disk({"/in/f": data}), store)
    assert store.calls[-1] == "copy" and store.metadata["sha256"] == sha(data)


def test_after_runs_only_once_published_and_refuses_a_changed_file():
    data = os.urandom(MiB)
    disk = Disk({"/in/f": data})
    record = run(disk, Store(), after="move", move_to="/archive")
    assert record.moved_to == "/archive/f" and disk.files["/archive/f"] == data

    class Touching(Store):
        def put(self, *args: Any, **kwargs: Any) -> Stored:
            disk.mtimes["/in/f"] = 2000  # the partner rewrote it after we read it
            return super().put(*args, **kwargs)

    disk = Disk({"/in/f": data})
    store = Touching()
    with pytest.raises(SFTPSourceChangedError, match="was not applied"):
        run(disk, store, after="delete")
    assert store.object == data and "/in/f" in disk.files


def test_skip_identical_with_a_known_checksum_reads_nothing():
    data = os.urandom(MiB)
    disk = Disk({"/in/f": data}, cut_after=[0] * 9)  # any read would fail
    existing = Stored(len(data), "etag", sha256=sha(data))
    record = run(
        disk,
        Store(existing),
        InboundFile("/in/f", "b", "k", expected_checksum=sha(data)),
        if_exists="skip_identical",
    )
    assert record.skipped and record.upload == "none"


def test_options_and_plans_name_the_bad_argument():
    with pytest.raises(ValueError, match="move_to"):
        InboundOptions(after="move")
    with pytest.raises(ValueError, match="Unknown tuning keys"):
        InboundOptions.build(tuning={"parts": 3})
    with pytest.raises(TypeError, match="io_timeout"):
        InboundOptions.build(tuning={"io_timeout": None})
    assert split_glob("/in/*.csv") == ("/in", "*.csv")
    assert split_glob("/in/a.csv") == ("/in/a.csv", None)
    with pytest.raises(ValueError, match="last segment"):
        split_glob("/in/*/a.csv")
    planned = plan_files(["/a/x", "/b/y"], bucket="b", key=None, prefix="p/", expected_size={"/a/x": 3})
    assert [(p.key, p.expected_size) for p in planned] == [("p/x", 3), ("p/y", None)]
    with pytest.raises(ValueError, match="both land on"):
        plan_files(["/a/x", "/b/x"], bucket="b", key=None, prefix="")
    with pytest.raises(ValueError, match="safe"):
        plan_files(["/a/.."], bucket="b", key=None, prefix="p")


@pytest.mark.parametrize(
    ("round_trip", "granted", "striped"), [(0.05, 7, True), (0.0, 7, False), (0.05, 1, False)]
)
def test_a_long_link_reads_stripes_over_several_channels_in_order(round_trip, granted, striped):
    data = os.urandom(37 * MiB + 5)
    disk = Disk({"/in/f": data}, round_trip=round_trip, lanes_granted=granted)
    store = Store()
    record = run(disk, store, tuning={"stripe_size": MiB})
    assert store.object == data and record.checksum == sha(data)
    assert disk.connections == 1
    assert (disk.lane_reads > 0) is striped


def test_a_cut_in_a_striped_read_resumes_in_order():
    data = os.urandom(29 * MiB + 1)
    disk = Disk({"/in/f": data}, round_trip=0.05, lanes_granted=4, cut_after=[512 * 1024])
    store = Store()
    record = run(disk, store, tuning={"stripe_size": MiB})
    assert store.object == data
    assert record.attempts == 2 and record.resumed_from > 0
    assert store.calls.count("create") == 1
