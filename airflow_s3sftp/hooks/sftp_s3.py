# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Hook that streams SFTP files into S3 through the verified inbound engine (the S3 port over boto3)."""

from __future__ import annotations

import base64
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, NoCredentialsError

from airflow_s3sftp.core.inbound import (
    InboundFile,
    InboundOptions,
    InboundTransfer,
    Stored,
    crc32_from_text,
    crc32_text,
    list_matching,
    split_glob,
    transfer_all,
)
from airflow_s3sftp.exceptions import CredentialsError, MissingTargetError
from airflow_s3sftp.hooks.s3_sftp import (
    _REFUSED_CREDENTIALS,
    S3ToSFTPHook,
    _s3_error_code,
    is_transient_s3_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from mypy_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

_RETRYABLE_CODES = frozenset(
    {"500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}
)


class S3ObjectStore:
    """The inbound engine's S3 port for one bucket and key, over a boto3 client.

    :param client: the boto3 S3 client (thread-safe; shared by the part uploads)
    :param bucket: the bucket
    :param key: the key
    :param aws_conn_id: the Airflow connection, for messages
    """

    def __init__(self, client: S3Client, bucket: str, key: str, *, aws_conn_id: str | None = None) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.uri = f"s3://{bucket}/{key}"
        self._conn_id = aws_conn_id

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn S3's refusals into builtin errors that name the object and the action."""
        try:
            yield
        except NoCredentialsError as err:
            raise CredentialsError(
                f"No AWS credentials to {action} {self.uri} (aws connection {self._conn_id!r}): set them in "
                "the connection"
            ) from err
        except ClientError as err:
            code = _s3_error_code(err)
            if code in ("PreconditionFailed", "412"):
                raise FileExistsError(
                    f"S3 object {self.uri} appeared during the transfer (if_exists='fail'); "
                    "nothing was published"
                ) from err
            if code == "NoSuchBucket":
                raise MissingTargetError(
                    f"S3 bucket {self.bucket!r} does not exist ({action} {self.uri})"
                ) from err
            if code in _REFUSED_CREDENTIALS:
                raise CredentialsError(
                    f"S3 refused the credentials of aws connection {self._conn_id!r} ({code}) to {action} "
                    f"{self.uri}: check its access key and secret"
                ) from err
            if code in ("403", "AccessDenied", "Forbidden"):
                raise PermissionError(
                    f"S3 denied {action} {self.uri}: check the credentials and policy of aws connection "
                    f"{self._conn_id!r}"
                ) from err
            raise

    def is_retryable(self, err: BaseException) -> bool:
        if isinstance(err, ClientError):
            return _s3_error_code(err) in _RETRYABLE_CODES
        return is_transient_s3_error(err)

    def _stored(self, head: dict[str, Any]) -> Stored:
        metadata = {str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()}
        etag = str(head.get("ETag", "")).strip('"')
        kind = head.get("ChecksumType")
        # A full-object CRC-32 only: a composite one (of parts) says nothing about the whole.
        full = kind == "FULL_OBJECT" or (kind is None and "-" not in etag)
        version = head.get("VersionId")
        return Stored(
            size=int(head.get("ContentLength", 0)),
            etag=etag,
            version_id=version if version and version != "null" else None,
            crc32=crc32_from_text(head.get("ChecksumCRC32")) if full else None,
            checksum_type=kind,
            sha256=metadata.get("sha256"),
            metadata=metadata,
        )

    def _head(self, version_id: str | None = None) -> Stored:
        pin = {"VersionId": version_id} if version_id and version_id != "null" else {}
        with self._errors("read"):
            return self._stored(
                dict(self.client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED", **pin))  # type: ignore[arg-type]
            )

    def head(self) -> Stored | None:
        try:
            return self._head()
        except ClientError as err:
            if _s3_error_code(err) not in ("404", "NoSuchKey", "NotFound"):
                raise
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _s3_error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                raise FileNotFoundError(
                    f"S3 bucket {self.bucket!r} does not exist (writing {self.uri})"
                ) from err
            raise
        return None

    def put(self, data: bytes, *, crc32: int, md5: bytes, sha256: str, if_none_match: bool) -> Stored:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        with self._errors("write"):
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=data,
                # botocore computes the CRC-32 of the body it sends (S3 checks it and stores it);
                # the engine compares what S3 stored with its own CRC-32 of the bytes read.
                ChecksumAlgorithm="CRC32",
                ContentMD5=base64.b64encode(md5).decode(),
                Metadata={"sha256": sha256},
                **extra,
            )
        return self._head(response.get("VersionId"))

    def create_upload(self, *, sha256: str | None) -> str:
        with self._errors("write"):
            response = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                ChecksumAlgorithm="CRC32",
                ChecksumType="FULL_OBJECT",
                Metadata={"sha256": sha256} if sha256 else {},
            )
        return str(response["UploadId"])

    def upload_part(self, upload_id: str, number: int, data: bytes, *, crc32: int) -> dict[str, Any]:
        checksum = crc32_text(crc32)
        with self._errors("write"):
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumCRC32=checksum,
            )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32": checksum}

    def complete(
        self, upload_id: str, parts: list[dict[str, Any]], *, crc32: int, if_none_match: bool
    ) -> Stored:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        with self._errors("publish"):
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                ChecksumCRC32=crc32_text(crc32),
                ChecksumType="FULL_OBJECT",
                **extra,
            )
        return self._head(response.get("VersionId"))

    def abort(self, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except Exception as err:  # the failure that got us here matters more; say what is left
            log.warning(
                "Could not abort multipart upload %s of %s (%s): abort it, or let a lifecycle rule do it",
                upload_id,
                self.uri,
                err,
            )

    def set_sha256(self, stored: Stored, sha256: str) -> Stored:
        source: dict[str, str] = {"Bucket": self.bucket, "Key": self.key}
        if stored.version_id:
            source["VersionId"] = stored.version_id
        try:
            with self._errors("copy"):
                response = self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    CopySource=source,  # type: ignore[arg-type]
                    CopySourceIfMatch=f'"{stored.etag}"',
                    MetadataDirective="REPLACE",
                    Metadata={**stored.metadata, "sha256": sha256},
                    ChecksumAlgorithm="CRC32",
                )
        except (ClientError, OSError) as err:
            log.warning("Could not add sha256 metadata to %s (%s); it is in the record", self.uri, err)
            return stored
        copied = self._head(response.get("VersionId"))
        if copied.size != stored.size or (
            stored.crc32 is not None and copied.crc32 is not None and copied.crc32 != stored.crc32
        ):
            raise OSError(f"Copying {self.uri} onto itself to add its sha256 changed it; check the bucket")
        return copied

    def delete(self, stored: Stored) -> None:
        pin = {"VersionId": stored.version_id} if stored.version_id else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, **pin)  # type: ignore[arg-type]
        except Exception as err:
            log.error("Could not delete the unverified object %s (%s): delete it by hand", self.uri, err)


