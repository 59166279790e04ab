# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The delivery guarantees of issue 11 on a real sshd and moto, through the operator's public API only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp import exceptions
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.faults import FaultyProxy
from tests.integration.cut_proxy import CutWhen
from tests.integration.reports import read_report

MiB = 1024 * 1024
CHUNK = 256 * 1024  # small chunks, so resume checkpoints exist within a few MiB
FAST = {"tuning": {"chunk_size": CHUNK}}
# After a cut, reconnect without the default 1 s backoff.
FAST_RETRY = {"tuning": {"chunk_size": CHUNK, "connection_retry_delay": 0.1}}
# Every record (one object, or each element of "objects") carries these keys on every path.
RECORD_KEYS = {
    "s3_uri",
    "sftp_path",
    "size",
    "checksum",
    "etag",
    "version_id",
    "skipped",
    "attempts",
    "resumed_from",
    "seconds",
    "mb_per_s",
    "verified",
    "published_with",
    "source_check",
    "source_check_skipped",
    "s3_retries",
    "sidecar_path",
    "done_marker_path",
}
OURS = re.compile(r"^\..*\.s3sftp-(part|old)$")


def deliver(**kwargs: Any) -> dict[str, Any]:
    """Run the operator as a task would, with a minimal context."""
    operator = S3ToSFTPStreamOperator(task_id="deliver", **kwargs)
    return operator.execute(context={})  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def temp_files(directory: Path) -> list[str]:
    """Return our temp and backup files (``.<name>[.<token>].s3sftp-part`` / ``.s3sftp-old``)."""
    return [name for name in listing(directory) if OURS.match(name)]


def assert_record(record: dict[str, Any]) -> None:
    missing = RECORD_KEYS - set(record)
    assert not missing, f"result record lacks {sorted(missing)}: {record}"
    if record["skipped"]:
        assert record["attempts"] == 1
        assert record["published_with"] == "skipped"


def put_crc32(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """Upload as boto3 does by default, and check that S3 keeps a full-object CRC32 for it."""
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32"), "boto3 no longer uploads with CRC32: the test lost its premise"


def sftp_through(set_connection: Callable[..., str], sshd: Any, proxy: FaultyProxy) -> str:
    return set_connection("sftp_faulty", sshd.connection() | {"port": proxy.port})


def flip_first_byte(directory: Path) -> None:
    """Corrupt the first byte of every temp file in ``directory`` (what a bad resume would reuse)."""
    for name in temp_files(directory):
        with (directory / name).open("r+b") as handle:
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0xFF]))


# --- 1. a retry that restarts from byte 0 -----------------------------------------------------------


def temp_holds(directory: Path, size: int) -> Callable[[], bool]:
    """True once our temp file in ``directory`` holds at least ``size`` bytes on the server."""

    def check() -> bool:
        for name in temp_files(directory):
            try:
                if (directory / name).stat().st_size >= size:
                    return True
            except FileNotFoundError:
                continue
        return False

    return check


@pytest.mark.parametrize(
    "case", ["cut-before-first-checkpoint", "checksum-none", "prefix-read-back-mismatch"]
)
def test_a_retry_that_restarts_from_byte_zero_delivers_identical_bytes(
    sshd, s3, bucket, remote_dir, set_connection, case
):
    data = os.urandom(4 * MiB + 17)
    put_crc32(s3, bucket, "k", data)
    options: dict[str, Any] = {"checksum": None} if case == "checksum-none" else {}
    proxy: FaultyProxy
    if case == "cut-before-first-checkpoint":
        proxy = FaultyProxy(sshd.port, after=6000, direction="up")  # inside the first write request
    elif case == "checksum-none":
        proxy = FaultyProxy(sshd.port, after=2 * MiB, direction="up")
    else:
        # Cut once the server holds 1 MiB (so byte 0 has landed), then corrupt byte 0: the
        # prefix no longer reads back as sent, and the retry must start over.
        proxy = CutWhen(
            sshd.port, when=temp_holds(remote_dir, MiB), on_fault=lambda: flip_first_byte(remote_dir)
        )
    with proxy:
        result = deliver(
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=str(remote_dir / "k"),
            sftp_conn_id=sftp_through(set_connection, sshd, proxy),
            **FAST_RETRY,
            **options,
        )
    assert proxy.faults == 1
    assert (remote_dir / "k").read_bytes() == data
    assert listing(remote_dir) == ["k"]
    assert result["attempts"] == 2
    if case != "checksum-none":  # nothing landed, or what landed is corrupt: nothing to reuse
        assert result["resumed_from"] == 0
    assert "CRC32" in result["source_check"]  # S3's CRC32 checked, while the operator hashes sha256
    assert result["checksum"] == (None if options else f"sha256:{sha256(data)}")
    assert_record(result)


