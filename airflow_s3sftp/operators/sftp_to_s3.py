# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Operator that streams proven-complete SFTP files into S3, verified before the object appears."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_s3sftp.core.batch import Summary
from airflow_s3sftp.core.inbound import InboundFile, InboundOptions, has_glob, plan_files, split_glob
from airflow_s3sftp.core.paths import parse_s3_location, parse_s3_prefix, prefix_as_directory
from airflow_s3sftp.core.report import JsonLinesReport, RecordSink, open_report
from airflow_s3sftp.exceptions import DeliveryFailedError
from airflow_s3sftp.hooks.sftp_s3 import SFTPToS3Hook

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context


class SFTPToS3StreamOperator(BaseOperator):
    """Stream SFTP files into S3 without temp disk; an object appears only if it equals what was proven.

    The file is read with a window of SFTP READ requests in flight, strictly in offset order,
    and streamed into an S3 multipart upload (parts of ``tuning["part_size"]`` uploaded in
    parallel, each with its CRC-32, the object with a full-object CRC-32; a file smaller than one
    part goes up with one ``PutObject``). Memory is bounded by about
    ``(upload_concurrency + 1) * part_size`` (plus about ``channels * stripe_size`` when several
    SFTP channels read one file on a long link). SHA-256 is computed over the bytes in order and
    stored in the object's metadata (``x-amz-meta-sha256``).

    Nothing is published unless the bytes are proven: the file's size and mtime are the same
    before and after the read, the size equals ``expected_size`` and the SHA-256 equals
    ``expected_checksum`` (when given); ``CompleteMultipartUpload`` is the atomic publish and is
    sent only after those checks. Otherwise the upload is aborted (no parts left behind) and the
    task fails naming what changed. A dropped SSH connection resumes reading at the last byte
    read with the upload kept open; a failed part upload is retried. ``after`` (delete or move
    the SFTP file) runs only once the S3 object is complete and verified, and only if the file is
    still the one that was read.

    One file returns its record (XCom): ``s3_uri``, ``sftp_path``, ``size``, ``checksum``
    (``"sha256:<hex>"``), ``s3_checksum`` (``"crc32:<hex>"``, the full-object checksum S3
    stored), ``etag``, ``version_id``, ``seconds``, ``mb_per_s``, ``skipped``, ``upload``
    (``put``, ``multipart`` or ``none``), ``parts``, ``channels`` (SFTP channels that read at
    once), ``attempts``, ``resumed_from``, ``s3_check``
    (what S3's answer was checked against), ``after``, ``moved_to`` (and ``report`` when one is
    asked for). Many files (a glob or ``sftp_paths``) return a summary whose size does not grow
    with the file count: ``{"count", "transferred", "skipped", "bytes", "failed_count", "failed":
    [the first 20 failure records], "report": <uri or None>}``; the per-file records go to
    ``report``. When some fail the others still complete and the task fails with
    :class:`~airflow_s3sftp.exceptions.DeliveryFailedError` naming (the first 20 of) the failures.

    :param sftp_path: one remote file, or a directory plus a glob in the last segment
        (``/inbound/*.csv``; hidden files match only a pattern starting with a dot) (templated)
    :param sftp_paths: remote files to bring in, e.g. from event payloads (templated)
    :param s3_bucket: bucket of the objects; None when ``s3_key`` / ``s3_prefix`` is an ``s3://`` URL
        (templated)
    :param s3_key: key of the object, for one file (templated)
    :param s3_prefix: each file lands under ``<prefix>/<its name>`` (templated)
    :param expected_checksum: ``"sha256:<hex>"`` the bytes must hash to, e.g. the event payload's
        ``checksum``; with many files, a mapping from path to checksum (templated)
    :param expected_size: bytes the file must hold; with many files, a mapping from path to
        size (templated)
    :param after: once the S3 object is complete and verified, ``"keep"`` the SFTP file,
        ``"delete"`` it, or ``"move"`` it into ``move_to`` (never overwriting a file there)
    :param move_to: directory on the SFTP server for ``after="move"`` (templated)
    :param if_exists: an existing S3 object is replaced (``"replace"``), refused (``"fail"``, a
        conditional write ``If-None-Match: *`` so a race is refused too), or kept when its
        ``sha256`` metadata and size equal the file's (``"skip_identical"``)
    :param sftp_conn_id: Airflow ``sftp`` connection (templated)
    :param aws_conn_id: Airflow ``aws`` connection (templated)
    :param max_concurrency: files brought in at once (each on its own SFTP session)
    :param max_connections: SSH connections open at once at most; with ``max_concurrency`` above
        it, the sessions share the connections as SFTP channels of their own
    :param allow_empty: with a glob, succeed when nothing matches instead of failing
    :param report: ``s3://bucket/key.jsonl``: write every file's record there as one JSON line, as
        the task goes (the empty object first, so a wrong bucket fails before any file; parts of 5
        MiB; completed even when the task fails). Not under ``s3_prefix``. A failure to write it
        fails the task with :class:`~airflow_s3sftp.exceptions.ReportError` naming it (templated)
    :param tuning: ``part_size`` (bytes, >= 5 MiB; default 8 MiB), ``upload_concurrency``
        (parts in flight, default 3), ``connection_retries`` (3), ``connection_retry_delay`` (1 s),
        ``s3_retries`` (per part, 3), ``io_timeout`` (60 s), ``progress_interval`` (30 s),
        ``channels`` (SFTP channels reading one file; None: 8 on a link with a round trip of 10 ms or
        more, else 1), ``stripe_size`` (bytes each channel reads in turn, 8 MiB)
    """

    template_fields: Sequence[str] = (
        "sftp_path",
        "sftp_paths",
        "s3_bucket",
        "s3_key",
        "s3_prefix",
        "expected_checksum",
        "expected_size",
        "move_to",
        "sftp_conn_id",
        "aws_conn_id",
        "report",
    )
    ui_color = "#e4eef0"

    def __init__(
        self,
        *,
        sftp_path: str | None = None,
        sftp_paths: list[str] | None = None,
        s3_bucket: str | None = None,
        s3_key: str | None = None,
        s3_prefix: str | None = None,
        expected_checksum: str | dict[str, str] | None = None,
        expected_size: int | dict[str, int] | None = None,
        after: Literal["keep", "delete", "move"] = "keep",
        move_to: str | None = None,
        if_exists: Literal["replace", "fail", "skip_identical"] = "replace",
        sftp_conn_id: str = "sftp_default",
        aws_conn_id: str | None = "aws_default",
        max_concurrency: int = 4,
        max_connections: int = 4,
        allow_empty: bool = False,
        report: str | None = None,
        tuning: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sftp_path = sftp_path
        self.sftp_paths = sftp_paths
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.s3_prefix = s3_prefix
        self.expected_checksum = expected_checksum
        self.expected_size = expected_size
        self.after = after
        self.move_to = move_to
        self.if_exists = if_exists
        self.sftp_conn_id = sftp_conn_id
        self.aws_conn_id = aws_conn_id
        self.max_concurrency = max_concurrency
        self.max_connections = max_connections
        self.allow_empty = allow_empty
        self.report = report
        self.tuning = tuning
        # Non-templated arguments fail the DAG at parse time.
        if (sftp_path is None) == (sftp_paths is None):
            raise ValueError("Set exactly one of sftp_path or sftp_paths")
        if (s3_key is None) == (s3_prefix is None):
            raise ValueError("Set exactly one of s3_key (one file) or s3_prefix (each file under its name)")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency <= 0:
            raise ValueError(f"max_concurrency must be a positive int (got {max_concurrency!r})")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections <= 0:
            raise ValueError(f"max_connections must be a positive int (got {max_connections!r})")
        if not isinstance(allow_empty, bool):
            raise TypeError(f"allow_empty must be True or False (got {allow_empty!r})")
        if tuning is not None and not isinstance(tuning, Mapping):
            raise TypeError(f"tuning must be a dict (got {tuning!r})")
        self.inbound_options()
        self._planned: list[InboundFile] = []

    def inbound_options(self) -> InboundOptions:
        """Return the validated options (raises ``ValueError`` or ``TypeError`` naming the argument)."""
        return InboundOptions.build(
            after=self.after, move_to=self.move_to, if_exists=self.if_exists, tuning=self.tuning
        )

    def _hook(self) -> SFTPToS3Hook:
        return SFTPToS3Hook(aws_conn_id=self.aws_conn_id, sftp_conn_id=self.sftp_conn_id)

    def _many(self) -> bool:
        return self.sftp_paths is not None or (isinstance(self.sftp_path, str) and has_glob(self.sftp_path))

    def plan(self, hook: SFTPToS3Hook) -> list[InboundFile]:
        """Return the files this task brings in and where each lands; bad templated values raise here."""
        if self.s3_key is not None:
            if not isinstance(self.s3_key, str):
                raise TypeError(f"s3_key must be a string (got {self.s3_key!r})")
            bucket, key = parse_s3_location(self.s3_bucket, self.s3_key)
            prefix = None
        else:
            if not isinstance(self.s3_prefix, str):
                raise TypeError(f"s3_prefix must be a string (got {self.s3_prefix!r})")
            bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix)
            key = None
        if self.sftp_paths is not None:
            if isinstance(self.sftp_paths, str) or not all(isinstance(p, str) for p in self.sftp_paths):
                raise TypeError(f"sftp_paths must be a list of paths (got {self.sftp_paths!r})")
            paths = list(self.sftp_paths)
            for path in paths:
                if split_glob(path)[1] is not None:
                    raise ValueError(f"sftp_paths names files, not globs (got {path!r})")
            if not paths and not self.allow_empty:
                raise ValueError("sftp_paths is empty (allow_empty=True accepts that)")
        else:
            if not isinstance(self.sftp_path, str):
                raise TypeError(f"sftp_path must be a string (got {self.sftp_path!r})")
            paths = hook.list_files(self.sftp_path)
            if not paths and not self.allow_empty:
                raise FileNotFoundError(
                    f"No SFTP files match sftp_path {self.sftp_path!r} on {hook.sftp_endpoint} "
                    "(allow_empty=True accepts that)"
                )
        if not paths:
            return []
        checksum, size = self.expected_checksum, self.expected_size
        if self._many() and len(paths) == 1:
            # One match of a glob: a single expected value applies to it.
            checksum = checksum if isinstance(checksum, Mapping) or checksum is None else {paths[0]: checksum}
            size = size if isinstance(size, Mapping) or size is None else {paths[0]: size}
        return plan_files(
            paths, bucket=bucket, key=key, prefix=prefix, expected_checksum=checksum, expected_size=size
        )

    def _report(self, hook: SFTPToS3Hook) -> JsonLinesReport | None:
        """Return the opened report (its empty object written), or None when none is asked for."""
        if self.report is None:
            return None
        files_bucket, files_prefix = None, None
        if isinstance(self.s3_prefix, str):
            files_bucket, prefix = parse_s3_prefix(self.s3_bucket, self.s3_prefix)
            files_prefix = prefix_as_directory(prefix)
        report = open_report(
            self.report, hook.s3_client, files_bucket=files_bucket, files_prefix=files_prefix
        )
        self.log.info("Writing every file's record to %s", self.report)
        return report

    def execute(self, context: Context) -> dict[str, Any]:
        options = self.inbound_options()
        hook = self._hook()
        planned = self.plan(hook)
        self._planned = planned
        report = self._report(hook)
        return RecordSink(Summary(), report).run(lambda sink: self._bring_in(hook, planned, options, sink))

    def _bring_in(
        self, hook: SFTPToS3Hook, planned: list[InboundFile], options: InboundOptions, sink: RecordSink
    ) -> dict[str, Any]:
        if not self._many():
            item = planned[0]
            self.log.info("Bringing %s on %s into %s", item.sftp_path, hook.sftp_endpoint, item.s3_uri)
            try:
                record = hook.stream_file(item, options)
            except Exception as err:
                sink(
                    {
                        "s3_uri": item.s3_uri,
                        "sftp_path": item.sftp_path,
                        "error": f"{type(err).__name__}: {err}",
                    }
                )
                raise
            sink(record)
            return {**record, "report": self.report} if self.report is not None else record
        self.log.info("Bringing %s files into S3 with up to %s at once", len(planned), self.max_concurrency)
        if planned:
            hook.stream_files(
                planned,
                options,
                max_concurrency=self.max_concurrency,
                max_connections=self.max_connections,
                sink=sink,
            )
        summary = sink.summary
        result = {**summary.to_dict(), "report": self.report}
        self.log.info(
            "Brought in %s of %s files (%s skipped as identical, %s bytes), %s failed",
            summary.done,
            summary.count,
            summary.skipped,
            summary.bytes,
            summary.failed_count,
        )
        if summary.failed_count:
            raise DeliveryFailedError(
                f"{summary.failed_count} of {summary.count} files failed (the other {summary.done} are in "
                f"S3, verified):\n{summary.failures_text('files', inbound=True)}",
                result,
            )
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Return the SFTP files read (``sftp://host:port``) and the S3 objects written (``s3://bucket``)."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        hook = self._hook()
        sftp = hook.sftp_hook
        host = sftp.remote_host
        try:
            host = socket.gethostbyname(host)
        except OSError:
            self.log.debug("Could not resolve %s for lineage; using it as given", host)
        namespace = f"sftp://{host}:{sftp.port or 22}"
        planned = self._planned or self.plan(hook)
        return OperatorLineage(
            inputs=[Dataset(namespace=namespace, name=item.sftp_path) for item in planned],
            outputs=[Dataset(namespace=f"s3://{item.bucket}", name=item.key) for item in planned],
        )
