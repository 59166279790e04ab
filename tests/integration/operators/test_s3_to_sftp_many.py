"""Many objects per task, idempotent re-runs, sidecars, done markers and OpenLineage, on real servers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from airflow_s3sftp.exceptions import DeliveryFailedError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.integration.reports import read_report

MiB = 1024 * 1024


def run(**kwargs: object) -> dict[str, object]:
    kwargs.setdefault("create_dirs", True)  # these deliveries recreate the key tree below the prefix
    return S3ToSFTPStreamOperator(task_id="deliver", **kwargs).execute(context={})  # type: ignore[arg-type]


def test_subdirectories_are_not_created_by_default(s3, bucket, remote_dir, tree):
    with pytest.raises(DeliveryFailedError, match=r"set create_dirs=True") as info:
        run(
            s3_bucket=bucket,
            s3_prefix="exports/2026/",
            sftp_path=f"{remote_dir}/",
            create_dirs=False,
            report=f"s3://{bucket}/reports/run.jsonl",
        )
    summary = info.value.summary
    assert (summary["count"], summary["transferred"], summary["failed_count"]) == (4, 2, 2)
    assert sorted(record["sftp_path"] for record in summary["failed"]) == [
        f"{remote_dir}/sub/b.csv",
        f"{remote_dir}/sub/c.json",
    ]
    delivered = sorted(
        r["sftp_path"] for r in read_report(s3, bucket, "reports/run.jsonl") if "error" not in r
    )
    assert delivered == [f"{remote_dir}/a.csv", f"{remote_dir}/d.csv"]
    assert not (remote_dir / "sub").exists()


@pytest.fixture
def tree(s3, bucket):  # type: ignore[no-untyped-def]
    objects = {
        "exports/2026/a.csv": os.urandom(1000),
        "exports/2026/sub/b.csv": os.urandom(MiB + 3),
        "exports/2026/sub/c.json": os.urandom(77),
        "exports/2026/d.csv": b"",
        "exports/other/e.csv": b"not under the prefix",
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="exports/2026/emptydir/", Body=b"")  # a console "folder" marker
    return objects


def test_prefix_keeps_relative_paths(s3, bucket, remote_dir, tree):
    summary = run(
        s3_bucket=bucket,
        s3_prefix="exports/2026/",
        sftp_path=f"{remote_dir}/",
        max_concurrency=3,
        report=f"s3://{bucket}/reports/run.jsonl",
    )
    assert summary["report"] == f"s3://{bucket}/reports/run.jsonl"
    assert summary["count"] == 4
    assert summary["transferred"] == 4
    assert summary["failed"] == []
    for key in ("a.csv", "sub/b.csv", "sub/c.json", "d.csv"):
        assert (remote_dir / key).read_bytes() == tree[f"exports/2026/{key}"]
    assert not (remote_dir / "emptydir").exists()
    assert summary["bytes"] == sum(
        len(tree[f"exports/2026/{k}"]) for k in ("a.csv", "sub/b.csv", "sub/c.json", "d.csv")
    )
    by_path = {o["sftp_path"]: o for o in read_report(s3, bucket, "reports/run.jsonl")}
    assert len(by_path) == 4
    assert (
        by_path[f"{remote_dir}/sub/b.csv"]["checksum"]
        == "sha256:" + hashlib.sha256(tree["exports/2026/sub/b.csv"]).hexdigest()
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"s3_glob": "*.csv"}, {"a.csv", "d.csv"}),
        ({"s3_glob": "**/*.csv"}, {"a.csv", "d.csv", "sub/b.csv"}),
        ({"s3_glob": "sub/*.csv"}, {"sub/b.csv"}),
        ({"s3_glob": "**.csv"}, {"a.csv", "d.csv", "sub/b.csv"}),
        ({"s3_glob": "sub/?.*"}, {"sub/b.csv", "sub/c.json"}),
        ({"s3_regex": r"\.json$"}, {"sub/c.json"}),
    ],
)
def test_glob_and_regex_filters(bucket, remote_dir, tree, filters, expected):
    summary = run(s3_prefix=f"s3://{bucket}/exports/2026/", sftp_path=f"{remote_dir}/", **filters)
    landed = {str(p.relative_to(remote_dir)) for p in remote_dir.rglob("*") if p.is_file()}
    assert landed == expected
    assert summary["count"] == len(expected)


def test_explicit_key_list(bucket, remote_dir, tree):
    summary = run(
        s3_bucket=bucket, s3_keys=["exports/2026/a.csv", "exports/other/e.csv"], sftp_path=f"{remote_dir}/"
    )
    assert summary["count"] == 2
    assert (remote_dir / "e.csv").read_bytes() == b"not under the prefix"


def test_keys_landing_on_the_same_name_are_refused(bucket, remote_dir, tree):
    with pytest.raises(
        ValueError, match=r"'s3://.*/exports/2026/a\.csv' and 's3://.*/elsewhere/a\.csv' clash"
    ):
        run(s3_bucket=bucket, s3_keys=["exports/2026/a.csv", "elsewhere/a.csv"], sftp_path=f"{remote_dir}/")
    assert list(remote_dir.iterdir()) == []


def test_one_failure_does_not_half_do_the_others(bucket, remote_dir, tree):
    for directory in (remote_dir / "sub", remote_dir / "sub" / "b.csv"):  # b.csv is a directory: it must fail
        directory.mkdir()
        shutil.chown(directory, remote_dir.owner(), remote_dir.group())
    with pytest.raises(DeliveryFailedError, match=r"1 of 4 objects failed") as info:
        run(s3_bucket=bucket, s3_prefix="exports/2026/", sftp_path=f"{remote_dir}/")
    assert "sub/b.csv: IsADirectoryError" in str(info.value)
    assert info.value.summary["transferred"] == 3
    for key in ("a.csv", "sub/c.json", "d.csv"):
        assert (remote_dir / key).read_bytes() == tree[f"exports/2026/{key}"]
    assert not [p for p in remote_dir.rglob(".*")]


def test_nothing_matches(bucket, remote_dir, tree):
    with pytest.raises(
        FileNotFoundError, match=r"No S3 objects under s3://.*/exports/2026/ match glob '\*.xml'"
    ):
        run(s3_bucket=bucket, s3_prefix="exports/2026/", s3_glob="*.xml", sftp_path=f"{remote_dir}/")
    assert (
        run(
            s3_bucket=bucket,
            s3_prefix="exports/2026/",
            s3_glob="*.xml",
            sftp_path=f"{remote_dir}/",
            allow_empty=True,
        )["count"]
        == 0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"s3_key": "k", "s3_prefix": "p/"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"s3_key": "k", "s3_glob": "*.csv"}, "set s3_prefix"),
        ({"s3_prefix": "p/", "sftp_path": "/no/slash"}, "must be a directory ending in '/'"),
    ],
)
def test_invalid_many_object_arguments(bucket, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(**{"s3_bucket": bucket, "sftp_path": "/in/", **kwargs})


def test_rerun_with_skip_identical_transfers_nothing(s3, bucket, remote_dir, tree):
    first = run(
        s3_bucket=bucket, s3_prefix="exports/2026/", sftp_path=f"{remote_dir}/", if_exists="skip_identical"
    )
    assert first["transferred"] == 4
    before = {p: p.stat().st_mtime_ns for p in remote_dir.rglob("*") if p.is_file()}
    second = run(
        s3_bucket=bucket,
        s3_prefix="exports/2026/",
        sftp_path=f"{remote_dir}/",
        if_exists="skip_identical",
        report=f"s3://{bucket}/reports/second.jsonl",
    )
    assert second["transferred"] == 0
    assert second["skipped"] == 4
    records = read_report(s3, bucket, "reports/second.jsonl")
    assert len(records) == 4 and all(o["skipped"] for o in records)
    assert {p: p.stat().st_mtime_ns for p in remote_dir.rglob("*") if p.is_file()} == before


def test_skip_identical_still_replaces_a_different_file(s3, bucket, remote_dir):
    data = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    (remote_dir / "k").write_bytes(os.urandom(5000))  # same size, other bytes
    result = run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", if_exists="skip_identical")
    assert result["skipped"] is False
    assert (remote_dir / "k").read_bytes() == data


def test_skip_identical_by_sidecar_and_s3_sha256_without_reading(s3, bucket, remote_dir):
    data = os.urandom(3000)
    digest = hashlib.sha256(data).digest()
    s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="SHA256")  # S3 keeps the SHA-256
    run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", sidecar=True)
    # Make the remote file unreadable: a skip that still succeeds proves no read-back happened.
    (remote_dir / "k").chmod(0o000)
    result = run(
        s3_bucket=bucket,
        s3_key="k",
        sftp_path=f"{remote_dir}/",
        if_exists="skip_identical",
        skip_identical_by="sidecar",
    )
    (remote_dir / "k").chmod(0o644)
    assert result["skipped"] is True
    assert result["checksum"] == f"sha256:{digest.hex()}"


def test_skip_identical_without_s3_integrity_data_hashes_both_sides(bucket, remote_dir):
    # A multipart object: its ETag is not an MD5 of the bytes and moto stores no full checksum.
    data = os.urandom(6 * MiB)
    client = S3ToSFTPHook().s3_client
    upload = client.create_multipart_upload(Bucket=bucket, Key="mp")
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        part = client.upload_part(
            Bucket=bucket,
            Key="mp",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + 5 * MiB],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    first = run(s3_bucket=bucket, s3_key="mp", sftp_path=f"{remote_dir}/")
    assert first["source_check"] is None
    second = run(s3_bucket=bucket, s3_key="mp", sftp_path=f"{remote_dir}/", if_exists="skip_identical")
    assert second["skipped"] is True
    assert second["checksum"] == first["checksum"]


def test_sidecar_is_sha256sum_compatible_and_done_marker_comes_last(s3, bucket, remote_dir):
    data = os.urandom(4321)
    s3.put_object(Bucket=bucket, Key="report.csv", Body=data)
    result = run(
        s3_bucket=bucket, s3_key="report.csv", sftp_path=f"{remote_dir}/", sidecar=True, done_marker=".done"
    )
    assert (
        remote_dir / "report.csv.sha256"
    ).read_text() == f"{hashlib.sha256(data).hexdigest()}  report.csv\n"
    assert (remote_dir / "report.csv.done").read_bytes() == b""
    assert result["sidecar_path"] == f"{remote_dir}/report.csv.sha256"
    assert result["done_marker_path"] == f"{remote_dir}/report.csv.done"
    check = subprocess.run(
        [shutil.which("sha256sum") or "sha256sum", "-c", "report.csv.sha256"],
        cwd=remote_dir,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (remote_dir / "report.csv.done").stat().st_mtime_ns >= (
        remote_dir / "report.csv.sha256"
    ).stat().st_mtime_ns
    assert sorted(p.name for p in remote_dir.iterdir()) == [
        "report.csv",
        "report.csv.done",
        "report.csv.sha256",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sidecar": True, "checksum": None}, "sidecar=True needs"),
        ({"done_marker": "done"}, "starting with '.'"),
    ],
)
def test_sidecar_and_marker_validation(s3, bucket, remote_dir, kwargs, message):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ValueError, match=message):
        run(s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/", **kwargs)


def test_openlineage_facets(sshd, bucket, remote_dir, tree):
    op = S3ToSFTPStreamOperator(
        task_id="deliver", s3_bucket=bucket, s3_prefix="exports/2026/sub/", sftp_path=f"{remote_dir}/"
    )
    op.execute(context={})  # type: ignore[arg-type]
    lineage = op.get_openlineage_facets_on_complete(None)
    assert sorted((d.namespace, d.name) for d in lineage.inputs) == [
        (f"s3://{bucket}", "exports/2026/sub/b.csv"),
        (f"s3://{bucket}", "exports/2026/sub/c.json"),
    ]
    assert sorted((d.namespace, d.name) for d in lineage.outputs) == [
        (f"sftp://127.0.0.1:{sshd.port}", f"{remote_dir}/b.csv"),
        (f"sftp://127.0.0.1:{sshd.port}", f"{remote_dir}/c.json"),
    ]
