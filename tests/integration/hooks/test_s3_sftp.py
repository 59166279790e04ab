"""S3ToSFTPHook and the delivery engine against real servers, with failures injected on purpose."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from boto3.s3.transfer import TransferConfig

from airflow_s3sftp.core.delivery import Delivery, Source
from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.exceptions import SourceChangedError, VerificationError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

MiB = 1024 * 1024


class Recording(io.RawIOBase):
    """A file that records the offset of every write; seekable unless told otherwise."""

    def __init__(self, seekable: bool) -> None:
        super().__init__()
        self.buffer = io.BytesIO()
        self._seekable = seekable
        self.offsets: list[int] = []
        self.seeks: list[int] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        self.seeks.append(offset)
        return self.buffer.seek(offset, whence)

    def tell(self) -> int:
        return self.buffer.tell()

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.offsets.append(self.buffer.tell())
        return self.buffer.write(data)


def test_the_race_boto3_seeks_into_a_seekable_file_and_writes_in_order_into_ours(s3, bucket):
    """The bug this package exists for: s3transfer seeks and writes parts in completion order.

    Whether the parts complete out of order on a given run is the thread scheduler's choice, so
    what is asserted is the path taken: a seek before every part's write into a seekable file
    (the path on which completion order becomes file order), strictly sequential writes into ours.
    """
    data = os.urandom(40 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=10)
    seekable = Recording(seekable=True)
    s3.download_fileobj(bucket, "big", seekable, Config=config)
    assert seekable.buffer.getvalue() == data
    part_starts = set(range(0, len(data), 5 * MiB))
    assert part_starts <= set(seekable.seeks), "s3transfer did not seek to every part"

    # The same download into OrderedWriter takes s3transfer's non-seekable path: strictly in order.
    sink = Recording(seekable=False)
    s3.download_fileobj(bucket, "big", OrderedWriter(sink), Config=config)
    assert sink.buffer.getvalue() == data
    assert sink.seeks == []
    assert sink.offsets == sorted(sink.offsets)
    assert sink.offsets[0] == 0


def test_compression_is_off_unless_the_connection_asks(sshd, set_connection):
    assert S3ToSFTPHook().sftp_hook.compress is False
    set_connection("sftp_zlib", sshd.connection(compress="true"))
    assert S3ToSFTPHook(sftp_conn_id="sftp_zlib").sftp_hook.compress is True


def _open_failing(data: bytes, fail_at: int):  # type: ignore[no-untyped-def]
    class Failing(io.BytesIO):
        def read(self, amt=-1):  # type: ignore[no-untyped-def]
            if self.tell() >= fail_at:
                raise RuntimeError(f"source broke at byte {self.tell()}")
            return super().read(min(amt, fail_at - self.tell()) if amt and amt > 0 else fail_at - self.tell())

    return lambda start: Failing(data[start:])


def _deliver(path, open_source, size, options=None, head=None, is_retryable=lambda err: False):  # type: ignore[no-untyped-def]
    source = Source(
        uri="s3://test/x", size=size, open=open_source, head=head or {}, is_retryable=is_retryable
    )
    with S3ToSFTPHook().session_pool(1) as pool:
        return Delivery(source, str(path), options or DeliveryOptions(), pool).run()


def test_source_failure_mid_stream_leaves_old_version_and_no_temp(remote_dir):
    old, new = b"old complete version\n" * 1000, os.urandom(6 * MiB)
    target = remote_dir / "keep.bin"
    target.write_bytes(old)
    with pytest.raises(RuntimeError, match="source broke at byte"):
        _deliver(target, _open_failing(new, 3 * MiB), len(new), DeliveryOptions.from_flat(chunk_size=MiB))
    assert target.read_bytes() == old
    assert sorted(p.name for p in remote_dir.iterdir()) == ["keep.bin"]


def test_s3_integrity_mismatch_is_caught_before_publish(remote_dir):
    data = os.urandom(MiB)
    head = {"ETag": '"' + "0" * 32 + '"'}  # S3 claims different bytes
    with pytest.raises(VerificationError, match="corrupted in transit"):
        _deliver(remote_dir / "x", lambda start, end=None: io.BytesIO(data[start:]), len(data), head=head)
    assert list(remote_dir.iterdir()) == []


def test_object_replaced_between_head_and_get_fails_as_source_changed(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"version one")
    hook = S3ToSFTPHook()
    source = hook.source(bucket, "k")
    s3.put_object(Bucket=bucket, Key="k", Body=b"version two, longer")
    with hook.session_pool(1) as pool, pytest.raises(SourceChangedError, match=rf"s3://{bucket}/k changed"):
        Delivery(source, str(remote_dir / "k"), DeliveryOptions(), pool).run()
    assert list(remote_dir.iterdir()) == []


def test_abandoned_temp_files_of_the_same_name_are_removed_and_nothing_else(s3, bucket, remote_dir):
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    two_days_ago = time.time() - 2 * 86400
    abandoned = remote_dir / ".k.0123456789ab.s3sftp-part"
    fresh = remote_dir / ".k.0123456789ac.s3sftp-part"  # another delivery's, being written right now
    other_name = remote_dir / ".j.0123456789ab.s3sftp-part"  # belongs to another final name
    old_shape = remote_dir / ".k.s3sftp-part"  # not provably ours
    for path in (abandoned, fresh, other_name, old_shape):
        path.write_bytes(b"garbage from a killed worker")
    for path in (abandoned, other_name, old_shape):
        os.utime(path, (two_days_ago, two_days_ago))
    result = S3ToSFTPHook().stream_object(bucket, "k", str(remote_dir / "k"), DeliveryOptions())
    assert (remote_dir / "k").read_bytes() == data
    assert result["size"] == len(data)
    assert not abandoned.exists()
    assert fresh.exists() and other_name.exists() and old_shape.exists()


def test_a_transfer_in_progress_is_never_touched(s3, bucket, remote_dir):
    """Another delivery's temp file (its own unique name) is left alone; both can publish."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    temp = remote_dir / ".k.0123456789ab.s3sftp-part"
    # An abandoned one beside it proves the sweep looked at this directory.
    abandoned = remote_dir / ".k.ba9876543210.s3sftp-part"
    abandoned.write_bytes(b"left by a crashed worker")
    os.utime(abandoned, (time.time() - 3600, time.time() - 3600))
    stop, writing = threading.Event(), threading.Event()

    def other_writer() -> None:
        with temp.open("ab") as f:
            while not stop.is_set():
                f.write(b"x" * 1024)
                f.flush()
                writing.set()
                stop.wait(0.02)  # a slow writer: its mtime stays fresh

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        assert writing.wait(10)
        # SFTP v3 mtimes are whole seconds: a file touched 20 ms ago can look up to 1 s older, so
        # the threshold stays above that (0.5 s took a live file in about 2 % of runs).
        result = S3ToSFTPHook().stream_object(
            bucket, "k", str(remote_dir / "k"), DeliveryOptions.from_flat(stale_temp_after=2)
        )
    finally:
        stop.set()
        thread.join()
    assert not abandoned.exists()
    assert temp.exists()
    assert (remote_dir / "k").read_bytes() == b"data"
    assert result["published_with"] == "posix-rename"