class SFTPToS3Hook(S3ToSFTPHook):
    """Stream SFTP files into S3: pipelined in-order reads, a verified multipart upload, then ``after``.

    The connections are those of :class:`~airflow_s3sftp.hooks.s3_sftp.S3ToSFTPHook` (same
    ``aws`` and ``sftp`` connection handling, same SFTP sessions); only the direction differs.

    :param aws_conn_id: Airflow connection of type ``aws`` used to write to S3
    :param sftp_conn_id: Airflow connection of type ``sftp`` used to read from the SFTP server
    """

    hook_name = "SFTP to S3 streaming"

    def object_store(self, bucket: str, key: str) -> S3ObjectStore:
        """Return the S3 port of the inbound engine for ``s3://bucket/key``."""
        return S3ObjectStore(self.s3_client, bucket, key, aws_conn_id=self.aws_conn_id)

    def list_files(self, sftp_path: str) -> list[str]:
        """Return ``[sftp_path]``, or the regular files matching a glob in its last segment."""
        directory, pattern = split_glob(sftp_path)
        if pattern is None:
            return [sftp_path]
        with self.session_pool(1) as pool:
            session = pool.acquire()
            try:
                return list_matching(session.remote(), directory, pattern)
            finally:
                pool.release(session)

    def stream_file(self, item: InboundFile, options: InboundOptions | None = None) -> dict[str, Any]:
        """Bring ``item.sftp_path`` into ``s3://item.bucket/item.key``; return the JSON-able record."""
        options = options or InboundOptions()
        with self.session_pool(1) as pool:
            return (
                InboundTransfer(item, self.object_store(item.bucket, item.key), options, pool).run().to_dict()
            )

    def stream_files(
        self,
        items: Sequence[InboundFile],
        options: InboundOptions | None = None,
        *,
        max_concurrency: int = 4,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Bring in every item, up to ``max_concurrency`` at once on reused sessions; failures are records.

        ``sink`` gets each record as its file finishes (one call at a time).
        """
        options = options or InboundOptions()
        self.s3_client  # noqa: B018 - built once here, then shared by the threads
        with self.session_pool(max(1, min(max_concurrency, len(items)))) as pool:
            return transfer_all(
                items,
                lambda item: self.object_store(item.bucket, item.key),
                options,
                pool,
                max_concurrency=max_concurrency,
                on_record=sink,
            )
