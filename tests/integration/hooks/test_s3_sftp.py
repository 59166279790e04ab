"""S3ToSFTPHook and the delivery engine against real servers, with failures injected on purpose."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from boto3.s3.transfer import TransferConfig

from airflow_s3sftp.core.delivery import Delivery, Source
from airflow_s3sftp.core.options import DeliveryOptions, Streaming
from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.exceptions import SourceChangedError, VerificationError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

MiB = 1024 * 1024


class HoldFirstPart:
    """Hold the GET of an object's first part until a later part's bytes reached the sink (or ``limit`` s).

    Registered on the client's public ``before-call`` event, it gives the download every chance to
    write out of order: on s3transfer's seekable path a later part lands first; through
    :class:`OrderedWriter` nothing may reach the sink before byte 0, so the hold runs out.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.later_part_written = threading.Event()
        self.held = threading.Event()

    def __call__(self, params, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if str(params.get("headers", {}).get("Range", "")).startswith("bytes=0-"):
            self.held.set()
            self.later_part_written.wait(self.limit)


class Recording(io.RawIOBase):
    """A seekable file that records every write as (offset, length) and tells ``gate`` of a write past 0."""

    def __init__(self, gate: HoldFirstPart) -> None:
        super().__init__()
        self.buffer = io.BytesIO()
        self.gate = gate
        self.writes: list[tuple[int, int]] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.buffer.seek(offset, whence)

    def tell(self) -> int:
        return self.buffer.tell()

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.writes.append((self.buffer.tell(), len(data)))
        if self.writes[0][0] > 0:
            self.gate.later_part_written.set()
        return self.buffer.write(data)


@pytest.mark.parametrize("ordered", [False, True], ids=["plain-seekable-file", "ordered-writer"])
def test_the_race_boto3_writes_parts_out_of_order_into_a_seekable_file_but_in_order_into_ours(
    s3, bucket, ordered
):
    """The bug this package exists for, made to happen: the first part's GET is held back.

    Into a plain seekable file, s3transfer writes a later part first (completion order becomes
    file order). The same seekable file behind :class:`OrderedWriter` receives byte 0 first and
    every write where the one before ended, although the first part is still the slowest.
    """
    data = os.urandom(20 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    gate = HoldFirstPart(limit=2.0)
    s3.meta.events.register("before-call.s3.GetObject", gate)  # the fixture's client is this test's own
    sink = Recording(gate)
    s3.download_fileobj(bucket, "big", OrderedWriter(sink) if ordered else sink, Config=config)
    assert sink.buffer.getvalue() == data
    assert gate.held.is_set(), "no ranged GET of the first part: nothing was held back"
    if ordered:
        assert not gate.later_part_written.is_set()
        ends = [offset + length for offset, length in sink.writes]
        assert [offset for offset, _ in sink.writes] == [0, *ends[:-1]], "a write not at the end of the last"
    else:
        assert sink.writes[0][0] > 0, "s3transfer wrote the first part first: the race did not show"


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
        _deliver(
            target, _open_failing(new, 3 * MiB), len(new), DeliveryOptions.build(tuning={"chunk_size": MiB})
        )
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
            bucket, "k", str(remote_dir / "k"), DeliveryOptions.build(tuning={"stale_temp_after": 2})
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
        DeliveryOptions.build(tuning={"chunk_size": 256 * 1024, "progress_interval": 0.0}),
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
        DeliveryOptions.build(tuning={"progress_interval": 0.0}),
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


def test_the_s3_request_strategy_is_asked_for_not_guessed_from_a_session_pool(s3, bucket, remote_dir):
    """One object: HEAD then GET, with or without a pool; ``describe_with="get"`` (the batch's choice): one GET."""
    data = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="a", Body=data)
    hook = S3ToSFTPHook()
    calls = _count_s3_calls(hook)
    hook.stream_object(bucket, "a", str(remote_dir / "alone"))
    assert calls == ["HeadObject", "GetObject"]
    calls.clear()
    with hook.session_pool(1) as pool:
        hook.stream_object(bucket, "a", str(remote_dir / "pooled"), sessions=pool)
        assert calls == ["HeadObject", "GetObject"], "a pool does not change how S3 is asked"
        calls.clear()
        hook.stream_object(bucket, "a", str(remote_dir / "one-get"), sessions=pool, describe_with="get")
        assert calls == ["GetObject"]
    for name in ("alone", "pooled", "one-get"):
        assert (remote_dir / name).read_bytes() == data
    with pytest.raises(ValueError, match="describe_with must be 'head' or 'get', got 'list'"):
        hook.stream_object(bucket, "a", str(remote_dir / "x"), describe_with="list")  # type: ignore[arg-type]


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


# -- S3 reads go through the S3 hook's client and parameters ---------------------------------------
# moto 5.2.5 neither refuses a requester-pays read without the header nor refuses an SSE-C object's
# read without its key; so these tests watch the requests our client really sends, on botocore's
# public ``before-send`` event (the HTTP request as it goes on the wire), and the bytes that land.


class Wire:
    """Every request the hook's own S3 client sends: operation, URL and headers, as they leave."""

    def __init__(self, hook: S3ToSFTPHook) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        hook.s3_client.meta.events.register("before-send.s3", self, unique_id="s3sftp-wire")

    def __call__(self, request, event_name, **kwargs):  # type: ignore[no-untyped-def]
        headers = {
            name.lower(): value.decode() if isinstance(value, bytes) else str(value)
            for name, value in request.headers.items()
        }
        self.requests.append((event_name.rsplit(".", 1)[-1], request.url, headers))

    def reads(self) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if r[0] in ("HeadObject", "GetObject")]


