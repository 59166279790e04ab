# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Checksum sidecars (the ``sha256sum -c`` format) and small files published by rename."""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING

from airflow_s3sftp.core.checksums import new_hasher
from airflow_s3sftp.core.paths import backup_path_for, new_token, temp_path_for
from airflow_s3sftp.core.sftp import stat_or_none

if TYPE_CHECKING:
    from paramiko import SFTPClient

    from airflow_s3sftp.core.remote import Remote


log = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 64 * 1024


def sidecar_path(path: str, algorithm: str) -> str:
    """Return the sidecar of ``path``: ``<path>.<algorithm>`` (``report.csv.sha256``)."""
    return f"{path}.{algorithm}"


def sidecar_text(path: str, hexdigest: str) -> str:
    """Return a sidecar line in the format ``sha256sum -c`` (and md5sum, sha1sum...) accepts."""
    return f"{hexdigest}  {posixpath.basename(path)}\n"


def parse_sidecar(text: str, algorithm: str) -> str | None:
    """Return the hex digest in a ``<hex>  <name>`` sidecar, or None when it holds no valid digest."""
    first = text.strip().split(maxsplit=1)
    if not first:
        return None
    digest = first[0].lower()
    expected = new_hasher(algorithm).digest_size * 2
    if len(digest) != expected or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest


def read_sidecar(sftp: SFTPClient, path: str, algorithm: str) -> str | None:
    """Return the digest recorded in the sidecar of ``path``, or None when there is none."""
    side = sidecar_path(path, algorithm)
    attrs = stat_or_none(sftp, side)
    if attrs is None or (attrs.st_size or 0) > MAX_SIDECAR_BYTES:
        return None
    with sftp.open(side, "rb") as handle:
        return parse_sidecar(handle.read(MAX_SIDECAR_BYTES).decode("utf-8", "replace"), algorithm)


def read_recorded(remote: Remote, path: str, algorithm: str) -> str | None:
    """Return the digest recorded in the sidecar of ``path`` read through the delivery's port, or None."""
    side = sidecar_path(path, algorithm)
    attrs = remote.stat(side)
    if attrs is None or (attrs.st_size or 0) > MAX_SIDECAR_BYTES:
        return None
    text = b"".join(remote.read(side, None)).decode("utf-8", "replace")
    return parse_sidecar(text, algorithm)


def write_small_file(remote: Remote, path: str, content: bytes, mode: int | None) -> None:
    """Write a small file under a unique temp name and rename it in, so readers never see it half-written."""
    token = new_token()
    remote.write_small(
        path, content, mode, temp=temp_path_for(path, token), backup=backup_path_for(path, token)
    )
