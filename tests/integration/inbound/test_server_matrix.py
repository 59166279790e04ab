# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Inbound on every server of the matrix (OpenSSH, Green End, ProFTPD, asyncssh) into moto."""

from __future__ import annotations

import os

import pytest

from airflow_s3sftp.exceptions import ChecksumMismatchError
from tests.faults import FaultyProxy
from tests.integration.inbound.helpers import MiB, bring_in, keys, open_uploads, s3_bytes, sha, write_file
from tests.integration.servers.conftest import conn_id


@pytest.mark.parametrize("size", [0, 3 * MiB + 1, 13 * MiB + 7])
def test_exact_bytes_from_every_server(sftp_server, s3, bucket, size):
    directory = sftp_server.new_dir()
    data = os.urandom(size)
    write_file(directory / "f.bin", data, sftp_server.owner)
    record = bring_in(
        sftp_path=sftp_server.remote(directory / "f.bin"),
        s3_bucket=bucket,
        s3_key="f.bin",
        sftp_conn_id=conn_id(sftp_server),
        expected_checksum=sha(data),
        expected_size=size,
    )
    assert s3_bytes(s3, bucket, "f.bin") == data
    assert record["checksum"] == sha(data)
    assert open_uploads(s3, bucket) == []


def test_glob_then_move_on_every_server(sftp_server, s3, bucket):
    directory = sftp_server.new_dir()
    archive = directory / "done"
    archive.mkdir()
    os.chown(archive, *sftp_server.owner)
    files = {f"{n}.csv": os.urandom(50_000 + n) for n in range(3)}
    for name, data in files.items():
        write_file(directory / name, data, sftp_server.owner)
    result = bring_in(
        sftp_path=sftp_server.remote(directory) + "/*.csv",
        s3_bucket=bucket,
        s3_prefix="in",
        sftp_conn_id=conn_id(sftp_server),
        after="move",
        move_to=sftp_server.remote(archive),
    )
    assert result["transferred"] == 3
    for name, data in files.items():
        assert s3_bytes(s3, bucket, f"in/{name}") == data
        assert (archive / name).read_bytes() == data and not (directory / name).exists()


def test_dropped_connection_resumes_on_every_server(sftp_server, s3, bucket, set_connection):
    directory = sftp_server.new_dir()
    data = os.urandom(12 * MiB + 3)
    write_file(directory / "big", data, sftp_server.owner)
    with FaultyProxy(sftp_server.port, after=6 * MiB, mode="cut", direction="down") as proxy:
        set_connection("sftp_matrix_cut", {**sftp_server.conn, "port": proxy.port})
        record = bring_in(
            sftp_path=sftp_server.remote(directory / "big"),
            s3_bucket=bucket,
            s3_key="big",
            sftp_conn_id="sftp_matrix_cut",
        )
    assert proxy.faults == 1
    assert record["attempts"] == 2 and 0 < record["resumed_from"] < len(data)
    assert s3_bytes(s3, bucket, "big") == data
    assert open_uploads(s3, bucket) == []


def test_replaced_file_lands_nothing_on_every_server(sftp_server, s3, bucket):
    directory = sftp_server.new_dir()
    write_file(directory / "f", os.urandom(7 * MiB), sftp_server.owner)
    with pytest.raises(ChecksumMismatchError):
        bring_in(
            sftp_path=sftp_server.remote(directory / "f"),
            s3_bucket=bucket,
            s3_key="f",
            sftp_conn_id=conn_id(sftp_server),
            expected_checksum=sha(b"the proven bytes"),
            after="delete",
        )
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []
    assert (directory / "f").exists()
