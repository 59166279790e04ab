# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The per-object report of a task: JSON Lines in S3, written as the task goes; and the record sink."""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
from typing import IO, TYPE_CHECKING, Any, Protocol

from airflow_s3sftp.exceptions import ReportError

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_s3sftp.core.batch import Summary

log = logging.getLogger(__name__)

#: S3's smallest part (but the last): the report spools this much before it uploads a part.
MIN_PART_SIZE = 5 * 1024 * 1024
#: Parts of one multipart upload at most (S3's limit): 10,000 x 5 MiB is about 50 GB of report.
MAX_PARTS = 10_000


def parse_report_uri(value: object) -> tuple[str, str]:
    """Return ``(bucket, key)`` of a ``report`` argument (``s3://bucket/key.jsonl``), or raise naming it."""
    if not isinstance(value, str):
        raise TypeError(f"report must be an 's3://bucket/key' string (got {type(value).__name__} {value!r})")
    if not value.startswith("s3://"):
        raise ValueError(f"report must be an 's3://bucket/key' URL (got {value!r})")
    bucket, _, key = value[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/") or "\x00" in key:
        raise ValueError(f"report must name an object, 's3://bucket/key.jsonl' (got {value!r})")
    return bucket, key


def _new_spool() -> IO[bytes]:
    """Return an anonymous local temp file (in TMPDIR) for the report's lines; it is gone once closed."""
    return tempfile.TemporaryFile(prefix="s3sftp-report-")


class ReportStore(Protocol):
    """Where a report goes: one S3 object, written whole or by a multipart upload.

    ``data`` is a seekable binary file at offset 0 that holds exactly what to write (read it to
    its end; a retry may seek back to 0), or ``bytes``.
    """

    def put(self, data: bytes | IO[bytes]) -> None:
        """Write the whole object."""

    def create(self) -> str:
        """Start a multipart upload; return its id."""

    def upload_part(self, upload_id: str, number: int, data: IO[bytes]) -> str:
        """Upload part ``number``; return its ETag."""

    def complete(self, upload_id: str, etags: list[str]) -> None:
        """Complete the upload with its parts in order."""

    def abort(self, upload_id: str) -> None:
        """Abort the upload (its parts are dropped)."""


class S3ReportStore:
    """:class:`ReportStore` on a boto3 S3 client (any object with its methods)."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key

    def put(self, data: bytes | IO[bytes]) -> None:
        """Write the whole object."""
        self._client.put_object(
            Bucket=self._bucket, Key=self._key, Body=data, ContentType="application/x-ndjson"
        )

    def create(self) -> str:
        """Start a multipart upload; return its id."""
        answer = self._client.create_multipart_upload(
            Bucket=self._bucket, Key=self._key, ContentType="application/x-ndjson"
        )
        return str(answer["UploadId"])

    def upload_part(self, upload_id: str, number: int, data: IO[bytes]) -> str:
        """Upload part ``number``; return its ETag (botocore streams the file and rewinds it on a retry)."""
        answer = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return str(answer["ETag"])

    def complete(self, upload_id: str, etags: list[str]) -> None:
        """Complete the upload with its parts in order."""
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
        )

    def abort(self, upload_id: str) -> None:
        """Abort the upload (its parts are dropped)."""
        self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)


class JsonLinesReport:
    """One JSON line per record, streamed into one S3 object as the task goes.

    :meth:`open` writes an empty object at once (so a wrong bucket or a missing permission fails
    before any delivery, and a task that fails before its first record still leaves an empty
    report). Lines are spooled to an anonymous local temp file (``TMPDIR``, deleted when closed);
    every ``part_size`` bytes (at least S3's 5 MiB) the full file goes to an uploader thread, which
    streams it up as the next part of a multipart upload, and a new file takes the lines. So the
    report costs a line of memory and at most three parts of local disk whatever the object count,
    and no writer waits on S3 unless a part is still waiting when the next one is full. (Measured:
    parts buffered in memory and uploaded by the worker threads left the task's peak RSS growing
    with the object count, about 0.6 KiB per record, through heap fragmentation.) :meth:`close`
    (called in a ``finally``) uploads the rest and completes the upload (or, for a report smaller
    than a part, replaces the empty object with one ``PutObject``), so a failed task leaves its
    report too. A task killed outright (``kill -9``) leaves the empty object and an incomplete
    upload (an ``AbortIncompleteMultipartUpload`` lifecycle rule drops its parts).

    A failure to write is kept (the lines after it are counted, not written) and raised by
    :meth:`close` as :class:`~airflow_s3sftp.exceptions.ReportError` naming the report's URI;
    the deliveries go on. Thread-safe.

    :param uri: ``s3://bucket/key``, for messages
    :param store: where the object goes
    :param part_size: bytes per uploaded part (at least 5 MiB)
    """

    def __init__(self, uri: str, store: ReportStore, *, part_size: int = MIN_PART_SIZE) -> None:
        self.uri = uri
        self._store = store
        self._part_size = max(part_size, MIN_PART_SIZE)
        self._spool: IO[bytes] | None = None  # the lines not handed to the uploader yet, open() to close()
        self._spooled = 0
        self._parts = 0  # full spools handed to the uploader
        # Full spools on their way up, at most one waiting: a writer waits while two are (back pressure).
        self._full: queue.Queue[IO[bytes] | None] = queue.Queue(maxsize=1)
        self._uploader: threading.Thread | None = None
        self._upload_id: str | None = None  # the uploader's, and close()'s once it has ended
        self._etags: list[str] = []
        self._lock = threading.Lock()
        self.lines = 0
        self.lost = 0
        self.error: BaseException | None = None

    def open(self) -> None:
        """Write the empty report now; raise :class:`ReportError` naming the URI if S3 or TMPDIR refuses."""
        try:
            self._spool = _new_spool()
        except OSError as err:
            raise ReportError(
                f"Could not write the report {self.uri}: no local file to spool it in ({err})"
            ) from err
        try:
            self._store.put(b"")
        except Exception as err:
            self._spool.close()
            self._spool = None
            raise ReportError(f"Could not write the report {self.uri}: {err}") from err

    def write(self, record: dict[str, Any]) -> None:
        """Add one record as a JSON line (handing the spool to the uploader when a part is full)."""
        line = json.dumps(record, sort_keys=True, default=str).encode() + b"\n"
        with self._lock:
            if self.error is not None:
                self.lost += 1
                return
            if self._spool is None:
                raise RuntimeError(f"the report {self.uri} is not open")
            try:
                self._spool.write(line)
                self._spooled += len(line)
                self.lines += 1
                if self._spooled >= self._part_size and self._parts < MAX_PARTS - 1:
                    self._hand_over_part()
            except Exception as err:
                self._fail(err)

    def _hand_over_part(self) -> None:
        """Hand the full spool to the uploader thread (started with the first part) and start a new one."""
        if self._uploader is None:
            self._uploader = threading.Thread(target=self._upload_parts, name="s3sftp-report", daemon=True)
            self._uploader.start()
        full, self._spool = self._spool, None
        assert full is not None
        full.flush()
        full.seek(0)
        self._full.put(full)  # waits while the part before is still waiting
        self._parts += 1
        self._spooled = 0
        self._spool = _new_spool()

    def _upload_parts(self) -> None:
        """Upload the handed spools as parts in order, on one thread, until ``None``; keep the first error.

        One thread: the writers never wait on S3, and the buffers botocore allocates to read and
        sign a part come from one allocator arena, not from every worker thread's in turn.
        """
        while (spool := self._full.get()) is not None:
            try:
                if self.error is None:  # after a failure the spools are only drained, so no writer waits
                    if self._upload_id is None:
                        self._upload_id = self._store.create()
                    self._etags.append(self._store.upload_part(self._upload_id, len(self._etags) + 1, spool))
            except Exception as err:
                self._noted(err)
            finally:
                spool.close()

    def _noted(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
            log.error("Writing the report %s failed, the deliveries go on without it: %s", self.uri, err)

    def _fail(self, err: BaseException) -> None:
        self.lost += 1  # the line that was being written
        self._noted(err)
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def close(self) -> None:
        """Upload what is spooled and publish the report; raise :class:`ReportError` if any write failed."""
        with self._lock:
            if self._uploader is not None:
                self._full.put(None)
                self._uploader.join()
                self._uploader = None
            if self.error is None and self._spool is not None:
                try:
                    self._spool.flush()
                    self._spool.seek(0)
                    if self._upload_id is None:
                        self._store.put(self._spool)  # a report smaller than a part: one PutObject
                    else:
                        if self._spooled:
                            self._etags.append(
                                self._store.upload_part(self._upload_id, len(self._etags) + 1, self._spool)
                            )
                        self._store.complete(self._upload_id, self._etags)
                        self._upload_id = None
                except Exception as err:
                    self._fail(err)
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            if self._upload_id is not None:
                try:
                    self._store.abort(self._upload_id)
                except Exception as err:  # the first error is the one to report
                    log.warning("Could not abort the upload of the report %s: %s", self.uri, err)
                self._upload_id = None
            if self.error is not None:
                raise ReportError(
                    f"Could not write the report {self.uri}: {self.error} (the report is left incomplete: "
                    f"{self.lines} records were handed to it before the failure, {self.lost} after; the "
                    "deliveries went on, the task's summary counts them all)"
                ) from self.error
        log.info("Wrote the report %s: %s records", self.uri, self.lines)


class RecordSink:
    """Where each finished object's record goes: the summary (XCom) and the report, if asked for.

    :param summary: counts and the first failures
    :param report: the per-object report, or None
    """

    def __init__(self, summary: Summary, report: JsonLinesReport | None = None) -> None:
        self.summary = summary
        self.report = report

    def __call__(self, record: dict[str, Any]) -> None:
        """Hand over one record."""
        self.summary.add(record)
        if self.report is not None:
            self.report.write(record)

    def run(self, deliver: Callable[[RecordSink], dict[str, Any]]) -> dict[str, Any]:
        """Return ``deliver(self)``'s result once the report (if any) is complete, closed whatever happens.

        A failed task keeps its own exception, with the report's failure as a note; a report that
        cannot be completed after a successful task raises
        :class:`~airflow_s3sftp.exceptions.ReportError` carrying the task's summary.
        """
        try:
            result = deliver(self)
        except BaseException as err:
            if self.report is not None:
                try:
                    self.report.close()
                except ReportError as report_err:
                    err.add_note(str(report_err))
            raise
        if self.report is not None:
            try:
                self.report.close()
            except ReportError as err:
                err.summary = result
                raise
        return result


def open_report(
    uri: str, client: Any, *, files_bucket: str | None, files_prefix: str | None
) -> JsonLinesReport:
    """Return the report at ``uri`` opened (its empty object written), refusing one among the task's files.

    :param uri: the ``report`` argument, ``s3://bucket/key.jsonl``
    :param client: the S3 client that writes it
    :param files_bucket: the bucket of the task's ``s3_prefix`` (None when it has none)
    :param files_prefix: that prefix, as a directory (``""`` for the whole bucket)
    """
    bucket, key = parse_report_uri(uri)
    if files_prefix is not None and bucket == files_bucket and key.startswith(files_prefix):
        raise ValueError(
            f"report {uri!r} lies under s3_prefix s3://{files_bucket}/{files_prefix}, among the task's "
            "files; write it elsewhere"
        )
    report = JsonLinesReport(uri, S3ReportStore(client, bucket, key))
    report.open()
    return report
