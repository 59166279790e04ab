"""The bounded summary, the JSON Lines report and the record sink, on a fake S3 store."""

from __future__ import annotations

import errno
import io
import json
import sys
import tempfile
import threading
from typing import IO

import pytest

from airflow_s3sftp.core.batch import Summary
from airflow_s3sftp.core.report import MIN_PART_SIZE, JsonLinesReport, RecordSink, parse_report_uri
from airflow_s3sftp.exceptions import ReportError


class FakeStore:
    """One S3 object: ``objects`` holds what a reader would see, ``parts`` the uploads under way."""

    def __init__(self, *, fail_put: int | None = None, fail_part: int | None = None) -> None:
        self.object: bytes | None = None
        self.uploads: dict[str, list[bytes]] = {}
        self.aborted: list[str] = []
        self.puts = 0
        self.fail_put, self.fail_part = fail_put, fail_part
        self.part_up = threading.Event()  # set after each part upload
        self.hold = threading.Event()  # cleared: part uploads wait (a slow S3)
        self.hold.set()

    def put(self, data: bytes | IO[bytes]) -> None:
        self.puts += 1
        if self.fail_put is not None and self.puts >= self.fail_put:
            raise PermissionError("AccessDenied")
        self.object = data if isinstance(data, bytes) else data.read()

    def create(self) -> str:
        upload = f"u{len(self.uploads)}"
        self.uploads[upload] = []
        return upload

    def upload_part(self, upload_id: str, number: int, data: IO[bytes]) -> str:
        if self.fail_part is not None and number >= self.fail_part:
            raise ConnectionError("part upload dropped")
        parts = self.uploads[upload_id]
        assert number == len(parts) + 1, "parts go up in order, numbered from 1"
        assert data.tell() == 0, "a part is read from its start"
        self.hold.wait()
        parts.append(data.read())
        self.part_up.set()
        return f"etag-{number}"

    def complete(self, upload_id: str, etags: list[str]) -> None:
        parts = self.uploads.pop(upload_id)
        assert etags == [f"etag-{n}" for n in range(1, len(parts) + 1)]
        assert all(len(part) >= MIN_PART_SIZE for part in parts[:-1]), "only the last part may be small"
        self.object = b"".join(parts)

    def abort(self, upload_id: str) -> None:
        self.uploads.pop(upload_id)
        self.aborted.append(upload_id)


def lines(data: bytes | None) -> list[dict[str, object]]:
    assert data is not None
    return [json.loads(line) for line in data.splitlines()]


def record(i: int, **extra: object) -> dict[str, object]:
    return {"s3_uri": f"s3://b/k{i}", "sftp_path": f"/in/k{i}", "size": i, "skipped": False, **extra}


def test_summary_counts_and_keeps_only_the_first_failures():
    summary = Summary(listed=3)
    for i in range(10_000):
        summary.add(record(i, skipped=i % 10 == 0) if i % 7 else {**record(i), "error": "OSError: no"})
    result = summary.to_dict()
    failed = sum(1 for i in range(10_000) if i % 7 == 0)
    assert result["count"] == 10_000
    assert result["failed_count"] == failed
    assert [r["s3_uri"] for r in result["failed"]] == ["s3://b/k0", "s3://b/k7", "s3://b/k14"]
    assert result["skipped"] == sum(1 for i in range(10_000) if i % 7 and i % 10 == 0)
    assert result["transferred"] == 10_000 - failed - result["skipped"]
    assert result["bytes"] == sum(i for i in range(10_000) if i % 7 and i % 10)
    assert len(json.dumps(result)) < 1024, "the summary does not grow with the object count"
    assert summary.failures_text().endswith(
        f"... and {failed - 3} more objects (the report, if one was asked for, names them all)"
    )


def test_summary_clips_long_texts_of_its_failures():
    summary = Summary()
    summary.add({"s3_uri": "s3://b/" + "k" * 5000, "sftp_path": "/in/x", "error": "E: " + "x" * 5000})
    (kept,) = summary.to_dict()["failed"]
    assert len(kept["s3_uri"]) <= 600 and len(kept["error"]) <= 600
    assert kept["error"].endswith("more characters)")


def test_report_writes_an_empty_object_first_then_one_line_per_record():
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    assert store.object == b""
    for i in range(5):
        report.write(record(i))
    assert store.object == b"", "small reports go up once, when closed"
    report.close()
    assert lines(store.object) == [record(i) for i in range(5)]


def test_report_streams_parts_of_at_least_5_mib_and_completes_them():
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store, part_size=1)  # raised to S3's 5 MiB minimum
    report.open()
    padding = "p" * 2000
    count = 6000  # about 12 MB of lines: two full parts and a last small one
    for i in range(count):
        report.write(record(i, padding=padding))
        if i == count // 2:
            assert store.part_up.wait(10), "the first full part went up while the task was still going"
            (parts,) = store.uploads.values()
            assert len(parts) == 1
    report.close()
    assert [r["s3_uri"] for r in lines(store.object)] == [f"s3://b/k{i}" for i in range(count)]
    assert store.uploads == {} and store.aborted == []


