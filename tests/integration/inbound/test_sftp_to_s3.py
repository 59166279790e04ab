# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTPToS3StreamOperator on OpenSSH and moto: exact bytes, proofs before publish, nothing left open."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import zlib

import pytest

from airflow_s3sftp.core.inbound import crc32_text
from airflow_s3sftp.exceptions import (
    ChecksumMismatchError,
    DeliveryFailedError,
    SFTPSourceChangedError,
    VerificationError,
)
from airflow_s3sftp.operators.sftp_to_s3 import SFTPToS3StreamOperator
from tests.faults import FaultyProxy
from tests.integration.inbound.helpers import MiB, bring_in, keys, open_uploads, s3_bytes, sha, write_file
from tests.integration.reports import read_report


def owner(directory):  # type: ignore[no-untyped-def]
    stat = directory.stat()
    return stat.st_uid, stat.st_gid


class ActAfter(FaultyProxy):
    """Forward everything untouched; once ``after`` bytes went down, run ``on_fault`` once (no cut)."""

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if counted:
                    with lock:
                        state["bytes"] += len(data)
                        fire = not state["tripped"] and state["bytes"] >= self.after and self.faults == 0
                        if fire:
                            state["tripped"] = True
                            self.faults += 1
                    if fire and self.on_fault:
                        self.on_fault()
        except OSError:
            pass
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.mark.parametrize(
    ("size", "upload", "parts"),
    [
        (0, "put", 1),
        (1, "put", 1),
        (5 * MiB - 1, "put", 1),
        (5 * MiB, "multipart", 1),
        (12 * MiB + 3, "multipart", 3),
    ],
)
def test_file_lands_as_exactly_one_object_with_its_checksums(s3, bucket, remote_dir, size, upload, parts):
    data = os.urandom(size)
    write_file(remote_dir / "in.bin", data, owner(remote_dir))
    record = bring_in(sftp_path=str(remote_dir / "in.bin"), s3_bucket=bucket, s3_key="landing/in.bin")
    assert s3_bytes(s3, bucket, "landing/in.bin") == data
    assert record["checksum"] == sha(data)
    assert (record["upload"], record["parts"], record["size"]) == (upload, parts, size)
    head = s3.head_object(Bucket=bucket, Key="landing/in.bin", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha(data)
    assert head["ChecksumCRC32"] == crc32_text(zlib.crc32(data))
    assert record["s3_checksum"] == f"crc32:{zlib.crc32(data):08x}"
    assert "crc32" in record["s3_check"]
    assert record["etag"] == head["ETag"].strip('"')
    assert keys(s3, bucket) == ["landing/in.bin"]
    assert open_uploads(s3, bucket) == []
    assert (remote_dir / "in.bin").read_bytes() == data  # after="keep"
    for field in (
        "s3_uri",
        "sftp_path",
        "size",
        "checksum",
        "s3_checksum",
        "etag",
        "version_id",
        "seconds",
        "mb_per_s",
    ):
        assert field in record


def test_expected_checksum_given_goes_into_metadata_at_once(s3, bucket, remote_dir):
    data = os.urandom(11 * MiB)
    write_file(remote_dir / "f", data, owner(remote_dir))
    record = bring_in(
        sftp_path=str(remote_dir / "f"),
        s3_bucket=bucket,
        s3_key="f",
        expected_checksum=sha(data),
        expected_size=len(data),
    )
    assert record["parts"] == 3
    assert s3.head_object(Bucket=bucket, Key="f")["Metadata"]["sha256"] == sha(data)
    assert s3_bytes(s3, bucket, "f") == data


@pytest.mark.parametrize("size", [3 * MiB, 12 * MiB])
def test_file_replaced_after_its_event_lands_nothing_and_is_kept(s3, bucket, remote_dir, size):
    proven = os.urandom(size)
    write_file(remote_dir / "f.csv", os.urandom(size), owner(remote_dir))  # replaced since it was proven
    with pytest.raises(ChecksumMismatchError, match="expected_checksum") as err:
        bring_in(
            sftp_path=str(remote_dir / "f.csv"),
            s3_bucket=bucket,
            s3_key="f.csv",
            expected_checksum=sha(proven),
            after="delete",
        )
    assert str(remote_dir / "f.csv") in str(err.value)
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []
    assert (remote_dir / "f.csv").exists()  # after= never runs on a failure


def test_expected_size_mismatch_fails_before_reading(s3, bucket, remote_dir):
    write_file(remote_dir / "f", b"12345", owner(remote_dir))
    with pytest.raises(VerificationError, match="expected_size is 6"):
        bring_in(sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", expected_size=6)
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []


@pytest.mark.parametrize("change", ["append", "mtime"])
def test_file_changed_during_the_read_lands_nothing(sshd, s3, bucket, remote_dir, set_connection, change):
    path = remote_dir / "growing.bin"
    data = os.urandom(16 * MiB)
    write_file(path, data, owner(remote_dir))
    os.utime(path, (1_700_000_000, 1_700_000_000))

    def change_it() -> None:
        if change == "append":
            with path.open("ab") as handle:
                handle.write(b"more")
        else:
            os.utime(path, (1_700_000_100, 1_700_000_100))

    with ActAfter(sshd.port, after=4 * MiB, direction="down", on_fault=change_it) as proxy:
        set_connection("sftp_act", sshd.connection() | {"port": proxy.port})
        with pytest.raises(SFTPSourceChangedError, match="changed while it was read") as err:
            bring_in(sftp_path=str(path), s3_bucket=bucket, s3_key="g", sftp_conn_id="sftp_act")
    assert proxy.faults == 1
    assert ("size" if change == "append" else "mtime") in str(err.value)
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []


def test_dropped_ssh_connection_resumes_at_the_last_byte_read(sshd, s3, bucket, remote_dir, set_connection):
    data = os.urandom(14 * MiB + 5)
    write_file(remote_dir / "big", data, owner(remote_dir))
    with FaultyProxy(sshd.port, after=7 * MiB, mode="cut", direction="down") as proxy:
        set_connection("sftp_cut", sshd.connection() | {"port": proxy.port})
        record = bring_in(
            sftp_path=str(remote_dir / "big"),
            s3_bucket=bucket,
            s3_key="big",
            sftp_conn_id="sftp_cut",
            expected_checksum=sha(data),
        )
    assert proxy.faults == 1 and proxy.connections == 2
    assert record["attempts"] == 2
    assert 0 < record["resumed_from"] < len(data)
    assert s3_bytes(s3, bucket, "big") == data
    assert open_uploads(s3, bucket) == []


def test_file_changed_while_the_connection_was_down_lands_nothing(
    sshd, s3, bucket, remote_dir, set_connection
):
    path = remote_dir / "big"
    write_file(path, os.urandom(12 * MiB), owner(remote_dir))

    def replace() -> None:
        write_file(path, os.urandom(12 * MiB + 1))

    with FaultyProxy(sshd.port, after=6 * MiB, mode="cut", direction="down", on_fault=replace) as proxy:
        set_connection("sftp_cut2", sshd.connection() | {"port": proxy.port})
        with pytest.raises(SFTPSourceChangedError, match="while the connection was down"):
            bring_in(sftp_path=str(path), s3_bucket=bucket, s3_key="big", sftp_conn_id="sftp_cut2")
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []


def test_failed_part_upload_is_retried(moto, s3, bucket, remote_dir, set_connection):
    data = os.urandom(11 * MiB)
    write_file(remote_dir / "f", data, owner(remote_dir))
    port = int(moto.endpoint_url.rsplit(":", 1)[1].split("/")[0])
    with FaultyProxy(port, after=3 * MiB, mode="cut", direction="up") as proxy:
        conn = moto.connection()
        conn["extra"] = {**conn["extra"], "endpoint_url": f"http://127.0.0.1:{proxy.port}"}  # type: ignore[dict-item]
        set_connection("aws_cut", conn)
        record = bring_in(
            sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", aws_conn_id="aws_cut"
        )
    assert proxy.faults == 1
    assert proxy.connections >= 2  # the cut request was sent again on a new connection
    assert s3_bytes(s3, bucket, "f") == data
    assert record["checksum"] == sha(data)
    assert open_uploads(s3, bucket) == []


def test_if_exists_fail_refuses_an_existing_object(s3, bucket, remote_dir):
    write_file(remote_dir / "f", b"new", owner(remote_dir))
    s3.put_object(Bucket=bucket, Key="f", Body=b"old")
    with pytest.raises(FileExistsError, match=r"s3://.*/f already exists"):
        bring_in(sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", if_exists="fail")
    assert s3_bytes(s3, bucket, "f") == b"old"


@pytest.mark.parametrize("size", [MiB, 12 * MiB])
def test_if_exists_fail_refuses_an_object_that_appears_during_the_read(
    sshd, s3, bucket, remote_dir, set_connection, size
):
    data = os.urandom(size)
    write_file(remote_dir / "f", data, owner(remote_dir))

    def someone_writes() -> None:
        s3.put_object(Bucket=bucket, Key="f", Body=b"theirs")

    with ActAfter(sshd.port, after=size // 2, direction="down", on_fault=someone_writes) as proxy:
        set_connection("sftp_race", sshd.connection() | {"port": proxy.port})
        with pytest.raises(FileExistsError, match="appeared during the transfer"):
            bring_in(
                sftp_path=str(remote_dir / "f"),
                s3_bucket=bucket,
                s3_key="f",
                if_exists="fail",
                sftp_conn_id="sftp_race",
            )
    assert proxy.faults == 1
    assert s3_bytes(s3, bucket, "f") == b"theirs"  # If-None-Match: the other writer's object stays
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("size", [MiB, 11 * MiB])
@pytest.mark.parametrize("with_expected", [True, False])
def test_skip_identical_skips_only_the_same_bytes(s3, bucket, remote_dir, size, with_expected):
    data = os.urandom(size)
    write_file(remote_dir / "f", data, owner(remote_dir))
    extra = {"expected_checksum": sha(data)} if with_expected else {}
    first = bring_in(
        sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", if_exists="skip_identical", **extra
    )
    second = bring_in(
        sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", if_exists="skip_identical", **extra
    )
    assert (first["skipped"], second["skipped"]) == (False, True)
    assert second["checksum"] == sha(data)
    changed = os.urandom(size)
    write_file(remote_dir / "f", changed)
    extra = {"expected_checksum": sha(changed)} if with_expected else {}
    third = bring_in(
        sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", if_exists="skip_identical", **extra
    )
    assert third["skipped"] is False
    assert s3_bytes(s3, bucket, "f") == changed
    assert open_uploads(s3, bucket) == []


def test_after_delete_removes_the_file_only_once_the_object_is_verified(s3, bucket, remote_dir):
    data = os.urandom(6 * MiB)
    write_file(remote_dir / "f", data, owner(remote_dir))
    record = bring_in(
        sftp_path=str(remote_dir / "f"),
        s3_bucket=bucket,
        s3_key="f",
        after="delete",
        expected_checksum=sha(data),
    )
    assert not (remote_dir / "f").exists()
    assert s3_bytes(s3, bucket, "f") == data
    assert record["after"] == "delete"


def test_after_move_archives_the_file_and_never_overwrites(s3, bucket, remote_dir):
    archive = remote_dir / "archive"
    archive.mkdir()
    os.chown(archive, *owner(remote_dir))
    write_file(remote_dir / "a.csv", b"a,b\n1,2\n", owner(remote_dir))
    record = bring_in(
        sftp_path=str(remote_dir / "a.csv"),
        s3_bucket=bucket,
        s3_key="a.csv",
        after="move",
        move_to=str(archive),
    )
    assert record["moved_to"] == str(archive / "a.csv")
    assert (archive / "a.csv").read_bytes() == b"a,b\n1,2\n" and not (remote_dir / "a.csv").exists()
    write_file(remote_dir / "a.csv", b"second", owner(remote_dir))
    with pytest.raises(FileExistsError):
        bring_in(
            sftp_path=str(remote_dir / "a.csv"),
            s3_bucket=bucket,
            s3_key="a2.csv",
            after="move",
            move_to=str(archive),
        )
    assert (archive / "a.csv").read_bytes() == b"a,b\n1,2\n"  # the archived file was not overwritten
    assert (remote_dir / "a.csv").read_bytes() == b"second"


def test_missing_move_to_fails_before_any_upload(s3, bucket, remote_dir):
    write_file(remote_dir / "a", b"x", owner(remote_dir))
    with pytest.raises(FileNotFoundError, match="move_to"):
        bring_in(
            sftp_path=str(remote_dir / "a"),
            s3_bucket=bucket,
            s3_key="a",
            after="move",
            move_to=str(remote_dir / "nope"),
        )
    assert keys(s3, bucket) == [] and (remote_dir / "a").exists()


def test_glob_brings_every_matching_file_under_the_prefix(s3, bucket, remote_dir):
    files = {f"{n}.csv": os.urandom(n * 1000) for n in range(1, 6)}
    for name, data in files.items():
        write_file(remote_dir / name, data, owner(remote_dir))
    write_file(remote_dir / ".hidden.csv", b"partial", owner(remote_dir))
    write_file(remote_dir / "other.txt", b"not csv", owner(remote_dir))
    (remote_dir / "dir.csv").mkdir()
    result = bring_in(
        sftp_path=f"{remote_dir}/*.csv", s3_bucket=bucket, s3_prefix="in/", max_concurrency=3, after="delete"
    )
    assert result["count"] == 5 and result["transferred"] == 5 and result["failed"] == []
    assert keys(s3, bucket) == sorted(f"in/{name}" for name in files)
    for name, data in files.items():
        assert s3_bytes(s3, bucket, f"in/{name}") == data
        assert not (remote_dir / name).exists()
    assert (remote_dir / ".hidden.csv").exists() and (remote_dir / "other.txt").exists()


def test_glob_matching_nothing_fails_unless_allowed(s3, bucket, remote_dir):
    with pytest.raises(FileNotFoundError, match=r"\*\.csv"):
        bring_in(sftp_path=f"{remote_dir}/*.csv", s3_bucket=bucket, s3_prefix="in")
    assert (
        bring_in(sftp_path=f"{remote_dir}/*.csv", s3_bucket=bucket, s3_prefix="in", allow_empty=True)["count"]
        == 0
    )


def test_sftp_paths_with_checksums_per_path_one_failing(s3, bucket, remote_dir):
    good, bad = os.urandom(1000), os.urandom(1000)
    write_file(remote_dir / "good", good, owner(remote_dir))
    write_file(remote_dir / "bad", bad, owner(remote_dir))
    paths = [str(remote_dir / "good"), str(remote_dir / "bad")]
    expected = {paths[0]: sha(good), paths[1]: sha(b"what was proven")}
    with pytest.raises(DeliveryFailedError, match="1 of 2 files failed") as err:
        bring_in(
            sftp_paths=paths,
            s3_bucket=bucket,
            s3_prefix="p",
            expected_checksum=expected,
            report=f"s3://{bucket}/reports/in.jsonl",
        )
    assert "ChecksumMismatchError" in str(err.value)
    assert keys(s3, bucket) == ["p/good", "reports/in.jsonl"]
    assert err.value.summary["failed_count"] == 1
    assert err.value.summary["failed"][0]["sftp_path"] == paths[1]
    records = {record["sftp_path"]: record for record in read_report(s3, bucket, "reports/in.jsonl")}
    assert records[paths[0]]["checksum"] == sha(good)
    assert "ChecksumMismatchError" in records[paths[1]]["error"]


def test_missing_file_and_missing_bucket_are_named(s3, bucket, remote_dir):
    with pytest.raises(FileNotFoundError, match="nope"):
        bring_in(sftp_path=str(remote_dir / "nope"), s3_bucket=bucket, s3_key="k")
    write_file(remote_dir / "f", b"x", owner(remote_dir))
    with pytest.raises(FileNotFoundError, match="no-such-bucket-xyz"):
        bring_in(sftp_path=str(remote_dir / "f"), s3_bucket="no-such-bucket-xyz", s3_key="k")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"s3_key": "k"}, ValueError, "sftp_path or sftp_paths"),
        ({"sftp_path": "/a", "sftp_paths": ["/b"], "s3_key": "k"}, ValueError, "sftp_path or sftp_paths"),
        ({"sftp_path": "/a"}, ValueError, "s3_key"),
        ({"sftp_path": "/a", "s3_key": "k", "s3_prefix": "p"}, ValueError, "s3_key"),
        ({"sftp_path": "/a", "s3_key": "k", "after": "archive"}, ValueError, "after"),
        ({"sftp_path": "/a", "s3_key": "k", "after": "move"}, ValueError, "move_to"),
        ({"sftp_path": "/a", "s3_key": "k", "move_to": "/x"}, ValueError, "move_to"),
        ({"sftp_path": "/a", "s3_key": "k", "if_exists": "overwrite"}, ValueError, "if_exists"),
        ({"sftp_path": "/a", "s3_key": "k", "tuning": {"part_size": 1024}}, ValueError, "part_size"),
        ({"sftp_path": "/a", "s3_key": "k", "tuning": {"chunk": 1}}, ValueError, "Unknown tuning keys"),
        (
            {"sftp_path": "/a", "s3_key": "k", "tuning": {"upload_concurrency": "4"}},
            TypeError,
            "upload_concurrency",
        ),
        ({"sftp_path": "/a", "s3_key": "k", "max_concurrency": 0}, ValueError, "max_concurrency"),
    ],
)
def test_bad_arguments_fail_at_parse_time_naming_the_parameter(kwargs, error, match):
    with pytest.raises(error, match=match):
        SFTPToS3StreamOperator(task_id="bad", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sftp_path": "/in/*/x.csv", "s3_prefix": "p"}, ValueError, "last segment"),
        ({"sftp_path": "/in/", "s3_key": "k"}, ValueError, "names a directory"),
        ({"sftp_paths": ["/a", "/b"], "s3_key": "k"}, ValueError, "use s3_prefix"),
        ({"sftp_paths": ["/x/a", "/y/a"], "s3_prefix": "p"}, ValueError, "both land on"),
        ({"sftp_paths": "/a", "s3_prefix": "p"}, TypeError, "sftp_paths"),
        (
            {"sftp_path": "/a", "s3_key": "k", "expected_checksum": "md5:" + "0" * 32},
            ValueError,
            "expected_checksum",
        ),
        ({"sftp_path": "/a", "s3_key": "k", "expected_checksum": "sha256:xyz"}, ValueError, "sha256"),
        ({"sftp_path": "/a", "s3_key": "k", "expected_size": -1}, ValueError, "expected_size"),
        ({"sftp_path": "/a", "s3_key": "k" * 1025}, ValueError, "1024 bytes"),
        (
            {"sftp_paths": ["/a", "/b"], "s3_prefix": "p", "expected_checksum": "sha256:" + "0" * 64},
            ValueError,
            "mapping",
        ),
    ],
)
def test_bad_templated_arguments_fail_at_execute_naming_the_parameter(s3, bucket, kwargs, error, match):
    kwargs.setdefault("s3_bucket", bucket)
    with pytest.raises(error, match=match):
        bring_in(**kwargs)
    assert open_uploads(s3, bucket) == []


def test_templated_expected_size_as_rendered_string(s3, bucket, remote_dir):
    write_file(remote_dir / "f", b"12345", owner(remote_dir))
    record = bring_in(sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", expected_size="5")
    assert record["size"] == 5


def test_lineage_names_the_file_read_and_the_object_written(bucket, remote_dir):
    write_file(remote_dir / "f", b"x", owner(remote_dir))
    op = SFTPToS3StreamOperator(task_id="t", sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="k/f")
    op.execute(context={})
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [(f"s3://{bucket}", "k/f")]
    assert lineage.inputs[0].namespace.startswith("sftp://127.0.0.1:")
    assert lineage.inputs[0].name == str(remote_dir / "f")


def test_many_transfers_at_once_do_not_mix_bytes(s3, bucket, remote_dir):
    files = {f"f{n}": os.urandom(6 * MiB + n) for n in range(4)}
    for name, data in files.items():
        write_file(remote_dir / name, data, owner(remote_dir))
    results: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda n=name: results.append(
                bring_in(sftp_path=str(remote_dir / n), s3_bucket=bucket, s3_key=n)
            )
        )
        for name in files
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for name, data in files.items():
        assert s3_bytes(s3, bucket, name) == data
    assert open_uploads(s3, bucket) == []


def test_a_long_link_reads_over_several_channels_and_lands_exact_bytes(
    sshd, s3, bucket, remote_dir, set_connection
):
    from benchmarks.throttle import ThrottleProxy

    data = os.urandom(21 * MiB + 9)
    write_file(remote_dir / "far", data, owner(remote_dir))
    # 20 ms round trip: above the threshold where one channel's window limits a long link.
    with ThrottleProxy(sshd.port, rate=0, latency=0.01, depth=4096) as proxy:
        set_connection("sftp_far", sshd.connection() | {"port": proxy.port})
        record = bring_in(
            sftp_path=str(remote_dir / "far"),
            s3_bucket=bucket,
            s3_key="far",
            sftp_conn_id="sftp_far",
            expected_checksum=sha(data),
            tuning={"part_size": 5 * MiB, "stripe_size": 2 * MiB},
        )
    assert record["channels"] == 8
    assert s3_bytes(s3, bucket, "far") == data
    assert open_uploads(s3, bucket) == []


def test_a_cut_during_a_striped_read_resumes_in_order(sshd, s3, bucket, remote_dir, set_connection):
    data = os.urandom(20 * MiB + 1)
    write_file(remote_dir / "striped", data, owner(remote_dir))
    with FaultyProxy(sshd.port, after=9 * MiB, mode="cut", direction="down") as proxy:
        set_connection("sftp_striped_cut", sshd.connection() | {"port": proxy.port})
        record = bring_in(
            sftp_path=str(remote_dir / "striped"),
            s3_bucket=bucket,
            s3_key="striped",
            sftp_conn_id="sftp_striped_cut",
            tuning={"part_size": 5 * MiB, "stripe_size": MiB, "channels": 4, "connection_retry_delay": 0.1},
        )
    assert proxy.faults == 1
    assert record["channels"] == 4 and record["attempts"] == 2 and record["resumed_from"] > 0
    assert s3_bytes(s3, bucket, "striped") == data
    assert open_uploads(s3, bucket) == []


def test_expected_checksum_in_capitals_with_spaces_is_the_same_checksum(s3, bucket, remote_dir):
    data = os.urandom(6 * MiB)
    write_file(remote_dir / "f", data, owner(remote_dir))
    expected = "  SHA256:" + sha(data).split(":")[1].upper() + " "
    record = bring_in(
        sftp_path=str(remote_dir / "f"), s3_bucket=bucket, s3_key="f", expected_checksum=expected
    )
    assert record["checksum"] == sha(data)
    assert s3.head_object(Bucket=bucket, Key="f")["Metadata"]["sha256"] == sha(data)


def test_a_directory_is_refused_naming_it(s3, bucket, remote_dir):
    (remote_dir / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match="sub"):
        bring_in(sftp_path=str(remote_dir / "sub"), s3_bucket=bucket, s3_key="k")
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []
