# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Hook that streams S3 objects to SFTP paths through the ordered, verified delivery engine."""

from __future__ import annotations

import socket
import time
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

from airflow_s3sftp.core.engine import Checkpoints, DeliveryOptions, DeliveryResult, deliver
from airflow_s3sftp.core.integrity import choose_source_check
from airflow_s3sftp.core.paths import temp_path_for
from airflow_s3sftp.core.sftp import remove_quietly
from airflow_s3sftp.core.sidecar import find_identical, sidecar_path, sidecar_text, write_small_file
from airflow_s3sftp.exceptions import ConnectionLostError, SourceChangedError
from airflow_s3sftp.hooks.sftp import bulk_sftp_hook, clear_connection_errors, close_sftp, connect_sftp

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def _s3_error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def is_transient_s3_error(err: BaseException) -> bool:
    """Return True for errors after which reading the object again from the same offset may work."""
    return isinstance(err, _TRANSIENT_S3_ERRORS) and not isinstance(err, SourceChangedError)


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
        """Return the S3 hook for ``aws_conn_id``."""
        return S3Hook(aws_conn_id=self.aws_conn_id)

    @cached_property
    def sftp_hook(self) -> SFTPHook:
        """Return the SFTP hook for ``sftp_conn_id``, with compression off unless the connection asks."""
        return bulk_sftp_hook(self.sftp_conn_id)

    @property
    def sftp_endpoint(self) -> str:
        """Return ``user@host:port`` of the SFTP connection, for messages (never a secret)."""
        hook = self.sftp_hook
        return f"{hook.username}@{hook.remote_host}:{hook.port}"

    @contextmanager
    def sftp_client(self) -> Iterator[paramiko.SFTPClient]:
        """Open an SFTP session tuned for bulk writes; connection failures raise errors that name the host."""
        with clear_connection_errors(self.sftp_hook, self.sftp_conn_id):
            sftp = connect_sftp(self.sftp_hook)
        try:
            sock = sftp.get_channel().get_transport().sock  # type: ignore[union-attr]
            if isinstance(sock, socket.socket):
                # paramiko never sets it: an unacknowledged small write would wait ~40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            yield sftp
        finally:
            close_sftp(self.sftp_hook)

    def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        """Return the object's metadata with its checksums; missing or denied objects raise clear errors."""
        client = self.s3_client
        uri = f"s3://{bucket}/{key}"
        try:
            head: dict[str, Any] = dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except NoCredentialsError as err:
            raise PermissionError(
                f"No AWS credentials to read {uri} (aws connection {self.aws_conn_id!r})"
            ) from err
        except ClientError as err:
            code = _s3_error_code(err)
            if code in ("404", "NoSuchKey", "NotFound"):
                if not self.s3_hook.check_for_bucket(bucket):
                    raise FileNotFoundError(f"S3 bucket {bucket!r} does not exist (reading {uri})") from err
                raise FileNotFoundError(f"S3 object {uri} does not exist") from err
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                raise PermissionError(
                    f"Access to {uri} denied: check the credentials and policy of aws connection "
                    f"{self.aws_conn_id!r}"
                ) from err
            raise
        return head

    @cached_property
    def s3_client(self) -> S3Client:
        """Return the boto3 S3 client of the S3 hook."""
        client: S3Client = self.s3_hook.get_conn()
        return client

    def _opener(self, bucket: str, key: str, head: dict[str, Any]) -> OpenSource:
        """Return ``open_range(start, end=None)`` for the object, pinned to the version in ``head``.

        ``end`` is inclusive; None reads to the end. Every GET carries ``IfMatch`` (and the
        ``VersionId``), so bytes of two versions can never mix.
        """
        client = self.s3_client
        uri = f"s3://{bucket}/{key}"
        pin: dict[str, str] = {"IfMatch": head["ETag"]}
        if head.get("VersionId") and head["VersionId"] != "null":
            pin["VersionId"] = head["VersionId"]

        def open_range(start: int, end: int | None = None) -> Readable:
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

    def stream_object(
        self,
        bucket: str,
        key: str,
        sftp_path: str,
        options: DeliveryOptions | None = None,
    ) -> dict[str, Any]:
        """Stream ``s3://bucket/key`` to ``sftp_path`` and return a JSON-able result record.

        :param bucket: S3 bucket name
        :param key: S3 object key
        :param sftp_path: final remote path of the file (not a directory)
        :param options: how to deliver; the defaults are safe
        """
        options = options or DeliveryOptions()
        uri = f"s3://{bucket}/{key}"
        head = self.head_object(bucket, key)
        size = int(head["ContentLength"])
        opener = self._opener(bucket, key, head)
        identity = {"s3_uri": uri, "etag": str(head["ETag"]).strip('"'), "version_id": head.get("VersionId")}
        source_check = choose_source_check(head, preferred=options.checksum)
        checkpoints = Checkpoints()
        attempt = 0
        while True:
            try:
                with self.sftp_client() as sftp:
                    if attempt == 0 and options.if_exists == "skip_identical":
                        identical = find_identical(
                            sftp, sftp_path, head, options.checksum or "sha256", lambda: opener(0)
                        )
                        if identical is not None:
                            self.log.info("%s already holds %s (%s): skipped", sftp_path, uri, identical)
                            return {
                                "sftp_path": sftp_path,
                                "size": size,
                                "checksum": identical,
                                "skipped": True,
                                **identity,
                            }
                    result: DeliveryResult = deliver(
                        sftp,
                        sftp_path,
                        opener,
                        size=size,
                        options=options,
                        source_check=source_check,
                        is_retryable=is_transient_s3_error,
                        describe=uri,
                        checkpoints=checkpoints,
                    )
                    extras = self._write_extras(sftp, result, options)
                break
            except ConnectionLostError as err:
                attempt += 1
                if attempt > options.retries:
                    self._remove_leftover(sftp_path, options)
                    raise ConnectionLostError(
                        f"Giving up on {uri} -> {self.sftp_endpoint}:{sftp_path} after {attempt} "
                        f"attempts: {err}"
                    ) from err
                delay = options.retry_delay * 2 ** (attempt - 1)
                self.log.warning(
                    "SFTP connection to %s lost (%s); reconnecting in %.1fs (attempt %s of %s)",
                    self.sftp_endpoint,
                    err,
                    delay,
                    attempt,
                    options.retries,
                )
                time.sleep(delay)
        return {**result.to_dict(), **extras, **identity, "skipped": False, "attempts": attempt + 1}

    @staticmethod
    def _write_extras(
        sftp: paramiko.SFTPClient, result: DeliveryResult, options: DeliveryOptions
    ) -> dict[str, str]:
        """Write the checksum sidecar and the done marker after the file itself is published."""
        written: dict[str, str] = {}
        if options.sidecar and options.checksum and result.checksum:
            path = sidecar_path(result.sftp_path, options.checksum)
            hexdigest = result.checksum.split(":", 1)[1]
            write_small_file(
                sftp, path, sidecar_text(result.sftp_path, hexdigest).encode(), options.file_mode
            )
            written["sidecar_path"] = path
        if options.done_marker:
            path = result.sftp_path + options.done_marker
            write_small_file(sftp, path, b"", options.file_mode)
            written["done_marker_path"] = path
        return written

    def _remove_leftover(self, sftp_path: str, options: DeliveryOptions) -> None:
        """Remove the temp file after a final failure, best effort on a fresh connection."""
        if not options.atomic:
            return
        try:
            with self.sftp_client() as sftp:
                remove_quietly(sftp, temp_path_for(sftp_path))
        except Exception as err:  # the next try takes a stale temp file over anyway
            self.log.warning("Could not remove the temp file of %s: %s", sftp_path, err)