def test_a_failed_task_still_completes_its_report():
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    report.write(record(1))
    try:
        raise RuntimeError("the task failed")
    except RuntimeError:
        report.close()  # the operator closes it in its finally
    assert lines(store.object) == [record(1)]


def test_writers_do_not_wait_on_s3_until_two_parts_wait():
    """A slow part upload holds no writer back; a second full part waits, a third full part waits for it."""
    store = FakeStore()
    store.hold.clear()  # S3 answers nothing yet
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    line_bytes = len(json.dumps(record(0, padding="p" * 2000), sort_keys=True)) + 1
    per_part = -(-MIN_PART_SIZE // line_bytes)
    for i in range(2 * per_part):  # part 1 goes to the uploader (stuck), part 2 waits in the queue
        report.write(record(i, padding="p" * 2000))
    third = threading.Thread(
        target=lambda: [report.write(record(i, padding="p" * 2000)) for i in range(per_part + 1)]
    )
    third.start()
    third.join(0.5)
    assert third.is_alive(), "a third full part waits while two are on their way: back pressure, not memory"
    store.hold.set()
    third.join(10)
    assert not third.is_alive()
    report.close()
    assert len(lines(store.object)) == 3 * per_part + 1


def test_a_report_that_cannot_be_opened_fails_naming_its_uri():
    report = JsonLinesReport("s3://b/r.jsonl", FakeStore(fail_put=1))
    with pytest.raises(ReportError, match=r"Could not write the report s3://b/r\.jsonl: AccessDenied"):
        report.open()


def test_a_report_without_a_local_spool_fails_at_open_naming_its_uri(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    with pytest.raises(ReportError, match=r"report s3://b/r\.jsonl: no local file to spool it in"):
        report.open()
    assert store.puts == 0, "nothing is written to S3 before the spool is there"


class FullDisk(io.BytesIO):
    """A spool whose disk fills after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_spool_that_cannot_be_written_fails_the_report_not_the_deliveries(monkeypatch):
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kwargs: FullDisk(room=2_000))
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    for i in range(100):
        report.write(record(i))  # never raises: the deliveries go on
    with pytest.raises(ReportError, match=r"report s3://b/r\.jsonl: .*No space left on device"):
        report.close()
    assert report.lines + report.lost == 100 and report.lost > 0
    assert store.object == b"", "the empty report stays: no partial report is published"


def test_parts_are_spooled_on_disk_not_held_in_memory():
    """The part waits in the spool file; the report object itself holds no part-sized buffer."""
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    for i in range(4000):
        report.write(record(i, padding="p" * 1000))
    held = sum(sys.getsizeof(value) for value in vars(report).values())
    assert report._spooled > MIN_PART_SIZE // 2 and held < 64 * 1024
    report.close()
    assert len(lines(store.object)) == 4000


def test_a_part_that_fails_aborts_the_upload_and_close_raises_naming_the_uri():
    store = FakeStore(fail_part=2)
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    for i in range(6000):
        report.write(record(i, padding="p" * 2000))  # the deliveries go on: write never raises
    with pytest.raises(ReportError, match=r"report s3://b/r\.jsonl: part upload dropped") as err:
        report.close()
    assert "the deliveries went on" in str(err.value)
    assert store.uploads == {} and store.aborted == ["u0"], "no parts are left behind"
    assert report.lost > 0


def test_a_final_put_that_fails_raises_naming_the_uri():
    report = JsonLinesReport("s3://b/r.jsonl", FakeStore(fail_put=2))
    report.open()
    report.write(record(1))
    with pytest.raises(ReportError, match=r"s3://b/r\.jsonl"):
        report.close()


def test_the_sink_feeds_summary_and_report_from_many_threads():
    store = FakeStore()
    report = JsonLinesReport("s3://b/r.jsonl", store)
    report.open()
    sink = RecordSink(Summary(), report)
    threads = [
        threading.Thread(target=lambda t=t: [sink(record(t * 1000 + i)) for i in range(1000)])
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.close()
    assert sink.summary.count == 4000
    assert sorted(r["s3_uri"] for r in lines(store.object)) == sorted(f"s3://b/k{i}" for i in range(4000))


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("s3://b/r.jsonl", None, None),
        (None, TypeError, "report must be an 's3://bucket/key' string"),
        (["s3://b/r"], TypeError, "report must be"),
        ("b/r.jsonl", ValueError, "report must be an 's3://bucket/key' URL"),
        ("s3://b/", ValueError, "report must name an object"),
        ("s3://b/dir/", ValueError, "report must name an object"),
        ("s3:///key", ValueError, "report must name an object"),
    ],
)
def test_report_uri_is_checked_naming_report(value, error, match):
    if error is None:
        assert parse_report_uri(value) == ("b", "r.jsonl")
    else:
        with pytest.raises(error, match=match):
            parse_report_uri(value)