# --- 2. atomic=False never leaves a partial file -----------------------------------------------------


def test_atomic_false_with_retries_exhausted_leaves_no_file_and_says_the_old_version_is_gone(
    sshd, s3, bucket, remote_dir, set_connection
):
    final = remote_dir / "k"
    final.write_bytes(b"yesterday's complete file")
    os.chown(final, remote_dir.stat().st_uid, remote_dir.stat().st_gid)  # the SFTP user's own file
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(4 * MiB))
    # Every connection dies after 2 MiB: enough for a cleanup, never enough for the object.
    with (
        FaultyProxy(sshd.port, after=2 * MiB, mode="cut", direction="up", faulty=99) as proxy,
        pytest.raises(exceptions.ConnectionLostError) as info,
    ):
        deliver(
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=str(final),
            sftp_conn_id=sftp_through(set_connection, sshd, proxy),
            atomic=False,
            tuning=FAST_RETRY["tuning"] | {"connection_retries": 1},
        )
    assert proxy.faults >= 2
    assert not final.exists(), f"a partial file of {final.stat().st_size} bytes stayed under the final name"
    assert listing(remote_dir) == []
    assert re.search(r"(previous|old) version.*(gone|lost|removed|deleted)", str(info.value), re.I), str(
        info.value
    )


# --- 3 and 4. plan-time refusals of names the delivery itself creates --------------------------------


def put_all(s3: Any, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 1000)


@pytest.mark.parametrize(
    "clashing",
    [".x.bin.s3sftp-part", ".x.bin.0123456789ab.s3sftp-part", ".x.bin.s3sftp-old", ".y.bin.s3sftp-part"],
)
def test_a_source_key_shaped_like_our_temp_or_backup_name_is_refused_at_plan_time(
    s3, bucket, remote_dir, clashing
):
    put_all(s3, bucket, ["in/x.bin", f"in/{clashing}"])
    with pytest.raises(ValueError, match=re.escape(clashing)):
        deliver(s3_bucket=bucket, s3_prefix="in/", sftp_path=f"{remote_dir}/", **FAST)
    assert listing(remote_dir) == []


@pytest.mark.parametrize(
    ("options", "clashing"),
    [
        pytest.param({"sidecar": True}, "a.csv.sha256", id="sidecar"),
        pytest.param({"sidecar": True, "checksum": "md5"}, "a.csv.md5", id="sidecar-md5"),
        pytest.param({"done_marker": ".done"}, "a.csv.done", id="done-marker"),
    ],
)
def test_a_source_key_named_like_another_keys_sidecar_or_marker_is_refused_naming_both(
    s3, bucket, remote_dir, options, clashing
):
    put_all(s3, bucket, ["in/a.csv", f"in/{clashing}"])
    with pytest.raises(ValueError, match=re.escape(clashing)) as info:
        deliver(s3_bucket=bucket, s3_prefix="in/", sftp_path=f"{remote_dir}/", **FAST, **options)
    message = str(info.value)
    assert re.search(r"a\.csv(?![.\w])", message), f"the message does not name a.csv: {message}"
    assert listing(remote_dir) == []


