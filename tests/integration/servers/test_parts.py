# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Several channels per object on every real server: parts in order, joined by the server, or one channel."""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.core.parts import Striping
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
from tests.faults import FaultyProxy
from tests.integration.cut_proxy import CutWhen
from tests.integration.servers.conftest import MatrixServer, conn_id

MiB = 1024 * 1024
OURS = re.compile(r"^\..*\.s3sftp-(part|old|stripe)$")  # temp, backup and part files (not the journal)
STRIPING = Striping(channels=4, stripe_size=MiB)


def options(**tuning: Any) -> DeliveryOptions:
    common = {"channels": 4, "stripe_size": MiB, "chunk_size": 256 * 1024, "connection_retry_delay": 0.1}
    return DeliveryOptions.build(tuning=common | tuning)


def lane_contents(data: bytes, striping: Striping) -> list[bytes]:
    """What each part file holds once complete: its stripes, in order."""
    lanes = [bytearray() for _ in range(striping.channels)]
    for lane, _, length, at in striping.pieces(len(data)):
        lanes[lane] += data[at : at + length]
    return [bytes(lane) for lane in lanes]


class OrderObserver(threading.Thread):
    """Read every hidden file of ours in ``directory`` while the delivery runs.

    Each must always be a prefix of what it will hold: the temp file a prefix of the object, a part
    file a prefix of one lane's stripes. A write below a file's end or a hole shows as a mismatch.
    """

    def __init__(self, directory: Path, data: bytes, striping: Striping) -> None:
        super().__init__(daemon=True)
        self.directory, self.data = directory, data
        self.expected = [data, *lane_contents(data, striping)]
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.looks = 0
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.looks += 1
            for path in self.directory.iterdir():
                if not OURS.match(path.name):
                    continue
                try:
                    content = path.read_bytes()
                except FileNotFoundError:
                    continue
                if not content:
                    continue
                self.seen.add(path.name)
                if not any(whole.startswith(content) for whole in self.expected):
                    self.violations.append(
                        f"{path.name}: {len(content)} bytes, not a prefix of what it will hold"
                    )

    def __enter__(self) -> OrderObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def supports_copy_data(server: MatrixServer) -> bool:
    from airflow_s3sftp.core.servers import detect_server

    client, sftp = server.connect()
    try:
        return detect_server(sftp).copy_data
    finally:
        client.close()


def test_parts_land_in_order_and_join_exactly_or_one_channel_is_used(
    sftp_server: MatrixServer, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(9 * MiB + 12345)  # 10 stripes over 4 channels: uneven parts, a short last stripe
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    local = sftp_server.new_dir()
    hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=conn_id(sftp_server))
    with caplog.at_level(logging.INFO), OrderObserver(local, data, STRIPING) as observer:
        record = hook.stream_object(bucket, "big", sftp_server.remote(local / "big.bin"), options())
    assert (local / "big.bin").read_bytes() == data
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]  # parts and temp file gone
    assert record["checksum"] == "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    assert observer.looks > 1 and not observer.violations, observer.violations
    if supports_copy_data(sftp_server):
        assert "over 4 SFTP channels" in caplog.text
        assert len(observer.seen) >= 2, f"the observer saw too few part files: {observer.seen}"
    else:
        assert "offers no copy-data extension" in caplog.text
        assert "over 4 SFTP channels" not in caplog.text


# The servers that offer copy-data (OpenSSH's sftp-server, asyncssh); the others run the fallback above.
JOINING = pytest.mark.parametrize("sftp_server", ["openssh", "asyncssh"], indirect=True)


@pytest.fixture
def openssh(sftp_server: MatrixServer) -> MatrixServer:
    assert supports_copy_data(sftp_server), f"{sftp_server.name} no longer offers copy-data"
    return sftp_server


def through(server: MatrixServer, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch) -> str:
    from tests.servers import conn_env

    name, value = conn_env("sftp_parts_proxy", server.conn | {"port": proxy.port})
    monkeypatch.setenv(name, value)
    return "sftp_parts_proxy"


@JOINING
@pytest.mark.parametrize("cut_after", [300 * 1024, 4 * MiB, 9 * MiB])
def test_a_cut_in_any_part_recovers_exactly_and_leaves_nothing(
    openssh: MatrixServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch, cut_after: int
) -> None:
    data = os.urandom(9 * MiB + 777)
    s3.put_object(Bucket=bucket, Key="cut", Body=data)
    local = openssh.new_dir()
    with FaultyProxy(openssh.port, after=cut_after, direction="up") as proxy:
        hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=through(openssh, proxy, monkeypatch))
        record = hook.stream_object(bucket, "cut", openssh.remote(local / "cut.bin"), options())
    assert proxy.faults == 1
    assert record["attempts"] == 2
    assert (local / "cut.bin").read_bytes() == data
    assert sorted(p.name for p in local.iterdir()) == ["cut.bin"]


