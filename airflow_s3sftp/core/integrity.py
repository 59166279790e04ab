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
import re
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


# A multipart object's ETag is ``<md5 of the parts' md5s>-<parts>``; so is a composite checksum.
_PARTS_SUFFIX = re.compile(r"-(\d+)$")
# The only algorithms S3 can keep as a full-object checksum of a multipart object (ChecksumType FULL_OBJECT).
_FULL_OBJECT_CAPABLE = frozenset({"crc32", "crc32c", "crc64nvme"})


@dataclass(frozen=True)
class SourceIntegrity:
    """What S3's integrity data allows: the check to run (if any) and why each other offer was passed over."""

    check: SourceCheck | None
    passed_over: tuple[str, ...] = ()

    @property
    def unchecked_reason(self) -> str | None:
        """Return why S3's integrity data is not checked (None when it is)."""
        if self.check is not None:
            return None
        return "; ".join(self.passed_over) or "S3 keeps no checksum for the object"


def _distrust(algorithm: str, value: str, checksum_type: object, parts: int | None) -> str | None:
    """Return why a checksum S3 sent does not cover the object's bytes as a whole, or None if it does.

    Trusted: ``ChecksumType == "FULL_OBJECT"`` (CRCs only on multipart objects), or any checksum of a
    single-part object. A composite checksum (``COMPOSITE``, or a ``-N`` suffix) covers the parts'
    checksums; S3-compatible stores (moto among them) may send one without saying so, which only the
    multipart ETag then reveals.
    """
    if checksum_type == "COMPOSITE" or _PARTS_SUFFIX.search(value):
        return "is composite (a checksum of the parts' checksums, not of the bytes)"
    if parts is None:
        return None
    if algorithm not in _FULL_OBJECT_CAPABLE:
        return f"of a multipart object ({parts} parts) covers its parts, not the whole object"
    if checksum_type != "FULL_OBJECT":
        return (
            f"of a multipart object ({parts} parts) is not marked FULL_OBJECT (ChecksumType {checksum_type})"
        )
    return None


def weigh_source_integrity(head: Mapping[str, Any], preferred: str | None = None) -> SourceIntegrity:
    """Return the cheapest whole-object integrity check S3 offers for an object, and why others are not used.

    ``head`` is a ``HeadObject`` (or ``GetObject``) response fetched with ``ChecksumMode="ENABLED"``.
    A checksum counts only when it covers the whole object: S3 says ``ChecksumType: FULL_OBJECT``
    (possible for CRC32, CRC32C and CRC64NVME) or the object is single-part (its ETag has no ``-N``).
    SHA-1 and SHA-256 of a multipart object never cover the whole object. The ETag is the MD5 of the
    bytes only for single-part objects without SSE-KMS or SSE-C.
    """
    etag = str(head.get("ETag", "")).strip('"')
    multipart = _PARTS_SUFFIX.search(etag)
    parts = int(multipart.group(1)) if multipart else None
    checksum_type = head.get("ChecksumType")
    passed_over: list[str] = []
    candidates = list(_S3_CHECKSUM_FIELDS)
    if preferred:
        candidates.sort(key=lambda pair: pair[0] != preferred)
    for algorithm, field_name in candidates:
        value = head.get(field_name)
        if not value:
            continue
        why = _distrust(algorithm, str(value), checksum_type, parts)
        if why is None:
            try:
                _new(algorithm)
            except ImportError:
                why = "is not checked: awscrt is not installed (pip install 'boto3[crt]')"
                log.info("S3 offers %s but awscrt is not installed to check it", field_name)
            else:
                return SourceIntegrity(
                    SourceCheck(f"S3 {field_name}", algorithm, base64.b64decode(value)), tuple(passed_over)
                )
        passed_over.append(f"S3 {field_name} {why}")
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or head.get(
        "SSECustomerAlgorithm"
    )
    if etag and parts is None and not encrypted and len(etag) == 32:
        return SourceIntegrity(SourceCheck("S3 ETag (MD5)", "md5", bytes.fromhex(etag)), tuple(passed_over))
    if parts is not None:
        passed_over.append(f"S3 ETag of a multipart object ({parts} parts) is not an MD5 of the bytes")
    elif etag and encrypted:
        passed_over.append("S3 ETag of an SSE-KMS or SSE-C object is not an MD5 of the bytes")
    elif etag:
        passed_over.append("S3 ETag is not an MD5 of the bytes")
    return SourceIntegrity(None, tuple(passed_over))


def choose_source_check(head: Mapping[str, Any], preferred: str | None = None) -> SourceCheck | None:
    """Return the cheapest whole-object integrity check S3 offers for an object, or None.

    See :func:`weigh_source_integrity`, which also says why the other offers are not used.
    """
    return weigh_source_integrity(head, preferred).check
