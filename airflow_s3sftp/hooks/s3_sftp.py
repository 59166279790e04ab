# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Hook that streams S3 objects to SFTP paths through the ordered, verified delivery engine."""

from __future__ import annotations

import errno
import posixpath
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseHook
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from urllib3.exceptions import HTTPError as URLLib3HTTPError

from airflow_s3sftp.core.delivery import BatchProgress, Delivery, LeftoverSweeper, Source, extra_paths
from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.core.session import SessionPool, SFTPSession
from airflow_s3sftp.core.sftp import ensure_directory
from airflow_s3sftp.exceptions import (
    ConnectionConfigError,
    ConnectionLostError,
    CredentialsError,
    MissingTargetError,
    SourceChangedError,
    is_final,
)
from airflow_s3sftp.hooks.sftp import bulk_sftp_hook, connection_not_found_errors

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import paramiko
    from airflow.providers.sftp.hooks.sftp import SFTPHook
    from mypy_boto3_s3.client import S3Client

    from airflow_s3sftp.core.reader import OpenSource, Readable

_TRANSIENT_S3_ERRORS = (
    URLLib3HTTPError,
    ReadTimeoutError,
    ResponseStreamingError,
    IncompleteReadError,
    ConnectionClosedError,
    EndpointConnectionError,
    ConnectionError,
    TimeoutError,
)


# S3 refuses these for every request of the task, whatever the key.
_REFUSED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def _s3_error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def is_transient_s3_error(err: BaseException) -> bool:
    """Return True for errors after which reading the object again from the same offset may work."""
    return isinstance(err, _TRANSIENT_S3_ERRORS) and not isinstance(err, SourceChangedError)


PREFETCH_MAX = 8 * 1024 * 1024  # objects up to this size are read from the GET that described them


class _FirstBody:
    """The body of the GET that described an object, handed out once, closed if never taken."""

    def __init__(self, body: Readable | None) -> None:
        self.body = body
        self._lock = threading.Lock()

    def take(self) -> Readable | None:
        """Return the body the first time, None afterwards."""
        with self._lock:
            body, self.body = self.body, None
        return body

    def close(self) -> None:
        """Close the body if nobody took it."""
        body = self.take()
        if body is not None:
            body.close()


