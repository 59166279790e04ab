# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Checksum sidecars, done markers and the "is the remote file already identical?" check."""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.checksums import new_hasher
from airflow_s3sftp.core.integrity import choose_source_check
from airflow_s3sftp.core.paths import backup_path_for, temp_path_for
from airflow_s3sftp.core.sftp import hash_remote, is_dir, publish, stat_or_none

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from paramiko import SFTPClient

    from airflow_s3sftp.core.reader import Hasher, Readable

log = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 64 * 1024


class _Tee:
    """Feed several hashers from one read."""

    def __init__(self, *hashers: Hasher) -> None:
        self._hashers = hashers

    def update(self, data: bytes, /) -> None:
        for hasher in self._hashers:
            hasher.update(data)


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


def write_small_file(sftp: SFTPClient, path: str, content: bytes, mode: int | None) -> None:
    """Write a small file under a temp name and rename it in, so readers never see it half-written."""
    temp = temp_path_for(path)
    with sftp.open(temp, "wb") as handle:
        handle.write(content)
    if mode is not None:
        try:
            sftp.chmod(temp, mode)
        except OSError as err:
            log.warning("Server refused chmod %o on %s: %s", mode, temp, err)
    publish(sftp, temp, path, replace=True, backup=backup_path_for(path))


def find_identical(
    sftp: SFTPClient,
    path: str,
    head: Mapping[str, Any],
    algorithm: str,
    read_source: Callable[[], Readable],
) -> str | None:
    """Return ``"<algorithm>:<hex>"`` when ``path`` already holds exactly the S3 object, else None.

    Cheapest proof first: a sidecar digest that equals S3's own full-object checksum needs no
    read at all; otherwise the remote file is read back and compared with S3's checksum or MD5
    ETag; when S3 has neither, the object itself is hashed and compared with the sidecar or the
    read-back digest.
    """
    attrs = stat_or_none(sftp, path)
    size = int(head["ContentLength"])
    if attrs is None or is_dir(attrs) or attrs.st_size != size:
        return None
    recorded = read_sidecar(sftp, path, algorithm)
    check = choose_source_check(head, preferred=algorithm)
    if check is not None and check.algorithm == algorithm and recorded is not None:
        return f"{algorithm}:{recorded}" if recorded == check.expected.hex() else None
    ours = new_hasher(algorithm)
    if check is not None:
        hash_remote(sftp, path, _Tee(ours, check.hasher), size)
        return f"{algorithm}:{ours.hexdigest()}" if check.verify() is None else None
    if recorded is None:
        hash_remote(sftp, path, ours, size)
        recorded = ours.hexdigest()
    source = new_hasher(algorithm)
    stream = read_source()
    try:
        while chunk := stream.read(4 * 1024 * 1024):
            source.update(chunk)
    finally:
        stream.close()
    return f"{algorithm}:{recorded}" if source.hexdigest() == recorded else None
