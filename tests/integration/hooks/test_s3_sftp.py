"""S3ToSFTPHook and the delivery engine against real servers, with failures injected on purpose."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from boto3.s3.transfer import TransferConfig

from airflow_s3sftp.core.engine import DeliveryOptions, deliver
from airflow_s3sftp.core.integrity import choose_source_check
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.core.paths import temp_path_for
from airflow_s3sftp.exceptions import SourceChangedError, TransferInProgressError, VerificationError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

MiB = 1024 * 1024


class Recording(io.RawIOBase):
    """A file that records the offset of every write; seekable unless told otherwise."""

    def __init__(self, seekable: bool) -> None:
        super().__init__()
        self.buffer = io.BytesIO()
        self._seekable = seekable
        self.offsets: list[int] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        return self.buffer.seek(offset, whence)

    def tell(self) -> int:
        return self.buffer.tell()

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.offsets.append(self.buffer.tell())
        return self.buffer.write(data)


def test_the_race_boto3_writes_parts_out_of_order_into_a_seekable_file(s3, bucket):
    """The bug this package exists for: s3transfer seeks and writes parts in completion order."""
    data = os.urandom(40 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=10)
    seekable = Recording(seekable=True)
    s3.download_fileobj(bucket, "big", seekable, Config=config)
    assert seekable.buffer.getvalue() == data
    assert seekable.offsets != sorted(seekable.offsets), "boto3 happened to write in order this time"

    # The same download into OrderedWriter takes s3transfer's non-seekable path: strictly in order.
    sink = Recording(seekable=False)
    s3.download_fileobj(bucket, "big", OrderedWriter(sink), Config=config)
    assert sink.buffer.getvalue() == data
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


def test_source_failure_mid_stream_leaves_old_version_and_no_temp(remote_dir):
    old, new = b"old complete version\n" * 1000, os.urandom(6 * MiB)
    target = remote_dir / "keep.bin"
    target.write_bytes(old)
    with S3ToSFTPHook().sftp_client() as sftp, pytest.raises(RuntimeError, match="source broke at byte"):
        deliver(
            sftp,
            str(target),
            _open_failing(new, 3 * MiB),
            size=len(new),
            options=DeliveryOptions(chunk_size=MiB),
        )
    assert target.read_bytes() == old
    assert sorted(p.name for p in remote_dir.iterdir()) == ["keep.bin"]


def test_s3_integrity_mismatch_is_caught_before_publish(remote_dir):
    data = os.urandom(MiB)
    check = choose_source_check({"ETag": '"' + "0" * 32 + '"'})  # S3 claims different bytes
    with S3ToSFTPHook().sftp_client() as sftp, pytest.raises(VerificationError, match="corrupted in transit"):
        deliver(
            sftp,
            str(remote_dir / "x"),
            lambda start: io.BytesIO(data[start:]),
            size=len(data),
            options=DeliveryOptions(),
            source_check=check,
        )
    assert list(remote_dir.iterdir()) == []


def test_object_replaced_between_head_and_get_fails_as_source_changed(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"version one")
    hook = S3ToSFTPHook()
    head = hook.head_object(bucket, "k")
    s3.put_object(Bucket=bucket, Key="k", Body=b"version two, longer")
    with hook.sftp_client() as sftp, pytest.raises(SourceChangedError, match=rf"s3://{bucket}/k changed"):
        deliver(
            sftp,
            str(remote_dir / "k"),
            hook._opener(bucket, "k", head),
            size=int(head["ContentLength"]),
            options=DeliveryOptions(),
            is_retryable=lambda err: True,
        )
    assert list(remote_dir.iterdir()) == []


def test_stale_temp_file_from_a_crashed_try_is_taken_over(s3, bucket, remote_dir):
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    stale = remote_dir / ".k.s3sftp-part"
    stale.write_bytes(b"garbage from a killed worker")
    result = S3ToSFTPHook().stream_object(
        bucket, "k", str(remote_dir / "k"), DeliveryOptions(stale_temp_after=0.3)
    )
    assert (remote_dir / "k").read_bytes() == data
    assert result["size"] == len(data)
    assert not stale.exists()


def test_a_transfer_in_progress_is_not_clobbered(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    temp = remote_dir / ".k.s3sftp-part"
    assert temp_path_for(str(remote_dir / "k")) == str(temp)
    stop = threading.Event()

    def other_writer() -> None:
        with temp.open("ab") as f:
            while not stop.is_set():
                f.write(b"x" * 1024)
                f.flush()
                time.sleep(0.02)

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        time.sleep(0.1)
        with pytest.raises(TransferInProgressError, match="Another transfer is writing"):
            S3ToSFTPHook().stream_object(
                bucket, "k", str(remote_dir / "k"), DeliveryOptions(stale_temp_after=0.5)
            )
    finally:
        stop.set()
        thread.join()
    assert temp.exists()
    assert not (remote_dir / "k").exists()


def test_progress_is_logged_with_rate_and_eta_and_a_final_summary(s3, bucket, remote_dir, caplog):
    import logging

    data = os.urandom(8 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    S3ToSFTPHook().stream_object(
        bucket, "k", str(remote_dir / "k"), DeliveryOptions(chunk_size=256 * 1024, progress_interval=0.0)
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
    with hook.sftp_client() as sftp:
        assert sftp.get_channel().get_transport().local_cipher == "aes128-gcm@openssh.com"
    set_connection(
        "sftp_ctr",
        sshd.connection(
            disabled_algorithms={"ciphers": ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]}
        ),
    )
    with S3ToSFTPHook(sftp_conn_id="sftp_ctr").sftp_client() as sftp:
        assert "gcm" not in sftp.get_channel().get_transport().local_cipher


def test_server_without_aes_gcm_falls_back_to_its_ciphers(s3, bucket, set_connection):
    from tests.servers import start_sshd

    server = start_sshd(extra_config=("Ciphers aes128-ctr,aes256-ctr",))
    try:
        set_connection("sftp_no_gcm", server.connection())
        data = os.urandom(MiB)
        s3.put_object(Bucket=bucket, Key="k", Body=data)
        hook = S3ToSFTPHook(sftp_conn_id="sftp_no_gcm")
        started = time.monotonic()
        with hook.sftp_client() as sftp:
            assert sftp.get_channel().get_transport().local_cipher == "aes128-ctr"
        assert time.monotonic() - started < 10  # one refused handshake, not the hook's slow retries
        target = server.root / "k"
        hook.stream_object(bucket, "k", str(target), DeliveryOptions())
        assert target.read_bytes() == data
    finally:
        server.stop()
