"""Checksum notation and provider registration."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from airflow_s3sftp import __version__
from airflow_s3sftp.core.checksums import format_checksum, new_hasher, parse_checksum


def test_round_trip():
    digest = new_hasher("sha256")
    digest.update(b"abc")
    text = format_checksum("SHA256", digest.hexdigest())
    assert text.startswith("sha256:")
    assert parse_checksum(text) == ("sha256", digest.hexdigest())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "not in the form"),
        ("sha256:", "not in the form"),
        (":abc", "not in the form"),
        ("sha256:xyz", "not a valid sha256 digest"),
        ("sha256:abcd", "expected 64 hex characters"),
        ("crc7:00", "Unsupported checksum algorithm"),
    ],
)
def test_bad_checksums(value, message):
    with pytest.raises(ValueError, match=message):
        parse_checksum(value)


def test_provider_entry_point_matches_distribution():
    (entry,) = [
        ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_s3sftp")
    ]
    info = entry.load()()
    assert info["package-name"] == "airflow-s3sftp"
    assert info["versions"] == [__version__]
    modules = {
        m
        for kind in ("hooks", "operators", "sensors", "triggers")
        for item in info[kind]
        for m in item["python-modules"]
    }
    for module in modules:
        __import__(module)
