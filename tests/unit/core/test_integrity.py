"""Choosing and checking S3's own integrity data."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from airflow_s3sftp.core.integrity import choose_source_check

DATA = b"hello world" * 1000
MD5 = hashlib.md5(DATA).hexdigest()
CRC32 = base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode()
SHA256 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()


def check(head, preferred=None):
    return choose_source_check(head, preferred)


def problem_with(found, data=DATA):
    hasher = found.new_hasher()
    hasher.update(data)
    return found.problem(hasher.digest())


def test_crc32_full_object_is_preferred_over_etag():
    found = check({"ETag": f'"{MD5}"', "ChecksumCRC32": CRC32})
    assert found is not None and found.algorithm == "crc32"
    assert problem_with(found) is None


def test_preferred_algorithm_wins():
    found = check({"ChecksumCRC32": CRC32, "ChecksumSHA256": SHA256}, preferred="sha256")
    assert found is not None and found.algorithm == "sha256"
    assert problem_with(found) is None


def test_single_part_etag_is_md5():
    found = check({"ETag": f'"{MD5}"'})
    assert found is not None and found.name == "S3 ETag (MD5)"
    assert problem_with(found) is None


def test_mismatch_is_reported():
    found = choose_source_check({"ETag": f'"{MD5}"'})
    assert found is not None
    problem = problem_with(found, DATA + b"!")
    assert problem is not None and MD5 in problem


@pytest.mark.parametrize(
    "head",
    [
        {"ETag": '"0123456789abcdef0123456789abcdef-3"'},
        {"ETag": f'"{MD5}"', "ServerSideEncryption": "aws:kms"},
        {"ETag": f'"{MD5}"', "SSECustomerAlgorithm": "AES256"},
        {"ChecksumSHA256": f"{SHA256}-2"},
        {"ChecksumCRC32": CRC32, "ChecksumType": "COMPOSITE"},
        {},
    ],
    ids=["multipart-etag", "sse-kms", "sse-c", "composite-suffix", "composite-type", "nothing"],
)
def test_no_usable_integrity_data(head):
    assert choose_source_check(head) is None


def test_every_hasher_starts_fresh():
    """A retry must never inherit the bytes of an earlier attempt (the check holds no hasher)."""
    found = check({"ChecksumCRC32": CRC32})
    first = found.new_hasher()
    first.update(DATA[:10])  # an attempt that broke after 10 bytes
    assert problem_with(found) is None
