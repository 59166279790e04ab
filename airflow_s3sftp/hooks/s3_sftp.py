# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Hook that streams S3 objects to SFTP paths through the ordered, verified delivery engine."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

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

from airflow_s3sftp.core.batch import Batch
from airflow_s3sftp.core.delivery import Delivery, Source
from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.core.session import SessionPool, SFTPSession
from airflow_s3sftp.exceptions import (
    ConnectionConfigError,
    CredentialsError,
    MissingTargetError,
    SourceChangedError,
)
from airflow_s3sftp.hooks.sftp import bulk_sftp_hook, connection_not_found_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from airflow.providers.sftp.hooks.sftp import SFTPHook
    from mypy_boto3_s3.client import S3Client

    from airflow_s3sftp.core.reader import OpenSource, Readable
    from airflow_s3sftp.core.sweep import LeftoverSweeper

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

    Every S3 request goes through the S3 hook's own client, so the ``aws`` connection's
    ``config_kwargs`` (botocore ``Config``: retries, timeouts, addressing style, user agent) apply;
    every HEAD and GET carries the hook's requester-pays flag and the read arguments of its
    ``extra_args`` (SSE-C customer keys, ``ExpectedBucketOwner``). Both come from this hook's
    arguments, else from the connection's extra ``{"service_config": {"s3": {"requester_pays":
    true, "extra_args": {...}}}}`` (the place for a customer key: connection extras are kept
    encrypted, DAG files are not).

    :param aws_conn_id: Airflow connection of type ``aws`` used to read from S3
    :param sftp_conn_id: Airflow connection of type ``sftp`` used to write to the SFTP server
    :param requester_pays: read from a requester-pays bucket (the reads are billed to us), as in
        ``S3Hook(requester_pays=True)``; None takes the connection's setting (default off)
    :param extra_args: as in ``S3Hook(extra_args=...)``; the download arguments among them
        (``SSECustomerAlgorithm``, ``SSECustomerKey``, ``SSECustomerKeyMD5``,
        ``ExpectedBucketOwner``) go on every HEAD and GET; None takes the connection's setting
    """

    hook_name = "S3 to SFTP streaming"

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        sftp_conn_id: str = "sftp_default",
        *,
        requester_pays: bool | None = None,
        extra_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.sftp_conn_id = sftp_conn_id
        if requester_pays is not None and not isinstance(requester_pays, bool):
            raise TypeError(f"requester_pays must be True, False or None, got {requester_pays!r}")
        if extra_args is not None and not isinstance(extra_args, dict):
            raise TypeError(f"extra_args must be a dict or None, got {type(extra_args).__name__}")
        self.requester_pays = requester_pays
        self.extra_args = extra_args

    @cached_property
    def s3_hook(self) -> S3Hook:
        """Return the S3 hook for ``aws_conn_id``; an id that names no connection is an error.

        ``S3Hook`` would fall back to the worker's default credentials (an instance role) and drop
        the connection's ``endpoint_url``: a typo would read from somewhere else. ``aws_conn_id=None``
        asks for the default credentials on purpose.
        """
        settings = self._s3_settings
        extra_args = settings.get("extra_args") or None
        if settings.get("requester_pays"):
            try:
                return S3Hook(aws_conn_id=self.aws_conn_id, extra_args=extra_args, requester_pays=True)
            except TypeError:
                # Older amazon providers (9.4 here) have no requester_pays: our own reads still carry
                # RequestPayer; the hook's listing of a prefix does not.
                self.log.warning(
                    "This amazon provider's S3Hook takes no requester_pays: listings are not billed to us"
                )
        return S3Hook(aws_conn_id=self.aws_conn_id, extra_args=extra_args)

    @cached_property
    def _s3_settings(self) -> dict[str, Any]:
        """Return ``requester_pays`` and ``extra_args``: this hook's arguments, else the connection's."""
        settings: dict[str, Any] = {}
        if self.aws_conn_id is not None:
            try:
                conn = self.get_connection(self.aws_conn_id)
            except connection_not_found_errors() as err:
                raise ConnectionConfigError(
                    f"AWS connection {self.aws_conn_id!r} is not defined: create it, fix aws_conn_id, "
                    "or pass aws_conn_id=None to use the worker's default AWS credentials"
                ) from err
            settings = _s3_settings(conn.extra_dejson, self.aws_conn_id)
        if self.requester_pays is not None:
            settings["requester_pays"] = self.requester_pays
        if self.extra_args is not None:
            settings["extra_args"] = self.extra_args
        return settings

    @cached_property
    def s3_read_args(self) -> dict[str, Any]:
        """Return the arguments every HEAD and GET carries: requester pays, SSE-C key, bucket owner."""
        extra_args: dict[str, Any] = self._s3_settings.get("extra_args") or {}
        args = {name: value for name, value in extra_args.items() if name in _READ_ARGS}
        if self._s3_settings.get("requester_pays"):
            args["RequestPayer"] = "requester"
        return args

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Return the keys under ``prefix``; missing bucket or credentials raise the errors reads raise."""
        with self._reading(bucket, prefix, listing=True):
            return list(self.s3_hook.list_keys(bucket_name=bucket, prefix=prefix) or [])

    def iter_keys(self, bucket: str, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        """Yield the keys under ``prefix`` page by page (1,000 a request), in S3's order, as they are listed.

        ``start_after`` starts the listing after that key (S3's ``StartAfter``); memory holds one page.
        A missing bucket or credentials raise the errors reads raise.
        """
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after is not None and start_after > prefix:
            args["StartAfter"] = start_after
        if self._s3_settings.get("requester_pays"):
            args["RequestPayer"] = "requester"
        owner = (self._s3_settings.get("extra_args") or {}).get("ExpectedBucketOwner")
        if owner:
            args["ExpectedBucketOwner"] = owner
        with self._reading(bucket, prefix, listing=True):
            for page in self.s3_client.get_paginator("list_objects_v2").paginate(**args):
                for item in page.get("Contents") or ():
                    yield item["Key"]

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
            keyed = "SSECustomerKey" in self.s3_read_args
            if code in ("403", "AccessDenied", "Forbidden"):
                raise PermissionError(
                    f"Access to {uri} denied: check the credentials and policy of aws connection "
                    f"{self.aws_conn_id!r}"
                    + (", and that its SSE-C customer key is this object's" if keyed else "")
                ) from err
            if code in ("400", "BadRequest", "InvalidRequest") and not listing and not keyed:
                # What S3 answers a read of an SSE-C object that comes without its customer key.
                raise PermissionError(
                    f"S3 refused to read {uri} ({code}): if the object is encrypted with a customer key "
                    "(SSE-C), give SSECustomerAlgorithm and SSECustomerKey in the extra_args of aws "
                    f"connection {self.aws_conn_id!r} (service_config.s3.extra_args)"
                ) from err
            raise

    def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        """Return the object's metadata with its checksums; missing or denied objects raise clear errors."""
        with self._reading(bucket, key):
            return dict(
                self.s3_client.head_object(
                    Bucket=bucket, Key=key, ChecksumMode="ENABLED", **self.s3_read_args
                )
            )

    @cached_property
    def s3_client(self) -> S3Client:
        """Return the boto3 S3 client of the S3 hook, without botocore's second hash of every GET.

        botocore >= 1.36 defaults to ``response_checksum_validation="when_supported"``: it asks for
        the checksum on every GetObject and hashes the whole body again, and only at the end of
        the stream. The delivery already hashes every byte and compares with S3's full-object
        checksum before the rename; the second pass cost ~0.8 CPU s/GiB (measured, benchmarks/).
        """
        client: S3Client = self.s3_hook.get_conn()
        if getattr(self.s3_hook.config, "response_checksum_validation", None) is None:  # config_kwargs may
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
        pin: dict[str, str] = {**self.s3_read_args, "IfMatch": head["ETag"]}
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
                self.s3_client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **self.s3_read_args)
            )
        body: Readable = response.pop("Body")
        first = _FirstBody(body if int(response["ContentLength"]) <= PREFETCH_MAX else None)
        if first.body is None:
            body.close()
        return self._source(bucket, key, response, first), first

    @contextmanager
    def open_source(
        self, bucket: str, key: str, *, describe_with: Literal["head", "get"] = "head"
    ) -> Iterator[Source]:
        """Yield ``s3://bucket/key`` as the delivery core reads it, pinned to its current version.

        :param bucket: S3 bucket name
        :param key: S3 object key
        :param describe_with: ``"head"`` asks a HEAD for the object's metadata, then GETs its bytes;
            ``"get"`` asks one GET whose headers stand in for the HEAD and keeps a small object's
            body for the first read (one S3 request instead of two: what many small objects want).
            A kept body nobody read is closed on the way out.
        """
        if describe_with == "head":
            yield self.source(bucket, key)
            return
        if describe_with != "get":
            raise ValueError(f"describe_with must be 'head' or 'get', got {describe_with!r}")
        source, first = self._source_from_get(bucket, key)
        try:
            yield source
        finally:
            first.close()  # not read when the delivery skipped or failed early

    def stream_object(
        self,
        bucket: str,
        key: str,
        sftp_path: str,
        options: DeliveryOptions | None = None,
        *,
        sessions: SessionPool | None = None,
        sweeper: LeftoverSweeper | None = None,
        describe_with: Literal["head", "get"] = "head",
    ) -> dict[str, Any]:
        """Stream ``s3://bucket/key`` to ``sftp_path`` and return the JSON-able delivery record.

        :param bucket: S3 bucket name
        :param key: S3 object key
        :param sftp_path: final remote path of the file (not a directory)
        :param options: how to deliver; the defaults are safe
        :param sessions: SFTP sessions to use (and reuse); a one-session pool of its own when None
        :param sweeper: removes abandoned temp files, shared by the deliveries of one task
        :param describe_with: how the object's metadata is asked for, see :meth:`open_source`
        """
        options = options or DeliveryOptions()
        with self.open_source(bucket, key, describe_with=describe_with) as source:
            if sessions is not None:
                return Delivery(source, sftp_path, options, sessions, sweeper=sweeper).run().to_dict()
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

        The core's :class:`~airflow_s3sftp.core.batch.Batch` runs the loop (first session alone,
        then up to ``max_concurrency`` objects at once; per-object failures become records with an
        ``error``, a task-wide failure is raised once); this hook hands it the adapters: each
        object described by its own GET (one S3 request per small object), sessions from
        :meth:`connect_session`, one S3 client shared by the threads.

        :param planned: what to deliver where
        :param options: how to deliver; the defaults are safe
        :param max_concurrency: objects (and SFTP sessions) in flight at once
        """
        self.s3_client  # noqa: B018 - built once here, then shared by the threads (boto3 clients are thread-safe)
        return Batch(
            planned,
            options or DeliveryOptions(),
            source=lambda bucket, key: self.open_source(bucket, key, describe_with="get"),
            connect=self.connect_session,
            endpoint=lambda: self.sftp_endpoint,
            max_concurrency=max_concurrency,
        ).run()

    def deliver_objects(
        self,
        planned: Iterable[tuple[str, str, str]],
        options: DeliveryOptions,
        sink: Callable[[dict[str, Any]], None],
        *,
        max_concurrency: int = 4,
        total: int | None = None,
    ) -> None:
        """Deliver ``(bucket, key, sftp_path)`` triples as they come, handing each record to ``sink``.

        As :meth:`stream_objects`, but ``planned`` may be an iterator (a listing, page by page) that
        is consumed as the objects go, and no list of records is kept: ``sink`` gets each record as
        its object finishes (from the worker threads, one call at a time).

        :param planned: what to deliver where
        :param options: how to deliver
        :param sink: takes each object's record
        :param max_concurrency: objects (and SFTP sessions) in flight at once
        :param total: how many objects ``planned`` yields, when known (for progress and messages)
        """
        self.s3_client  # noqa: B018 - built once here, then shared by the threads (boto3 clients are thread-safe)
        Batch(
            planned,
            options,
            source=lambda bucket, key: self.open_source(bucket, key, describe_with="get"),
            connect=self.connect_session,
            endpoint=lambda: self.sftp_endpoint,
            max_concurrency=max_concurrency,
            total=total,
        ).stream(lambda _index, record: sink(record))


# The arguments of S3Hook.extra_args that a read takes (boto3's ALLOWED_DOWNLOAD_ARGS without the
# version and checksum mode, which the delivery sets itself); upload ones (ACL, SSE) do not apply.
_READ_ARGS = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "ExpectedBucketOwner")


def _s3_settings(extra: dict[str, Any], conn_id: str) -> dict[str, Any]:
    """Return ``requester_pays`` and ``extra_args`` from an aws connection's ``service_config.s3``."""
    service_config = extra.get("service_config") or {}
    s3 = service_config.get("s3") if isinstance(service_config, dict) else None
    if not isinstance(s3, dict):
        return {}
    settings: dict[str, Any] = {}
    if "requester_pays" in s3:
        if not isinstance(s3["requester_pays"], bool):
            raise ConnectionConfigError(
                f"AWS connection {conn_id!r}: service_config.s3.requester_pays must be true or false"
            )
        settings["requester_pays"] = s3["requester_pays"]
    if "extra_args" in s3:
        if not isinstance(s3["extra_args"], dict):
            raise ConnectionConfigError(
                f"AWS connection {conn_id!r}: service_config.s3.extra_args must be an object"
            )
        settings["extra_args"] = s3["extra_args"]
    return settings