# --- 5. two deliveries to one path, the first stalling longer than 10 s --------------------------------


@contextlib.contextmanager
def stalling_s3(
    moto: Any, set_connection: Callable[..., str], conn_id: str, seconds: float
) -> Iterator[FaultyProxy]:
    """An ``aws`` connection whose first object body stalls after 1 MiB for ``seconds``.

    The stall lasts until boto3's read timeout, as S3 throttling or a GC pause would; the
    delivery then goes on with a ranged GET on the same SSH session.
    """
    with FaultyProxy(moto.port, after=MiB, mode="stall", direction="down") as proxy:
        extra = {
            "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "region_name": "us-east-1",
            "config_kwargs": {"read_timeout": seconds},
        }
        set_connection(conn_id, moto.connection() | {"extra": extra})
        yield proxy


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_two_deliveries_to_one_path_with_a_stalled_first_both_end_well(
    moto, s3, bucket, remote_dir, set_connection
):
    sources = {"first": os.urandom(4 * MiB), "second": os.urandom(4 * MiB + 1)}
    for key, body in sources.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    final = remote_dir / "k"
    outcomes: dict[str, Any] = {}
    finished: dict[str, float] = {}

    def run(key: str, aws_conn_id: str) -> None:
        try:
            outcomes[key] = deliver(
                s3_bucket=bucket, s3_key=key, sftp_path=str(final), aws_conn_id=aws_conn_id, **FAST
            )
        except Exception as err:
            outcomes[key] = err
        finished[key] = time.monotonic()

    # The first stalls 14 s with its temp file part-written (longer than the 10 s after which
    # today's code calls a temp file stale); the second starts meanwhile and stalls 8 s itself,
    # so that the first goes on while the second is still writing.
    with (
        stalling_s3(moto, set_connection, "aws_slow_first", 14) as slow_first,
        stalling_s3(moto, set_connection, "aws_slow_second", 8),
    ):
        first = threading.Thread(target=run, args=("first", "aws_slow_first"))
        first.start()
        wait_for(lambda: slow_first.faults == 1, "the first delivery stalls")
        wait_for(
            lambda: any((remote_dir / name).stat().st_size for name in temp_files(remote_dir)),
            "the first delivery's temp file holds bytes",
        )
        run("second", "aws_slow_second")
        first.join(timeout=120)
    assert not first.is_alive()

    failures = {key: o for key, o in outcomes.items() if isinstance(o, Exception)}
    assert len(failures) < 2, f"both deliveries failed: {failures}"
    for err in failures.values():
        assert isinstance(err, exceptions.SupersededError), repr(err)
    last = max((finished[key], key) for key in outcomes if key not in failures)[1]
    assert final.read_bytes() == sources[last], "the last delivery to publish did not win"
    assert listing(remote_dir) == ["k"]
    for record in outcomes.values():
        if isinstance(record, dict):
            assert_record(record)


# --- 6. skip_identical proves identity by content ------------------------------------------------------