def test_progress_is_logged_with_rate_and_eta_and_a_final_summary(s3, bucket, remote_dir, caplog):
    import logging

    data = os.urandom(8 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    S3ToSFTPHook().stream_object(
        bucket,
        "k",
        str(remote_dir / "k"),
        DeliveryOptions.from_flat(chunk_size=256 * 1024, progress_interval=0.0),
    )
    progress = [r.getMessage() for r in caplog.records if "%)" in r.getMessage() and "ETA" in r.getMessage()]
    assert progress, caplog.text
    assert all(" MB/s" in line and "of 8388608 bytes" in line for line in progress)
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Delivered 8388608 bytes")]
    assert len(summary) == 1
    assert "checksum sha256:" in summary[0]
    assert "MB/s" in summary[0]


def test_aes_gcm_is_negotiated_unless_the_connection_chooses(sshd, set_connection):
    hook = S3ToSFTPHook()
    session = hook.connect_session()
    try:
        assert session.sftp.get_channel().get_transport().local_cipher == "aes128-gcm@openssh.com"
    finally:
        session.close()
    set_connection(
        "sftp_ctr",
        sshd.connection(
            disabled_algorithms={"ciphers": ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]}
        ),
    )
    session = S3ToSFTPHook(sftp_conn_id="sftp_ctr").connect_session()
    try:
        assert "gcm" not in session.sftp.get_channel().get_transport().local_cipher
    finally:
        session.close()


