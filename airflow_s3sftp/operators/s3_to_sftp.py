# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Operator that streams an S3 object to an SFTP server in order, atomically and verified."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
from airflow_s3sftp.transfer.engine import DeliveryOptions
from airflow_s3sftp.transfer.paths import parse_s3_location, remote_path_for
from airflow_s3sftp.transfer.reader import MiB

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class S3ToSFTPStreamOperator(BaseOperator):
    """Stream an S3 object to an SFTP server without temp disk, so no partial file is ever visible.

    Bytes flow from one S3 GET straight into the SFTP file, written strictly in offset order
    (no seek, no holes), with bounded memory and a checksum computed on the fly. With
    ``atomic`` the data goes to a hidden temp name in the target directory, is verified, and is
    renamed onto the final name (``posix-rename@openssh.com`` where the server offers it), so a
    partner watching the directory sees the old complete file or the new complete file and
    nothing in between. The bytes read are checked against S3's own integrity data when the
    object has it (a full-object checksum, or the MD5 ETag of a single-part object).

    Returns (XCom) ``{"s3_uri", "sftp_path", "size", "checksum", "seconds", "mb_per_s",
    "verified", "published_with", "source_check", "etag", "version_id"}``.

    :param s3_key: key of the object, or an ``s3://bucket/key`` URL when ``s3_bucket`` is None (templated)
    :param sftp_path: remote file path; a path ending in ``/`` is a directory and the key's base
        name is appended (templated)
    :param s3_bucket: bucket of the object (templated)
    :param aws_conn_id: Airflow ``aws`` connection (templated)
    :param sftp_conn_id: Airflow ``sftp`` connection (templated)
    :param atomic: write to a temp name and rename when verified; False writes the final name
        directly (still in order), for servers where rename is not possible
    :param checksum: algorithm of the on-the-fly checksum (sha256, sha1, sha512, md5, blake2b),
        None for none
    :param verify: before publishing, check nothing (``"none"``), the remote size (``"size"``),
        or re-read the remote file and compare checksums (``"checksum"``, reads it all back)
    :param if_exists: ``"replace"`` an existing file atomically, or ``"fail"`` when one exists
    :param create_dirs: create missing directories of ``sftp_path``
    :param file_mode: permissions given to the file after verification (the temp file is 0600);
        None keeps the server's default
    :param strict_order: wait for each write's acknowledgement before sending the next, for SFTP
        servers that may apply pipelined writes in parallel (slower; OpenSSH does not need it)
    :param chunk_size: bytes per S3 read and per queued chunk
    :param read_ahead: chunks read ahead of the SFTP writer (memory is about chunk_size * read_ahead)
    :param fsync: ask the server to flush the file to disk before publishing (``fsync@openssh.com``)
    """

    template_fields: Sequence[str] = ("s3_bucket", "s3_key", "sftp_path", "aws_conn_id", "sftp_conn_id")
    ui_color = "#f0eee4"

    def __init__(
        self,
        *,
        s3_key: str,
        sftp_path: str,
        s3_bucket: str | None = None,
        aws_conn_id: str | None = "aws_default",
        sftp_conn_id: str = "sftp_default",
        atomic: bool = True,
        checksum: str | None = "sha256",
        verify: Literal["none", "size", "checksum"] = "size",
        if_exists: Literal["replace", "fail"] = "replace",
        create_dirs: bool = True,
        file_mode: int | None = 0o644,
        strict_order: bool = False,
        chunk_size: int = 4 * MiB,
        read_ahead: int = 4,
        fsync: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.sftp_path = sftp_path
        self.aws_conn_id = aws_conn_id
        self.sftp_conn_id = sftp_conn_id
        self.atomic = atomic
        self.checksum = checksum
        self.verify = verify
        self.if_exists = if_exists
        self.create_dirs = create_dirs
        self.file_mode = file_mode
        self.strict_order = strict_order
        self.chunk_size = chunk_size
        self.read_ahead = read_ahead
        self.fsync = fsync

    def delivery_options(self) -> DeliveryOptions:
        """Return the validated delivery options (raises ``ValueError`` on a bad value)."""
        return DeliveryOptions(
            atomic=self.atomic,
            checksum=self.checksum,
            verify=self.verify,
            if_exists=self.if_exists,
            create_dirs=self.create_dirs,
            file_mode=self.file_mode,
            strict_order=self.strict_order,
            chunk_size=self.chunk_size,
            read_ahead=self.read_ahead,
            fsync=self.fsync,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        bucket, key = parse_s3_location(self.s3_bucket, self.s3_key)
        path = remote_path_for(self.sftp_path, key)
        options = self.delivery_options()
        hook = S3ToSFTPHook(aws_conn_id=self.aws_conn_id, sftp_conn_id=self.sftp_conn_id)
        self.log.info("Delivering s3://%s/%s to %s on %s", bucket, key, path, hook.sftp_endpoint)
        return hook.stream_object(bucket, key, path, options)
