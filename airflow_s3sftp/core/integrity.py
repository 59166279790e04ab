# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Check the bytes read from S3 against the integrity data S3 keeps for the object."""

from __future__ import annotations

import base64
import hashlib
import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)


class _Crc32:
    """zlib's CRC-32 behind the ``update``/``digest`` interface of ``hashlib``."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")

    def copy(self) -> _Crc32:
        twin = _Crc32()
        twin._value = self._value
        return twin


class _CrtCrc:
    """CRC-32C or CRC-64/NVME from ``awscrt`` (installed with ``boto3[crt]``)."""

    def __init__(self, name: str) -> None:
        from awscrt import checksums

        self._fn = checksums.crc32c if name == "crc32c" else checksums.crc64nvme
        self._width = 4 if name == "crc32c" else 8
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")

    def copy(self) -> _CrtCrc:
        twin = _CrtCrc.__new__(_CrtCrc)
        twin._fn, twin._width, twin._value = self._fn, self._width, self._value
        return twin


def _new(name: str) -> Any:
    if name == "crc32":
        return _Crc32()
    if name in ("crc32c", "crc64nvme"):
        return _CrtCrc(name)
    if name == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(name)


# Cheapest first; sha256 comes first when we hash with sha256 anyway (see choose_source_check).
_S3_CHECKSUM_FIELDS = (
    ("crc32", "ChecksumCRC32"),
    ("crc32c", "ChecksumCRC32C"),
    ("crc64nvme", "ChecksumCRC64NVME"),
    ("sha1", "ChecksumSHA1"),
    ("sha256", "ChecksumSHA256"),
)


@dataclass(frozen=True)
class SourceCheck:
    """One digest S3 vouches for: what it is called, its algorithm and the expected value.

    It holds no hasher: whoever reads the bytes starts one with :meth:`new_hasher` for every
    attempt, so a retry can never inherit the bytes of an earlier one.
    """

    name: str  # e.g. "S3 ChecksumCRC32" or "S3 ETag (MD5)"
    algorithm: str
    expected: bytes

    def new_hasher(self) -> Any:
        """Return a fresh hasher for :attr:`algorithm`."""
        return _new(self.algorithm)

    def problem(self, digest: bytes) -> str | None:
        """Return None when ``digest`` is the expected one, else a message describing the mismatch."""
        if digest == self.expected:
            return None
        return f"{self.name} says {self.expected.hex()}, the bytes read give {digest.hex()}"


def choose_source_check(head: Mapping[str, Any], preferred: str | None = None) -> SourceCheck | None:
    """Return the cheapest full-object integrity check S3 offers for an object, or None.

    ``head`` is a ``HeadObject`` response fetched with ``ChecksumMode="ENABLED"``. Composite
    (multipart) checksums cover parts, not the object, and are ignored; the ETag is the MD5 of
    the bytes only for single-part objects without SSE-KMS or SSE-C.
    """
    composite = head.get("ChecksumType") == "COMPOSITE"
    candidates = list(_S3_CHECKSUM_FIELDS)
    if preferred:
        candidates.sort(key=lambda pair: pair[0] != preferred)
    for algorithm, field_name in candidates:
        value = head.get(field_name)
        if not value or composite or "-" in value:
            continue
        try:
            _new(algorithm)
        except ImportError:
            log.info("S3 offers %s but awscrt is not installed to check it", field_name)
            continue
        return SourceCheck(f"S3 {field_name}", algorithm, base64.b64decode(value))
    etag = str(head.get("ETag", "")).strip('"')
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or head.get(
        "SSECustomerAlgorithm"
    )
    if etag and "-" not in etag and not encrypted and len(etag) == 32:
        return SourceCheck("S3 ETag (MD5)", "md5", bytes.fromhex(etag))
    return None