class S3ToSFTPHook(BaseHook):
    """Stream S3 objects to an SFTP server: in offset order, checksummed, verified and published atomically.

    Owns an :class:`~airflow.providers.amazon.aws.hooks.s3.S3Hook` and an
    :class:`~airflow.providers.sftp.hooks.sftp.SFTPHook`, both built on first use. Every setting
    of the ``sftp`` connection (host key, key file, ciphers, proxy command, timeouts) applies as in
    the SFTP hook; zlib compression is turned off for bulk data unless the connection's
    ``compress`` extra asks for it explicitly.

    :param aws_conn_id: Airflow connection of type ``aws`` used to read from S3
    :param sftp_conn_id: Airflow connection of type ``sftp`` used to write to the SFTP server
    """

    hook_name = "S3 to SFTP streaming"

    def __init__(self, aws_conn_id: str | None = "aws_default", sftp_conn_id: str = "sftp_default") -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.sftp_conn_id = sftp_conn_id

    @cached_property
    def s3_hook(self) -> S3Hook:
        """Return the S3 hook for ``aws_conn_id``; an id that names no connection is an error.

        ``S3Hook`` would fall back to the worker's default credentials (an instance role) and drop
        the connection's ``endpoint_url``: a typo would read from somewhere else. ``aws_conn_id=None``
        asks for the default credentials on purpose.
        """
        if self.aws_conn_id is not None:
            try:
                self.get_connection(self.aws_conn_id)
            except connection_not_found_errors() as err:
                raise ConnectionConfigError(
                    f"AWS connection {self.aws_conn_id!r} is not defined: create it, fix aws_conn_id, "
                    "or pass aws_conn_id=None to use the worker's default AWS credentials"
                ) from err
        return S3Hook(aws_conn_id=self.aws_conn_id)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Return the keys under ``prefix``; missing bucket or credentials raise the errors reads raise."""
        with self._reading(bucket, prefix, listing=True):
            return list(self.s3_hook.list_keys(bucket_name=bucket, prefix=prefix) or [])

    @cached_property
    def sftp_hook(self) -> SFTPHook:
        """Return the SFTP hook for ``sftp_conn_id``, with compression off unless the connection asks."""
        return bulk_sftp_hook(self.sftp_conn_id)

    @property
    def sftp_endpoint(self) -> str:
        """Return ``user@host:port`` of the SFTP connection, for messages (never a secret)."""
        hook = self.sftp_hook
        return f"{hook.username}@{hook.remote_host}:{hook.port}"

    def connect_session(self) -> SFTPSession:
        """Open a new SFTP session tuned for bulk writes, with one connection attempt.

        A failure that cannot heal raises a :class:`~airflow_s3sftp.exceptions.TaskWideError` naming
        the connection and the extra to fix; one that can raises
        :class:`~airflow_s3sftp.exceptions.ConnectionLostError`, which the delivery retries.
        """
        hook = bulk_sftp_hook(self.sftp_conn_id)
        endpoint = f"{hook.username}@{hook.remote_host}:{hook.port}"
        sftp = hook.get_conn()
        sock = sftp.get_channel().get_transport().sock  # type: ignore[union-attr]
        if isinstance(sock, socket.socket):
            # paramiko never sets it: an unacknowledged small write would wait ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SFTPSession(sftp, close=hook.close, endpoint=endpoint)

    def session_pool(self, size: int = 1) -> SessionPool:
        """Return a pool of up to ``size`` SFTP sessions, opened on demand and reused across objects."""
        return SessionPool(self.connect_session, size)

    @contextmanager
    def _reading(self, bucket: str, key: str, *, listing: bool = False) -> Iterator[None]:
        """Turn S3's answers about a missing or forbidden object into builtin errors that name it."""
        uri = f"s3://{bucket}/{key}"
        what = f"list {uri}" if listing else f"read {uri}"
        try:
            yield
        except NoCredentialsError as err:
            raise CredentialsError(
                f"No AWS credentials to {what} (aws connection {self.aws_conn_id!r}): set them in the "
                "connection"
            ) from err
        except ClientError as err:
            code = _s3_error_code(err)
            if code == "NoSuchBucket" or (
                code in ("404", "NoSuchKey", "NotFound") and not self.s3_hook.check_for_bucket(bucket)
            ):  # HEAD says 404, GET and LIST name it
                raise MissingTargetError(f"S3 bucket {bucket!r} does not exist (reading {uri})") from err
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"S3 object {uri} does not exist") from err
            if code in _REFUSED_CREDENTIALS:
                raise CredentialsError(
                    f"S3 refused the credentials of aws connection {self.aws_conn_id!r} ({code}) to {what}: "
                    "check its access key and secret"
                ) from err
            if code in ("403", "AccessDenied", "Forbidden"):
                raise PermissionError(
                    f"Access to {uri} denied: check the credentials and policy of aws connection "
                    f"{self.aws_conn_id!r}"
                ) from err
            raise

    def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        """Return the object's metadata with its checksums; missing or denied objects raise clear errors."""
        with self._reading(bucket, key):
            return dict(self.s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))

    @cached_property
    def s3_client(self) -> S3Client:
        """Return the boto3 S3 client of the S3 hook, without botocore's second hash of every GET.

        botocore >= 1.36 defaults to ``response_checksum_validation="when_supported"``: it asks for
        the checksum on every GetObject and hashes the whole body again, and only at the end of
        the stream. The delivery already hashes every byte and compares with S3's full-object
        checksum before the rename; the second pass cost ~0.8 CPU s/GiB (measured, benchmarks/).
        """
        client: S3Client = self.s3_hook.get_conn()
        client.meta.config.response_checksum_validation = "when_required"  # type: ignore[attr-defined]
        return client

    def _opener(
        self, bucket: str, key: str, head: dict[str, Any], first: _FirstBody | None = None
    ) -> OpenSource:
        """Return ``open_range(start, end=None)`` for the object, pinned to the version in ``head``.

        ``end`` is inclusive; None reads to the end. Every GET carries ``IfMatch`` (and the
        ``VersionId``), so bytes of two versions can never mix. ``first`` is the body of the GET
        that ``head`` came from: the first read of the whole object takes it instead of a new GET.
        """
        client = self.s3_client
        uri = f"s3://{bucket}/{key}"
        pin: dict[str, str] = {"IfMatch": head["ETag"]}
        if head.get("VersionId") and head["VersionId"] != "null":
            pin["VersionId"] = head["VersionId"]

        def open_range(start: int, end: int | None = None) -> Readable:
            if start == 0 and end is None and first is not None and (taken := first.take()) is not None:
                return taken
            ranged = (
                {"Range": f"bytes={start}-{'' if end is None else end}"} if start or end is not None else {}
            )
            try:
                response = client.get_object(Bucket=bucket, Key=key, **pin, **ranged)  # type: ignore[arg-type]
            except ClientError as err:
                if _s3_error_code(err) in ("PreconditionFailed", "412"):
                    raise SourceChangedError(
                        f"S3 object {uri} changed while it was being read (ETag is no longer "
                        f"{head['ETag']}); nothing was published"
                    ) from err
                raise
            body: Readable = response["Body"]
            return body

        return open_range

    def source(self, bucket: str, key: str) -> Source:
        """Return ``s3://bucket/key`` as the delivery core reads it: pinned to its current version."""
        return self._source(bucket, key, self.head_object(bucket, key))

    def _source(self, bucket: str, key: str, head: dict[str, Any], first: _FirstBody | None = None) -> Source:
        version = head.get("VersionId")
        return Source(
            uri=f"s3://{bucket}/{key}",
            size=int(head["ContentLength"]),
            open=self._opener(bucket, key, head, first),
            head=head,
            etag=str(head["ETag"]).strip('"'),
            version_id=version if version and version != "null" else None,
            is_retryable=is_transient_s3_error,
        )

    def _source_from_get(self, bucket: str, key: str) -> tuple[Source, _FirstBody]:
        """Return the object with one request instead of two: a GET whose headers stand in for HEAD.

        The GET asks for the checksums (``ChecksumMode``), so its headers carry all a HEAD would;
        a small object's body is kept for the delivery's first read. botocore then also checks the
        checksum of that body itself, which costs nothing on a small object; a large one's body is
        dropped and read again by a plain pinned GET, where that second hash would cost ~1 s/GiB.
        """
        with self._reading(bucket, key):
            response: dict[str, Any] = dict(
                self.s3_client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            )
        body: Readable = response.pop("Body")
        first = _FirstBody(body if int(response["ContentLength"]) <= PREFETCH_MAX else None)
        if first.body is None:
            body.close()
        return self._source(bucket, key, response, first), first

    def stream_object(
        self,
        bucket: str,
        key: str,
        sftp_path: str,
        options: DeliveryOptions | None = None,
        *,
        sessions: SessionPool | None = None,
        sweeper: LeftoverSweeper | None = None,
    ) -> dict[str, Any]:
        """Stream ``s3://bucket/key`` to ``sftp_path`` and return the JSON-able delivery record.

        :param bucket: S3 bucket name
        :param key: S3 object key
        :param sftp_path: final remote path of the file (not a directory)
        :param options: how to deliver; the defaults are safe
        :param sessions: SFTP sessions to use (and reuse); a one-session pool of its own when None.
            With a pool (many objects) the object is described by its own GET, one S3 request
            instead of HEAD + GET
        :param sweeper: removes abandoned temp files, shared by the deliveries of one task
        """
        options = options or DeliveryOptions()
        if sessions is not None:
            # Many objects: one GET per object instead of HEAD + GET (S3 requests dominate small files).
            source, first = self._source_from_get(bucket, key)
            try:
                return Delivery(source, sftp_path, options, sessions, sweeper=sweeper).run().to_dict()
            finally:
                first.close()  # not read when the delivery skipped or failed early
        source = self.source(bucket, key)
        with self.session_pool(1) as own:
            return Delivery(source, sftp_path, options, own, sweeper=sweeper).run().to_dict()

    def stream_objects(
        self,
        planned: Sequence[tuple[str, str, str]],
        options: DeliveryOptions | None = None,
        *,
        max_concurrency: int = 4,
    ) -> list[dict[str, Any]]:
        """Deliver ``(bucket, key, sftp_path)`` triples on a pool of reused sessions; return their records.

        The first SFTP session opens alone (retried with backoff if the connection drops or times
        out), and the target directories are checked on it; only then do up to ``max_concurrency``
        objects move at once, each SFTP session serving one object after another, all sharing one
        S3 client. A failed object yields a record with an ``error`` (``s3_uri``, ``sftp_path``,
        ``error``) and does not stop the others. A task-wide failure
        (:func:`~airflow_s3sftp.exceptions.is_final`: refused login, host key, missing key file,
        connection, bucket, directory or credentials) is raised once, at once: objects not yet
        started are not attempted, and a note lists what was not delivered.

        :param planned: what to deliver where
        :param options: how to deliver; the defaults are safe
        :param max_concurrency: objects (and SFTP sessions) in flight at once
        """
        options = options or DeliveryOptions()
        workers = max(1, min(max_concurrency, len(planned)))
        self.s3_client  # noqa: B018 - built once here, then shared by the threads (boto3 clients are thread-safe)
        finals = [path for _, _, path in planned]
        # Every name the task writes, known before the first sweep: the first object runs alone.
        sweeper = LeftoverSweeper(
            options.publishing.stale_temp_after,
            finals + [extra for path in finals for extra in extra_paths(path, options)],
        )
        progress = BatchProgress(len(planned), options.streaming.progress_interval)
        stop = _TaskStop(planned, atomic=options.publishing.atomic)

        def one(item: tuple[str, str, str]) -> dict[str, Any]:
            bucket, key, path = item
            if stop.error is not None:
                return stop.not_attempted(item)
            try:
                record = self.stream_object(bucket, key, path, options, sessions=pool, sweeper=sweeper)
            except Exception as err:
                if not stop.failed(item, err):
                    self.log.error("Delivering s3://%s/%s to %s failed: %s", bucket, key, path, err)
                progress.finished(0, failed=True)
                return _failure(item, err)
            progress.finished(0 if record["skipped"] else int(record["size"]))
            return record

        with self.session_pool(workers) as pool:
            try:
                first = self._first_session(pool, options)
            except Exception as err:
                stop.ends_all(planned, err)
                raise
            try:
                missing = _missing_directories(first.sftp, planned, create=options.publishing.create_dirs)
            except BaseException:
                pool.discard(first)
                raise
            pool.release(first)
            for item in planned:
                if posixpath.dirname(item[2]) in missing:
                    stop.failed(item, missing[posixpath.dirname(item[2])])
            stop.raise_if_task_wide()
            with ThreadPoolExecutor(max_workers=workers) as threads:
                records = list(threads.map(one, planned))
        stop.raise_if_task_wide(records)
        return records

    def _first_session(self, pool: SessionPool, options: DeliveryOptions) -> SFTPSession:
        """Open the task's first session alone: final failures at once, healable ones with backoff."""
        attempts = options.retry.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return pool.acquire()
            except ConnectionLostError as err:
                if attempt == attempts:
                    raise ConnectionLostError(
                        f"Could not connect to {self.sftp_endpoint} after {attempts} attempts; no object "
                        f"was attempted: {err}"
                    ) from err
                delay = options.retry.backoff(attempt)
                self.log.warning(
                    "Connecting to SFTP failed (%s); trying again in %.1fs (attempt %s of %s)",
                    err,
                    delay,
                    attempt + 1,
                    attempts,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _failure(item: tuple[str, str, str], err: BaseException) -> dict[str, Any]:
    bucket, key, path = item
    return {"s3_uri": f"s3://{bucket}/{key}", "sftp_path": path, "error": f"{type(err).__name__}: {err}"}


def _missing_directories(
    sftp: paramiko.SFTPClient, planned: Sequence[tuple[str, str, str]], *, create: bool
) -> dict[str, BaseException]:
    """Return the target directories that are missing (or not directories), with the error for each.

    Asked once per directory on the first session, before any object starts; with ``create_dirs``
    the deliveries make missing directories themselves.
    """
    if create:
        return {}
    missing: dict[str, BaseException] = {}
    for directory in sorted({posixpath.dirname(path) or "." for _, _, path in planned}):
        try:
            ensure_directory(sftp, directory, create=False)
        except FileNotFoundError as err:
            missing[directory] = MissingTargetError(str(err))
        except NotADirectoryError as err:
            missing[directory] = err
    return missing


class _TaskStop:
    """Notice the first failure that every remaining object would share, and end the task with it once.

    A final failure (:func:`~airflow_s3sftp.exceptions.is_final`) stops the task (a missing bucket or
    directory only when every object needs it); so does a
    permission denied on creating a temp file (``atomic=True``: the name is new, so it is the
    directory that refuses) when every object goes to that directory.
    """

    def __init__(self, planned: Sequence[tuple[str, str, str]], *, atomic: bool) -> None:
        self._total = len(planned)
        self._directories = {posixpath.dirname(path) for _, _, path in planned}
        self._buckets = {bucket for bucket, _, _ in planned}
        self._atomic = atomic
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._hit: list[tuple[str, str, str]] = []

    def _task_wide(self, item: tuple[str, str, str], err: BaseException) -> bool:
        if is_final(err) and not isinstance(err, MissingTargetError):
            return True
        directory = posixpath.dirname(item[2])
        if isinstance(err, MissingTargetError) and str(err).startswith("S3 bucket"):
            return self._buckets == {item[0]}
        shared = self._directories == {directory}
        if isinstance(err, MissingTargetError):
            return shared
        return shared and self._atomic and isinstance(err, PermissionError) and err.errno == errno.EACCES

    def failed(self, item: tuple[str, str, str], err: BaseException) -> bool:
        """Record a failed object; return True when the failure was already reported for the task."""
        with self._lock:
            if self.error is not None and type(err) is type(self.error):
                self._hit.append(item)
                return True
            if self.error is None and self._task_wide(item, err):
                self.error = err
                self._hit.append(item)
                return True
            return False

    def ends_all(self, planned: Sequence[tuple[str, str, str]], err: Exception) -> None:
        """Note on ``err`` that no object was attempted (the first connection failed, even after retries)."""
        self.error = err
        self._hit = list(planned)
        self._note(err, delivered=0)

    def not_attempted(self, item: tuple[str, str, str]) -> dict[str, Any]:
        """Return the record of an object left out after a task-wide failure."""
        with self._lock:
            self._hit.append(item)
        return _failure(item, RuntimeError("not attempted after a task-wide failure"))

    def raise_if_task_wide(self, records: Sequence[dict[str, Any]] | None = None) -> None:
        """Raise the task-wide failure once, with a note listing the objects it left undelivered."""
        if self.error is None:
            return
        err = self.error
        self._note(err, delivered=sum(1 for record in records or () if "error" not in record))
        raise err

    def _note(self, err: BaseException, *, delivered: int) -> None:
        shown = "\n".join(f"  s3://{bucket}/{key} -> {path}" for bucket, key, path in self._hit[:_LISTED])
        more = f"\n  ... and {len(self._hit) - _LISTED} more" if len(self._hit) > _LISTED else ""
        err.add_note(
            f"Task-wide failure, so the task stopped at once: {delivered} of {self._total} objects "
            f"delivered, "
            f"{self._total - delivered} not delivered:\n{shown}{more}"
        )


_LISTED = 20  # objects named in a task-wide failure's note; the rest are counted
