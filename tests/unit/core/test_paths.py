"""Remote paths derived from S3 keys stay inside their directory."""

from __future__ import annotations

import pytest

from airflow_s3sftp.core.paths import (
    backup_path_for,
    parse_s3_location,
    remote_path_for,
    temp_path_for,
)


@pytest.mark.parametrize(
    ("bucket", "key", "expected"),
    [
        ("b", "k/x.csv", ("b", "k/x.csv")),
        (None, "s3://b/k/x.csv", ("b", "k/x.csv")),
        (None, " s3://b/k ", ("b", "k")),
    ],
)
def test_parse_s3_location(bucket, key, expected):
    assert parse_s3_location(bucket, key) == expected


@pytest.mark.parametrize(
    ("bucket", "key", "message"),
    [
        (None, "s3://", "must name both"),
        (None, "s3://b", "must name both"),
        ("b", "", "Empty S3 key for bucket 'b'"),
        (None, "k", "No S3 bucket"),
        ("a", "s3://b/k", "s3_bucket must be None"),
    ],
)
def test_parse_s3_location_rejects(bucket, key, message):
    with pytest.raises(ValueError, match=message):
        parse_s3_location(bucket, key)


@pytest.mark.parametrize(
    ("sftp_path", "key", "expected"),
    [
        ("/in/", "a/b/c.csv", "/in/c.csv"),
        ("/in/x.csv", "a/b/c.csv", "/in/x.csv"),
        ("/in/", "c.csv", "/in/c.csv"),
        ("rel/", "dir/naïve файл.bin", "rel/naïve файл.bin"),
    ],
)
def test_remote_path_for(sftp_path, key, expected):
    assert remote_path_for(sftp_path, key) == expected


@pytest.mark.parametrize(
    "key",
    ["a/..", "..", "a/.", "/", "dir/", "a\\..\\..\\etc\\passwd", "a/b\x00c", "/abs/../.."],
    ids=["dotdot", "bare-dotdot", "dot", "root", "trailing-slash", "backslash", "nul", "abs-dotdot"],
)
def test_unsafe_key_names_are_refused(key):
    with pytest.raises(ValueError, match="safe remote file name"):
        remote_path_for("/in/", key)


def test_absolute_key_keeps_only_its_base_name():
    assert remote_path_for("/in/", "/etc/passwd") == "/in/passwd"


@pytest.mark.parametrize("sftp_path", ["", "/in/x\x00", "/in/..", "/in/."])
def test_bad_sftp_path(sftp_path):
    with pytest.raises(ValueError):  # noqa: PT011 - message differs per case, each names the path
        remote_path_for(sftp_path, "k")


def test_temp_and_backup_names_are_hidden_siblings():
    assert temp_path_for("/in/x.csv") == "/in/.x.csv.s3sftp-part"
    assert backup_path_for("/in/x.csv") == "/in/.x.csv.s3sftp-old"
    assert temp_path_for("x.csv") == ".x.csv.s3sftp-part"
