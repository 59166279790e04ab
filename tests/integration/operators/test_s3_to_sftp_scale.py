"""Large prefixes on real servers: a bounded XCom, the JSON Lines report, shards that cover a prefix once."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from airflow_s3sftp.exceptions import DeliveryFailedError, MissingTargetError, ReportError
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sharding import S3PrefixShardsOperator, hash_shards, prefix_shards
from tests.integration.reports import read_report

COUNT = 300


def run(**kwargs: object) -> dict[str, object]:
    kwargs.setdefault("create_dirs", True)
    kwargs.setdefault("max_concurrency", 4)
    return S3ToSFTPStreamOperator(task_id="deliver", **kwargs).execute(context={})  # type: ignore[arg-type]


@pytest.fixture
def many(s3, bucket):  # type: ignore[no-untyped-def]
    """COUNT small objects under ``big/``, a few of them a level down."""
    objects = {}
    for i in range(COUNT):
        key = f"big/{'sub/' if i % 50 == 0 else ''}{i:04d}.bin"
        objects[key] = os.urandom(64 + i)
        s3.put_object(Bucket=bucket, Key=key, Body=objects[key])
    return objects


def landed(remote_dir) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {
        str(path.relative_to(remote_dir)): path.read_bytes()
        for path in remote_dir.rglob("*")
        if path.is_file()
    }


def test_a_prefix_of_hundreds_of_objects_keeps_a_small_xcom_and_reports_every_object(
    s3, bucket, remote_dir, many
):
    summary = run(
        s3_bucket=bucket, s3_prefix="big/", sftp_path=f"{remote_dir}/", report=f"s3://{bucket}/rep/all.jsonl"
    )
    assert (summary["count"], summary["transferred"], summary["failed_count"]) == (COUNT, COUNT, 0)
    assert summary["report"] == f"s3://{bucket}/rep/all.jsonl"
    assert len(json.dumps(summary)) < 1024, "the XCom does not grow with the object count"
    assert landed(remote_dir) == {key[len("big/") :]: body for key, body in many.items()}
    records = read_report(s3, bucket, "rep/all.jsonl")
    assert len(records) == COUNT
    assert {r["s3_uri"]: r["checksum"] for r in records} == {
        f"s3://{bucket}/{key}": "sha256:" + hashlib.sha256(body).hexdigest() for key, body in many.items()
    }


def test_a_failed_task_still_leaves_its_report(s3, bucket, remote_dir, many):
    with pytest.raises(DeliveryFailedError, match=rf"{COUNT // 50} of {COUNT} objects failed") as err:
        run(
            s3_bucket=bucket,
            s3_prefix="big/",
            sftp_path=f"{remote_dir}/",
            create_dirs=False,  # big/sub/ has no directory on the server
            report=f"s3://{bucket}/rep/failed.jsonl",
        )
    assert err.value.summary["failed_count"] == COUNT // 50
    records = read_report(s3, bucket, "rep/failed.jsonl")
    assert len(records) == COUNT
    assert sorted(r["s3_uri"] for r in records if "error" in r) == sorted(
        f"s3://{bucket}/{key}" for key in many if "/sub/" in key
    )


def test_a_task_wide_failure_still_leaves_its_report(s3, bucket, remote_dir, many):
    with pytest.raises(MissingTargetError):
        run(
            s3_bucket=bucket,
            s3_prefix="big/",
            sftp_path=f"{remote_dir}/missing/",
            create_dirs=False,
            report=f"s3://{bucket}/rep/stopped.jsonl",
        )
    records = read_report(s3, bucket, "rep/stopped.jsonl")
    assert records, "the failures up to the stop are in the report"
    assert all("error" in r for r in records)
    assert landed(remote_dir) == {}


def test_a_report_that_cannot_be_written_fails_before_any_delivery(bucket, remote_dir, many):
    with pytest.raises(ReportError, match=r"Could not write the report s3://no-such-bucket-4711/r\.jsonl"):
        run(
            s3_bucket=bucket,
            s3_prefix="big/",
            sftp_path=f"{remote_dir}/",
            report="s3://no-such-bucket-4711/r.jsonl",
        )
    assert landed(remote_dir) == {}


@pytest.mark.parametrize(
    ("report", "match"),
    [
        ("big/r.jsonl", "report must be an 's3://bucket/key' URL"),
        ("s3://{bucket}/", "report must name an object"),
        ("s3://{bucket}/big/reports/r.jsonl", "lies under s3_prefix"),
    ],
)
def test_bad_reports_are_refused_naming_report(bucket, remote_dir, many, report, match):
    with pytest.raises(ValueError, match=match):
        run(
            s3_bucket=bucket,
            s3_prefix="big/",
            sftp_path=f"{remote_dir}/",
            report=report.format(bucket=bucket),
        )
    assert landed(remote_dir) == {}


@pytest.mark.parametrize("method", ["range", "hash"])
def test_shards_together_deliver_a_prefix_exactly_once(s3, bucket, remote_dir, many, method):
    shards = S3PrefixShardsOperator(
        task_id="shards", s3_bucket=bucket, s3_prefix="big", count=4, method=method, sample=40
    ).execute(context={})  # type: ignore[arg-type]
    assert len(shards) == 4
    assert len(json.dumps(shards)) < 1024
    reported: list[str] = []
    for number, shard in enumerate(shards):
        summary = run(
            s3_bucket=bucket,
            s3_prefix="big/",
            sftp_path=f"{remote_dir}/",
            shard=shard,
            if_exists="fail",  # a second delivery of one file would fail
            report=f"s3://{bucket}/rep/{method}-{number}.jsonl",
        )
        assert summary["shard"] == shard
        assert summary["failed_count"] == 0
        if method == "range":
            assert COUNT / 4 - 40 <= summary["count"] <= COUNT / 4 + 40, summary["count"]
        reported += [r["s3_uri"] for r in read_report(s3, bucket, f"rep/{method}-{number}.jsonl")]
    assert sorted(reported) == sorted(f"s3://{bucket}/{key}" for key in many), "each object once"
    assert landed(remote_dir) == {key[len("big/") :]: body for key, body in many.items()}


def test_a_rerun_of_a_shard_skips_what_is_identical(s3, bucket, remote_dir, many):
    shard = hash_shards(3)[1]
    first = run(
        s3_bucket=bucket,
        s3_prefix="big/",
        sftp_path=f"{remote_dir}/",
        shard=shard,
        if_exists="skip_identical",
    )
    again = run(
        s3_bucket=bucket,
        s3_prefix="big/",
        sftp_path=f"{remote_dir}/",
        shard=shard,
        if_exists="skip_identical",
    )
    assert first["transferred"] == again["skipped"] == again["count"] > 0
    assert again["transferred"] == 0


def test_prefix_shards_balance_by_count_and_cover_keys_written_later(s3, bucket, many):
    shards = prefix_shards(s3_prefix=f"s3://{bucket}/big", count=3)
    assert [s["label"] for s in shards] == ["range 1 of 3", "range 2 of 3", "range 3 of 3"]
    assert shards[0]["start_after"] is None and shards[-1]["end_at"] is None
    assert shards[0]["end_at"] == shards[1]["start_after"] and shards[1]["end_at"] == shards[2]["start_after"]


def test_a_shard_without_a_prefix_is_refused(bucket, remote_dir):
    with pytest.raises(ValueError, match="shard cuts the keys under s3_prefix"):
        run(s3_bucket=bucket, s3_keys=["a"], sftp_path=f"{remote_dir}/", shard={"index": 0, "count": 2})


def test_a_bad_shard_is_refused_naming_shard(bucket, remote_dir, many):
    with pytest.raises(ValueError, match=r"shard\['index'\] must be in 0\.\.1"):
        run(s3_bucket=bucket, s3_prefix="big/", sftp_path=f"{remote_dir}/", shard={"index": 2, "count": 2})
    assert landed(remote_dir) == {}


def test_a_report_of_several_parts_is_streamed_from_its_spool_to_real_s3(s3, bucket):
    """Parts go up from the local spool file (a streamed body), numbered in order, and complete whole."""
    from airflow_s3sftp.core.report import MIN_PART_SIZE, open_report

    report = open_report(f"s3://{bucket}/rep/parts.jsonl", s3, files_bucket=None, files_prefix=None)
    padding = "p" * 3000
    count = 4000  # about 12 MB: two full parts and a small last one
    for i in range(count):
        report.write({"s3_uri": f"s3://{bucket}/k{i}", "padding": padding})
        if i == count // 2:  # the uploader thread has started a multipart upload and sends part 1
            deadline = time.monotonic() + 30
            while not (uploads := s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])):
                assert time.monotonic() < deadline, "no part went up while the task went on"
                time.sleep(0.05)
            assert [u["Key"] for u in uploads] == ["rep/parts.jsonl"]
    report.close()
    head = s3.head_object(Bucket=bucket, Key="rep/parts.jsonl", PartNumber=1)
    assert head["PartsCount"] == 3 and head["ContentLength"] >= MIN_PART_SIZE
    records = read_report(s3, bucket, "rep/parts.jsonl")
    assert [r["s3_uri"] for r in records] == [f"s3://{bucket}/k{i}" for i in range(count)]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