def _aws(moto, **extra):  # type: ignore[no-untyped-def]
    conn = moto.connection()
    return conn | {"extra": {**conn["extra"], **extra}}


def _deliver_every_way(hook, bucket, remote_dir, small, large):  # type: ignore[no-untyped-def]
    """One object alone (HEAD, then GET), many (GET first, a large one read again), ranged parts."""
    parts = DeliveryOptions(streaming=Streaming(parallel_parts=2, part_size=4 * MiB))
    hook.stream_object(bucket, "large", str(remote_dir / "alone"), parts)
    records = hook.stream_objects(
        [(bucket, "small", str(remote_dir / "small")), (bucket, "large", str(remote_dir / "large"))]
    )
    assert all("error" not in record for record in records), records
    assert (remote_dir / "alone").read_bytes() == large
    assert (remote_dir / "large").read_bytes() == large
    assert (remote_dir / "small").read_bytes() == small
    return records


@pytest.mark.parametrize("given_by", ["hook-argument", "connection-extra"])
def test_requester_pays_goes_on_every_head_get_ranged_get_and_list(
    s3, bucket, remote_dir, moto, set_connection, given_by
):
    s3.put_bucket_request_payment(Bucket=bucket, RequestPaymentConfiguration={"Payer": "Requester"})
    small, large = os.urandom(64 * 1024), os.urandom(10 * MiB)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="large", Body=large)
    if given_by == "hook-argument":
        hook = S3ToSFTPHook(requester_pays=True)
    else:
        set_connection("aws_payer", _aws(moto, service_config={"s3": {"requester_pays": True}}))
        hook = S3ToSFTPHook(aws_conn_id="aws_payer")
    wire = Wire(hook)
    _deliver_every_way(hook, bucket, remote_dir, small, large)
    assert hook.list_keys(bucket, "") == ["large", "small"]
    operations = {op for op, _, _ in wire.requests}
    assert {"HeadObject", "GetObject", "ListObjectsV2"} <= operations
    assert any("range" in headers for op, _, headers in wire.requests if op == "GetObject"), "no ranged GET"
    missing = [
        (op, url) for op, url, headers in wire.requests if headers.get("x-amz-request-payer") != "requester"
    ]
    assert missing == []


