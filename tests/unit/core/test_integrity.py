"""Choosing and checking S3's own integrity data."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from airflow_s3sftp.core.integrity import choose_source_check, weigh_source_integrity

DATA = b"hello world" * 1000
MD5 = hashlib.md5(DATA).hexdigest()
CRC32 = base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode()
SHA256 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
SHA1 = base64.b64encode(hashlib.sha1(DATA).digest()).decode()
MULTIPART_ETAG = '"0123456789abcdef0123456789abcdef-3"'


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


# Which checksum counts as a proof of the whole object: (ETag, ChecksumType, field, value) -> chosen?
# Single-part: any checksum S3 sends (it covers the object). Multipart (ETag "-N"): only a CRC that S3
# marks FULL_OBJECT; never SHA-1/SHA-256; never a composite (COMPOSITE, or a "-N" suffix on the value).
@pytest.mark.parametrize(
    ("etag", "checksum_type", "field", "value", "chosen"),
    [
        (f'"{MD5}"', None, "ChecksumSHA256", SHA256, "sha256"),
        (f'"{MD5}"', "FULL_OBJECT", "ChecksumSHA256", SHA256, "sha256"),
        (f'"{MD5}"', None, "ChecksumCRC32", CRC32, "crc32"),
        (f'"{MD5}"', "COMPOSITE", "ChecksumCRC32", CRC32, "md5"),  # falls back to the MD5 ETag
        (f'"{MD5}"', None, "ChecksumSHA1", f"{SHA1}-2", "md5"),
        # moto's HEAD of a multipart upload: the composite value, no suffix, no ChecksumType
        (MULTIPART_ETAG, None, "ChecksumSHA256", SHA256, None),
        (MULTIPART_ETAG, None, "ChecksumSHA1", SHA1, None),
        (MULTIPART_ETAG, None, "ChecksumCRC32", CRC32, None),
        # ... and real S3's (or moto's GET): COMPOSITE and the suffix
        (MULTIPART_ETAG, "COMPOSITE", "ChecksumSHA256", f"{SHA256}-3", None),
        (MULTIPART_ETAG, "COMPOSITE", "ChecksumCRC32", f"{CRC32}-3", None),
        # a SHA is never a whole-object checksum of a multipart object, whatever a store claims
        (MULTIPART_ETAG, "FULL_OBJECT", "ChecksumSHA256", SHA256, None),
        (MULTIPART_ETAG, "FULL_OBJECT", "ChecksumSHA1", SHA1, None),
        (MULTIPART_ETAG, "FULL_OBJECT", "ChecksumCRC32", CRC32, "crc32"),
        (MULTIPART_ETAG, "FULL_OBJECT", "ChecksumCRC32", f"{CRC32}-3", None),
    ],
)
def test_only_whole_object_checksums_are_chosen(etag, checksum_type, field, value, chosen):
    head = {"ETag": etag, field: value} | ({"ChecksumType": checksum_type} if checksum_type else {})
    weighed = weigh_source_integrity(head)
    assert (weighed.check.algorithm if weighed.check else None) == chosen
    if chosen is None:
        reason = weighed.unchecked_reason
        assert f"S3 {field} " in reason and "S3 ETag of a multipart object (3 parts)" in reason
    else:
        assert weighed.unchecked_reason is None


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_preferring_a_sha_does_not_make_a_multipart_sha_count(algorithm):
    head = {"ETag": MULTIPART_ETAG, "ChecksumSHA256": SHA256, "ChecksumSHA1": SHA1}
    weighed = weigh_source_integrity(head, preferred=algorithm)
    assert weighed.check is None
    assert sorted(weighed.unchecked_reason.split("; ")) == [
        "S3 ChecksumSHA1 of a multipart object (3 parts) covers its parts, not the whole object",
        "S3 ChecksumSHA256 of a multipart object (3 parts) covers its parts, not the whole object",
        "S3 ETag of a multipart object (3 parts) is not an MD5 of the bytes",
    ]


@pytest.mark.parametrize("field", ["ChecksumCRC32C", "ChecksumCRC64NVME"])
def test_full_object_crt_checksum_of_a_multipart_object_counts(field):
    """FULL_OBJECT CRC32C/CRC64NVME of a multipart object are whole-object proofs: chosen with awscrt,
    and without it the record says they were not checked and why."""
    head = {
        "ETag": MULTIPART_ETAG,
        "ChecksumType": "FULL_OBJECT",
        field: base64.b64encode(b"\1" * 8).decode(),
    }
    weighed = weigh_source_integrity(head)
    try:
        import awscrt  # noqa: F401
    except ImportError:
        assert weighed.check is None
        assert weighed.unchecked_reason.startswith(f"S3 {field} is not checked: awscrt is not installed")
    else:
        assert weighed.check is not None and weighed.check.name == f"S3 {field}"
        assert problem_with(weighed.check) is not None  # the value above is not the data's CRC


def test_a_full_object_crc_of_a_multipart_object_catches_wrong_bytes():
    head = {"ETag": MULTIPART_ETAG, "ChecksumType": "FULL_OBJECT", "ChecksumCRC32": CRC32}
    found = choose_source_check(head)
    assert found is not None and found.name == "S3 ChecksumCRC32"
    assert problem_with(found) is None
    assert problem_with(found, DATA[:-1] + b"?") == (
        f"S3 ChecksumCRC32 says {zlib.crc32(DATA).to_bytes(4, 'big').hex()}, "
        f"the bytes read give {zlib.crc32(DATA[:-1] + b'?').to_bytes(4, 'big').hex()}"
    )


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ({}, "S3 keeps no checksum for the object"),
        (
            {"ETag": f'"{MD5}"', "ServerSideEncryption": "aws:kms"},
            "S3 ETag of an SSE-KMS or SSE-C object is not an MD5 of the bytes",
        ),
        ({"ETag": '"not-an-md5"'}, "S3 ETag is not an MD5 of the bytes"),
    ],
)
def test_unchecked_reason_names_what_s3_offered(head, reason):
    assert weigh_source_integrity(head).unchecked_reason == reason