def put_multipart(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """Upload in two parts without checksums: S3 then vouches for nothing but a multipart ETag."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, (begin, end) in enumerate([(0, 5 * MiB), (5 * MiB, len(data))], start=1):
        part = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data[begin:end]
        )
        parts.append({"ETag": part["ETag"], "PartNumber": number})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-2"')
    assert not any(name.startswith("Checksum") and name != "ChecksumType" for name in head)


def put_object_of_kind(s3: Any, bucket: str, kind: str) -> bytes:
    if kind == "single-part-sha256":
        data = os.urandom(2 * MiB + 3)
        s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="SHA256")
        assert s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED").get("ChecksumSHA256")
    else:
        data = os.urandom(5 * MiB + 100)
        put_multipart(s3, bucket, "k", data)
    return data


def change_one_byte_keeping_size_and_mtime(path: Path) -> None:
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("kind", ["single-part-sha256", "multipart"])
def test_skip_identical_redelivers_a_file_whose_bytes_changed_behind_a_matching_sidecar(
    s3, bucket, remote_dir, kind
):
    data = put_object_of_kind(s3, bucket, kind)
    options = {
        "s3_bucket": bucket,
        "s3_key": "k",
        "sftp_path": str(remote_dir / "k"),
        "sidecar": True,
        **FAST,
    }
    deliver(**options)
    change_one_byte_keeping_size_and_mtime(remote_dir / "k")

    result = deliver(if_exists="skip_identical", **options)
    assert result["skipped"] is False
    assert (remote_dir / "k").read_bytes() == data
    assert (remote_dir / "k.sha256").read_text() == f"{sha256(data)}  k\n"
    assert listing(remote_dir) == ["k", "k.sha256"]
    assert_record(result)


@pytest.mark.parametrize(("kind", "skipped"), [("single-part-sha256", True), ("multipart", False)])
def test_skip_identical_by_sidecar_trusts_only_a_sidecar_equal_to_a_full_object_checksum(
    s3, bucket, remote_dir, kind, skipped
):
    data = put_object_of_kind(s3, bucket, kind)
    options = {
        "s3_bucket": bucket,
        "s3_key": "k",
        "sftp_path": str(remote_dir / "k"),
        "sidecar": True,
        **FAST,
    }
    deliver(**options)
    change_one_byte_keeping_size_and_mtime(remote_dir / "k")

    result = deliver(if_exists="skip_identical", skip_identical_by="sidecar", **options)
    # The documented fast mode trusts the sidecar (and so keeps the changed byte) only when it
    # equals S3's own full-object SHA-256; a multipart ETag vouches for no file digest.
    assert result["skipped"] is skipped
    assert ((remote_dir / "k").read_bytes() == data) is not skipped
    assert_record(result)


def test_skip_identical_skips_an_unchanged_file_with_the_same_record_keys(s3, bucket, remote_dir):
    data = os.urandom(MiB + 5)
    put_crc32(s3, bucket, "k", data)
    options = {"s3_bucket": bucket, "s3_key": "k", "sftp_path": str(remote_dir / "k"), **FAST}
    delivered = deliver(if_exists="skip_identical", **options)
    skipped = deliver(if_exists="skip_identical", **options)
    assert delivered["skipped"] is False and skipped["skipped"] is True
    assert set(skipped) == set(delivered)
    assert_record(delivered)
    assert_record(skipped)
    assert skipped["checksum"] == delivered["checksum"] == f"sha256:{sha256(data)}"
    assert (skipped["sidecar_path"], skipped["done_marker_path"], skipped["resumed_from"]) == (None, None, 0)
    assert (remote_dir / "k").read_bytes() == data


def test_many_object_records_carry_every_key(s3, bucket, remote_dir):
    put_all(s3, bucket, ["in/a.bin", "in/b.bin"])
    deliver(s3_bucket=bucket, s3_key="in/a.bin", sftp_path=f"{remote_dir}/")
    summary = deliver(
        s3_bucket=bucket,
        s3_prefix="in/",
        sftp_path=f"{remote_dir}/",
        if_exists="skip_identical",
        report=f"s3://{bucket}/reports/records.jsonl",
    )
    assert (summary["transferred"], summary["skipped"]) == (1, 1)
    records = read_report(s3, bucket, "reports/records.jsonl")
    assert sorted(record["skipped"] for record in records) == [False, True]
    for record in records:
        assert_record(record)


# --- done when: one cut at any byte, in every mode -------------------------------------------------------


SIZE = 2 * MiB + 7

MODES = {
    "default": {},
    "checksum-none": {"checksum": None},
    "verify-checksum": {"verify": "checksum"},
    "parallel-parts": {"tuning": {"parallel_parts": 2, "part_size": 512 * 1024}},
    "atomic-false": {"atomic": False},
    "sidecar-and-marker": {"sidecar": True, "done_marker": ".done"},
}


def holds_all_bytes(directory: Path) -> Callable[[], bool]:
    """True once some file in ``directory`` (the temp file, or the final one) has all SIZE bytes."""

    def check() -> bool:
        for path in directory.iterdir():
            try:
                if path.stat().st_size == SIZE:
                    return True
            except FileNotFoundError:
                continue
        return False

    return check


def final_published(path: Path) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return path.stat().st_size == SIZE
        except FileNotFoundError:
            return False

    return check


# How to cut, by name: byte offsets for the early cuts (measured with OpenSSH 9.2 and paramiko: key
# exchange and login end at ~1.4 KB upstream, the SFTP session is open at ~1.5 KB, and the first
# write request is far larger than 6000 bytes), the server's files for the late ones.
CUTS: dict[str, Callable[[int, Path], FaultyProxy]] = {
    # After key exchange and login, while the SFTP subsystem is being opened.
    "just-after-handshake": lambda port, d: FaultyProxy(port, after=1450, direction="up"),
    # The SFTP session is open (~1.5 KB); the delivery's first requests (stat, open...) are cut.
    "first-requests": lambda port, d: FaultyProxy(port, after=1600, direction="up"),
    "no-data-landed-yet": lambda port, d: FaultyProxy(port, after=6000, direction="up"),
    "mid-object": lambda port, d: FaultyProxy(port, after=SIZE // 2, direction="up"),
    "all-data-landed-before-verify": lambda port, d: CutWhen(port, when=holds_all_bytes(d), direction="up"),
    "reply-to-publish-lost": lambda port, d: CutWhen(port, when=final_published(d / "k"), direction="down"),
    # Only where requests must follow the publish (the sidecar and the marker).
    "after-publish-before-sidecar": lambda port, d: CutWhen(
        port, when=final_published(d / "k"), direction="up"
    ),
}
CASES = [
    pytest.param(mode, cut, id=f"{mode}-{cut}")
    for mode in MODES
    for cut in CUTS
    if cut != "after-publish-before-sidecar" or MODES[mode].get("sidecar")
]


@pytest.mark.parametrize(("mode", "cut"), CASES)
def test_one_cut_at_any_byte_recovers_byte_identical_in_every_mode(
    sshd, s3, bucket, remote_dir, set_connection, mode, cut
):
    data = os.urandom(SIZE)
    put_crc32(s3, bucket, "k", data)
    options = MODES[mode]
    tuning = FAST_RETRY["tuning"] | options.get("tuning", {})
    with CUTS[cut](sshd.port, remote_dir) as proxy:
        result = deliver(
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=str(remote_dir / "k"),
            sftp_conn_id=sftp_through(set_connection, sshd, proxy),
            **(options | {"tuning": tuning}),
        )
    assert proxy.faults == 1, "the cut never fired"
    assert (remote_dir / "k").read_bytes() == data
    sidecar = bool(options.get("sidecar"))
    assert listing(remote_dir) == (["k", "k.done", "k.sha256"] if sidecar else ["k"])
    if sidecar:
        assert (remote_dir / "k.sha256").read_text() == f"{sha256(data)}  k\n"
        assert (remote_dir / "k.done").read_bytes() == b""
    if options.get("checksum", "sha256"):
        assert result["checksum"] == f"sha256:{sha256(data)}"
    # One cut costs at most one reconnect; a cut after the last request may cost none.
    assert result["attempts"] <= 2
    if cut in ("no-data-landed-yet", "mid-object", "all-data-landed-before-verify"):
        assert result["attempts"] == 2
    assert_record(result)
    assert result["sidecar_path"] == (str(remote_dir / "k.sha256") if sidecar else None)
    assert result["done_marker_path"] == (str(remote_dir / "k.done") if sidecar else None)