@JOINING
def test_a_cut_during_the_join_recovers_exactly(
    openssh: MatrixServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(9 * MiB + 3)
    s3.put_object(Bucket=bucket, Key="join", Body=data)
    local = openssh.new_dir()

    lane_sizes = sorted(len(x) for x in lane_contents(data, STRIPING))

    def joined_into_the_temp_file() -> bool:
        """True once the parts are complete and the temp file (the odd one out) received bytes."""
        sizes = sorted(p.stat().st_size for p in local.iterdir() if OURS.match(p.name))
        for index, size in enumerate(sizes):
            if size > 0 and sizes[:index] + sizes[index + 1 :] == lane_sizes:
                return True
        return False

    # The first request after the server began joining: the join's tail (closes, fsync, stat).
    with CutWhen(openssh.port, when=joined_into_the_temp_file, direction="up") as proxy:
        hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=through(openssh, proxy, monkeypatch))
        record = hook.stream_object(bucket, "join", openssh.remote(local / "join.bin"), options())
    assert (local / "join.bin").read_bytes() == data
    assert sorted(p.name for p in local.iterdir()) == ["join.bin"]
    assert proxy.faults == 1
    assert record["attempts"] == 2


@JOINING
def test_every_connection_cut_leaves_no_part_and_no_temp_file(
    openssh: MatrixServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="never", Body=data)
    local = openssh.new_dir()
    with FaultyProxy(openssh.port, after=3 * MiB, direction="up", faulty=99) as proxy:
        hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=through(openssh, proxy, monkeypatch))
        with pytest.raises(Exception, match="Giving up"):
            hook.stream_object(
                bucket, "never", openssh.remote(local / "never.bin"), options(connection_retries=1)
            )
    assert proxy.faults >= 2
    assert list(local.iterdir()) == []


class RoundTrips:
    """Count, per SFTP channel, the requests that left while nothing of that channel was in flight.

    Such a request waited for the answer to the one before it: it starts a round trip of its own. A
    request sent behind others still outstanding rides on their round trip. Channels are counted
    apart: the lanes run side by side, so the delivery waits for the slowest of them, not their sum.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import paramiko

        self.per_channel: dict[int, list[str]] = {}
        send = paramiko.SFTPClient._async_request  # type: ignore[attr-defined]
        lock = threading.Lock()

        def counted(client: Any, owner: Any, kind: int, *args: Any) -> Any:
            from paramiko.sftp import CMD_EXTENDED, CMD_NAMES

            name = str(args[0]) if kind == CMD_EXTENDED else CMD_NAMES.get(kind, str(kind))
            with lock:
                trace = self.per_channel.setdefault(id(client), [])
                trace.append(("+" if not client._expecting else "") + name)
            return send(client, owner, kind, *args)

        monkeypatch.setattr(paramiko.SFTPClient, "_async_request", counted)

    def counts(self) -> list[int]:
        """Return the round trips of each channel, in the order the channels were first used.

        The copies of the join are left out: sent while the data still flows, as stripes complete,
        they overlap it; the last of them ride with the join's CLOSEs, counted as one trip.
        """
        out = []
        for trace in self.per_channel.values():
            copies = any(step.endswith("copy-data") for step in trace)
            trips = sum(step.startswith("+") and not step.endswith("copy-data") for step in trace)
            out.append(trips + copies)
        return out


@JOINING
def test_a_striped_delivery_costs_a_few_sequential_round_trips_more_than_one_channel(
    openssh: MatrixServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set-up and clean-up go pipelined: the parts' OPENs, the join's OPENs and CLOSEs, the REMOVEs."""
    data = os.urandom(9 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="trips", Body=data)
    local = openssh.new_dir()
    counts = {}
    for channels in (1, 4):
        trips = RoundTrips(monkeypatch)
        hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=conn_id(openssh))
        path = local / f"trips-{channels}.bin"
        hook.stream_object(bucket, "trips", openssh.remote(path), options(channels=channels))
        assert path.read_bytes() == data
        counts[channels] = trips.counts()
    # The journal's channel comes last in both (it opens when the journal is first written).
    (single, _), (main, *lanes, _) = counts[1], counts[4]
    assert len(lanes) == 4, counts
    # Striped, on the delivery's channel: + statvfs, + the join's OPENs (all at once), + the last
    # copies with the CLOSEs behind them, + the part files' REMOVEs (all at once). Before: one OPEN,
    # one CLOSE and one REMOVE per part, each waited for, and two more to log the round trip (+17).
    assert main <= single + 4, counts
    # Each lane: its part file's OPEN, then its writes with the tail behind them (STAT, CLOSE).
    assert all(lane <= 2 for lane in lanes), counts


@JOINING
def test_one_small_delivery_waits_for_five_sequential_round_trips(
    openssh: MatrixServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: nine (the write-size probe, STAT + OPEN, FSETSTAT + FSTAT, the sweep's four, tail, publish).

    Now the write-size probe is answered while the server's profile is probed on its own channel,
    the new file's STAT (the sweep's clock) rides with the OPEN, the sweep's READDIRs go together
    and its CLOSE rides with the tail: STAT + OPEN + STAT, FSETSTAT + OPENDIR, the READDIRs, the tail,
    the publish.
    """
    data = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="small", Body=data)
    local = openssh.new_dir()
    trips = RoundTrips(monkeypatch)
    hook = S3ToSFTPHook(aws_conn_id="aws_default", sftp_conn_id=conn_id(openssh))
    hook.stream_object(bucket, "small", openssh.remote(local / "small.bin"), options(channels=None))
    assert (local / "small.bin").read_bytes() == data
    (main,) = trips.per_channel.values()
    waited = [step for step in main if step.startswith("+")]
    # limits@openssh.com leaves first, alone; its answer is read only after the probe of the server.
    assert waited[0] == "+limits@openssh.com", main
    assert len(waited) <= 1 + 5, main
    assert "fstat" not in main, main