def test_without_requester_pays_no_read_says_it_pays(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    hook = S3ToSFTPHook()
    wire = Wire(hook)
    hook.stream_object(bucket, "k", str(remote_dir / "k"))
    assert wire.reads() and all("x-amz-request-payer" not in headers for _, _, headers in wire.reads())


def test_an_sse_c_object_is_delivered_with_the_customer_key_on_every_read(
    s3, bucket, remote_dir, moto, set_connection, caplog
):
    import base64
    import hashlib
    import logging

    key = "s3sftp-customer-key-0123456789ab"  # 32 bytes: AES-256
    sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
    small, large = os.urandom(64 * 1024), os.urandom(10 * MiB)
    s3.put_object(Bucket=bucket, Key="small", Body=small, **sse)
    s3.put_object(Bucket=bucket, Key="large", Body=large, **sse)
    # Upload arguments beside the key (as S3Hook's extra_args may hold) do not go on reads.
    extra_args = {**sse, "ServerSideEncryption": "AES256"}
    set_connection("aws_ssec", _aws(moto, service_config={"s3": {"extra_args": extra_args}}))
    hook = S3ToSFTPHook(aws_conn_id="aws_ssec")
    wire = Wire(hook)
    caplog.set_level(logging.DEBUG, logger="airflow_s3sftp")
    records = _deliver_every_way(hook, bucket, remote_dir, small, large)
    expected = {
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-amz-server-side-encryption-customer-key": base64.b64encode(key.encode()).decode(),
        "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(
            hashlib.md5(key.encode()).digest()
        ).decode(),
    }
    reads = wire.reads()
    assert {op for op, _, _ in reads} == {"HeadObject", "GetObject"}
    assert any("range" in headers for _, _, headers in reads), "no ranged GET"
    for op, url, headers in reads:
        assert {name: headers.get(name) for name in expected} == expected, (op, url)
        assert "x-amz-server-side-encryption" not in headers, "an upload argument went on a read"
    assert key not in caplog.text and key not in repr(records)


def test_bad_s3_settings_in_the_connection_name_it(moto, set_connection):
    from airflow_s3sftp.exceptions import ConnectionConfigError

    set_connection("aws_bad_s3", _aws(moto, service_config={"s3": {"extra_args": "AES256"}}))
    with pytest.raises(ConnectionConfigError, match=r"'aws_bad_s3': service_config.s3.extra_args must be"):
        S3ToSFTPHook(aws_conn_id="aws_bad_s3").s3_hook  # noqa: B018
    with pytest.raises(TypeError, match="requester_pays must be True, False or None"):
        S3ToSFTPHook(requester_pays="yes")  # type: ignore[arg-type]


def test_config_kwargs_of_the_connection_shape_every_request(s3, bucket, remote_dir, moto, set_connection):
    small, large = os.urandom(64 * 1024), os.urandom(10 * MiB)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="large", Body=large)
    config = {"user_agent_extra": "s3sftp-probe/7", "s3": {"addressing_style": "path"}}
    set_connection("aws_config", _aws(moto, config_kwargs=config))
    hook = S3ToSFTPHook(aws_conn_id="aws_config")
    wire = Wire(hook)
    _deliver_every_way(hook, bucket, remote_dir, small, large)
    assert len(wire.reads()) >= 5
    for op, url, headers in wire.requests:
        assert "s3sftp-probe/7" in headers["user-agent"], op
        assert url.startswith(f"{moto.endpoint_url}/{bucket}/"), url  # path-style addressing
    # botocore's second hash of every GET stays off, unless config_kwargs chose otherwise.
    assert hook.s3_client.meta.config.response_checksum_validation == "when_required"
    set_connection(
        "aws_validate", _aws(moto, config_kwargs={"response_checksum_validation": "when_supported"})
    )
    chosen = S3ToSFTPHook(aws_conn_id="aws_validate").s3_client.meta.config
    assert chosen.response_checksum_validation == "when_supported"