def test_server_without_aes_gcm_falls_back_to_its_ciphers(s3, bucket, set_connection):
    from testservers.processes import start_sshd

    server = start_sshd(extra_config=("Ciphers aes128-ctr,aes256-ctr",))
    try:
        set_connection("sftp_no_gcm", server.connection())
        data = os.urandom(MiB)
        s3.put_object(Bucket=bucket, Key="k", Body=data)
        hook = S3ToSFTPHook(sftp_conn_id="sftp_no_gcm")
        started = time.monotonic()
        session = hook.connect_session()
        try:
            assert session.sftp.get_channel().get_transport().local_cipher == "aes128-ctr"
        finally:
            session.close()
        assert time.monotonic() - started < 10  # one refused handshake, not the hook's slow retries
        target = server.root / "k"
        hook.stream_object(bucket, "k", str(target), DeliveryOptions())
        assert target.read_bytes() == data
    finally:
        server.stop()


def test_the_connections_ciphers_apply_to_the_first_handshake(sshd, set_connection):
    """SSHHook sets ``ciphers`` only after connecting; the bulk session honours them from the start."""
    set_connection("sftp_ciphers", sshd.connection(ciphers=["aes192-ctr"]))
    session = S3ToSFTPHook(sftp_conn_id="sftp_ciphers").connect_session()
    try:
        assert session.sftp.get_channel().get_transport().local_cipher == "aes192-ctr"
    finally:
        session.close()


def _count_s3_calls(hook: S3ToSFTPHook) -> list[str]:
    calls: list[str] = []
    hook.s3_client.meta.events.register(
        "before-call.s3", lambda model, **kwargs: calls.append(model.name), unique_id="count-s3-calls"
    )
    return calls


def test_many_objects_cost_one_get_each_small_and_large_alike(s3, bucket, remote_dir, caplog):
    import logging

    small, large = os.urandom(64 * 1024), os.urandom(9 * MiB)  # the large one is read again, pinned
    s3.put_object(Bucket=bucket, Key="a", Body=small, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=bucket, Key="b", Body=large)
    hook = S3ToSFTPHook()
    calls = _count_s3_calls(hook)
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    records = hook.stream_objects(
        [(bucket, "a", str(remote_dir / "a")), (bucket, "b", str(remote_dir / "b"))],
        DeliveryOptions.from_flat(progress_interval=0.0),
        max_concurrency=1,
    )
    assert (remote_dir / "a").read_bytes() == small
    assert (remote_dir / "b").read_bytes() == large
    assert calls == ["GetObject", "GetObject", "GetObject"], (
        "no HEAD; the large object's body is fetched again"
    )
    assert [r["source_check"] for r in records] == ["S3 ChecksumSHA256", "S3 ChecksumCRC32"]  # boto3 default
    assert all(r["verified"] == "size" and r["checksum"].startswith("sha256:") for r in records)
    progress = [r.getMessage() for r in caplog.records if " objects done (" in r.getMessage()]
    assert progress == [progress[0]] and progress[0].startswith("1 of 2 objects done (0 failed), 65536 bytes")
    assert sorted(p.name for p in remote_dir.iterdir()) == ["a", "b"]


def test_many_objects_name_a_missing_bucket_or_key(s3, bucket, remote_dir):
    records = S3ToSFTPHook().stream_objects(
        [("no-such-bucket-s3sftp", "a", str(remote_dir / "a")), (bucket, "missing", str(remote_dir / "m"))],
        DeliveryOptions(),
    )
    assert [r["error"] for r in records] == [
        "MissingTargetError: S3 bucket 'no-such-bucket-s3sftp' does not exist (reading s3://no-such-bucket-s3sftp/a)",
        f"FileNotFoundError: S3 object s3://{bucket}/missing does not exist",
    ]
    assert list(remote_dir.iterdir()) == []
