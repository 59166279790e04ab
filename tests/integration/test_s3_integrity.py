"""S3's integrity data on real endpoints: only whole-object checksums count, and wrong ones are caught.

moto's HEAD of a multipart upload returns the composite checksum without its ``-<parts>`` suffix and
without ``ChecksumType`` (real S3 sends both): only the multipart ETag tells it is not a checksum of
the bytes. These are the issue's reproduction (a 40 MiB ``upload_fileobj`` in 16 MiB parts).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zlib

import pytest
from boto3.s3.transfer import TransferConfig

from airflow_s3sftp.exceptions import VerificationError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
from testservers.embedded_s3 import EmbeddedS3Server

MiB = 1024 * 1024
MULTIPART = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=16 * MiB)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_full_object_crc32(client, bucket: str, key: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """Upload ``data`` in 16 MiB parts with a FULL_OBJECT CRC32 (what S3 keeps for the whole object)."""
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT"
    )
    parts = []
    for number, start in enumerate(range(0, len(data), 16 * MiB), start=1):
        part = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + 16 * MiB],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )


@pytest.mark.parametrize("algorithm", ["SHA256", "SHA1", "CRC32"])
@pytest.mark.parametrize("batch", [False, True], ids=["head", "get"])
def test_multipart_upload_with_part_checksums_is_delivered_and_says_nothing_was_checked(
    s3, bucket, remote_dir, algorithm, batch
):
    """The issue's reproduction: every attempt used to fail with "S3 Checksum<X> says ..., the bytes give ..."."""
    data = os.urandom(40 * MiB)
    s3.upload_fileobj(
        io.BytesIO(data), bucket, "mp", ExtraArgs={"ChecksumAlgorithm": algorithm}, Config=MULTIPART
    )
    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"') and "ChecksumType" not in head  # moto's HEAD, as in the issue
    target = remote_dir / "mp.bin"
    hook = S3ToSFTPHook()
    if batch:  # many objects: the GET's headers stand in for a HEAD (moto's GET says COMPOSITE)
        (record,) = hook.stream_objects([(bucket, "mp", str(target))], max_concurrency=1)
    else:
        record = hook.stream_object(bucket, "mp", str(target))
    assert sha256(target.read_bytes()) == sha256(data)
    assert record["attempts"] == 1 and record["checksum"] == f"sha256:{sha256(data)}"
    assert record["source_check"] is None
    reason = record["source_check_skipped"]
    assert f"S3 Checksum{algorithm} " in reason and "S3 ETag of a multipart object (3 parts)" in reason
    assert sorted(p.name for p in remote_dir.iterdir()) == ["mp.bin"]


def test_full_object_crc32_of_a_multipart_object_is_checked(s3, bucket, remote_dir):
    data = os.urandom(40 * MiB)
    upload_full_object_crc32(s3, bucket, "full", data)
    head = s3.head_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "FULL_OBJECT" and head["ETag"].endswith('-3"')
    assert base64.b64decode(head["ChecksumCRC32"]) == zlib.crc32(data).to_bytes(4, "big")
    record = S3ToSFTPHook().stream_object(bucket, "full", str(remote_dir / "full"))
    assert (remote_dir / "full").read_bytes() == data
    assert record["source_check"] == "S3 ChecksumCRC32" and record["source_check_skipped"] is None


def test_full_object_crc64nvme_of_a_multipart_object_is_checked_when_awscrt_can(s3, bucket, remote_dir):
    """S3's default for new objects: a FULL_OBJECT CRC64NVME. Checked with awscrt; otherwise said so.

    Without awscrt, moto itself stores a CRC32 under the CRC64NVME name (its fallback): a value that
    would fail the check, so this test also shows that, without awscrt, nothing pretends to check it.
    """
    data = os.urandom(12 * MiB)
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key="nv", ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
    )
    parts = []
    for number, start in enumerate(range(0, len(data), 8 * MiB), start=1):
        part = s3.upload_part(
            Bucket=bucket,
            Key="nv",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + 8 * MiB],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key="nv", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    head = s3.head_object(Bucket=bucket, Key="nv", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "FULL_OBJECT" and head["ChecksumCRC64NVME"]
    record = S3ToSFTPHook().stream_object(bucket, "nv", str(remote_dir / "nv"))
    assert (remote_dir / "nv").read_bytes() == data
    try:
        import awscrt  # noqa: F401
    except ImportError:
        assert record["source_check"] is None
        assert record["source_check_skipped"].startswith("S3 ChecksumCRC64NVME is not checked: awscrt is not")
    else:
        assert record["source_check"] == "S3 ChecksumCRC64NVME" and record["source_check_skipped"] is None


def test_a_wrong_full_object_crc32_of_a_multipart_object_fails_and_publishes_nothing(
    set_connection, remote_dir
):
    """S3 (here: moto in this process, its stored checksum altered) vouches for other bytes: caught."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    data = os.urandom(20 * MiB)
    with EmbeddedS3Server() as server:
        server.start()
        client = server.client()
        client.create_bucket(Bucket="tampered")
        upload_full_object_crc32(client, "tampered", "k", data)
        wrong = zlib.crc32(data + b"!").to_bytes(4, "big")
        stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets["tampered"].keys["k"]
        stored.checksum_value = base64.b64encode(wrong).decode()
        aws = set_connection("aws_tampered", server.connection())
        with pytest.raises(VerificationError) as caught:
            S3ToSFTPHook(aws_conn_id=aws).stream_object("tampered", "k", str(remote_dir / "k"))
    message = str(caught.value)
    assert f"S3 ChecksumCRC32 says {wrong.hex()}" in message
    assert f"the bytes read give {zlib.crc32(data).to_bytes(4, 'big').hex()}" in message
    assert list(remote_dir.iterdir()) == []
