# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Edges on a real OpenSSH server and moto: prefixes, plan clashes, sweeps, claims, reconnects, arguments."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import hashlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.core import poll, stability
from airflow_s3sftp.core.paths import temp_path_for
from airflow_s3sftp.core.sftp import create_private
from airflow_s3sftp.exceptions import HostKeyVerificationError
from airflow_s3sftp.hooks.sftp_sensing import SFTPSensingHook
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.triggers.sftp import SFTPFileStableEventTrigger, SFTPFileStableTrigger
from tests.faults import FaultyProxy
from tests.integration.cut_proxy import CutWhen
from tests.servers import SSHDServer

MiB = 1024 * 1024
NO_CONTEXT: Any = {}
OLD = int(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).timestamp())


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def run(**kwargs: Any) -> dict[str, Any]:
    return S3ToSFTPStreamOperator(task_id="deliver", **kwargs).execute(context=NO_CONTEXT)  # type: ignore[no-any-return]


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


# -- s3_prefix never cuts a key segment in two ---------------------------------------------------


@pytest.mark.parametrize("prefix", ["px/day-1", "px/day-1/"])
def test_a_prefix_is_a_directory_whichever_way_it_is_spelt(s3, bucket, remote_dir, prefix):
    for key in ("px/day-1/a.csv", "px/day-10/b.csv", "px/day-11.csv", "px/day-1.csv"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    summary = run(s3_bucket=bucket, s3_prefix=prefix, sftp_path=f"{remote_dir}/")
    assert files(remote_dir) == {"a.csv"}
    assert (remote_dir / "a.csv").read_bytes() == b"px/day-1/a.csv"
    assert summary["count"] == 1


# -- a file and a directory of one name ----------------------------------------------------------


def test_a_file_and_a_directory_of_one_name_are_refused_before_writing(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="px/a", Body=b"a file")
    s3.put_object(Bucket=bucket, Key="px/a/b", Body=b"a file in a directory of the same name")
    with pytest.raises(
        ValueError, match=r"'s3://.*/px/a' and 's3://.*/px/a/b' clash: .* a directory holding"
    ):
        run(s3_bucket=bucket, s3_prefix="px/", sftp_path=f"{remote_dir}/", create_dirs=True)
    assert list(remote_dir.iterdir()) == []


# -- abandoned temp files of sidecars and done markers -------------------------------------------


def test_abandoned_temp_files_of_sidecars_and_markers_are_swept(s3, bucket, remote_dir):
    long_name = "L" * 240 + ".csv"
    s3.put_object(Bucket=bucket, Key="f.csv", Body=b"data")
    s3.put_object(Bucket=bucket, Key=long_name, Body=b"long")
    token = "0123456789ab"
    ours = [
        f".f.csv.sha256.{token}.s3sftp-part",
        f".f.csv.done.{token}.s3sftp-part",
        Path(temp_path_for(f"/x/{long_name}", token)).name,  # the short form of a long name's temp
        Path(temp_path_for(f"/x/{long_name}.sha256", token)).name,
    ]
    not_ours = [f".other.csv.sha256.{token}.s3sftp-part", f".f.csv.sha256.{token}.s3sftp-part.keep"]
    for name in ours + not_ours:
        (remote_dir / name).write_bytes(b"abandoned")
        os.utime(remote_dir / name, (OLD, OLD))
    run(
        s3_bucket=bucket,
        s3_keys=["f.csv", long_name],
        sftp_path=f"{remote_dir}/",
        sidecar=True,
        done_marker=".done",
        tuning={"stale_temp_after": 60},
    )
    expected = {"f.csv", "f.csv.sha256", "f.csv.done", long_name, f"{long_name}.sha256", f"{long_name}.done"}
    assert files(remote_dir) == expected | set(not_ours)


# -- names the server finds too long -------------------------------------------------------------


def test_a_name_too_long_for_the_server_says_so(observer_sftp, remote_dir):
    path = f"{remote_dir}/{'z' * 300}"
    with pytest.raises(OSError, match=r"too long for the server: 300 bytes, 45 over") as info:
        create_private(observer_sftp, path)
    assert info.value.errno == errno.ENAMETOOLONG


# -- write_size above the server's limit ---------------------------------------------------------


def test_write_size_above_the_servers_limit_is_capped_and_logged(s3, bucket, remote_dir, caplog):
    data = os.urandom(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    with caplog.at_level(logging.WARNING):
        result = run(
            s3_bucket=bucket, s3_key="k", sftp_path=f"{remote_dir}/k", tuning={"write_size": 256 * 1024}
        )
    assert (remote_dir / "k").read_bytes() == data and result["attempts"] == 1
    assert any("write_size=262144 is above" in record.getMessage() for record in caplog.records)


# -- s3_keys rendered as a string ----------------------------------------------------------------


def test_s3_keys_rendered_as_a_string_is_refused_naming_s3_keys(s3, bucket, remote_dir):
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    op = S3ToSFTPStreamOperator(
        task_id="deliver", s3_bucket=bucket, s3_keys="{{ params.keys }}", sftp_path=f"{remote_dir}/"
    )
    op.s3_keys = "['a', 'b']"  # what templating renders a list into without native rendering
    with pytest.raises(TypeError, match=r"s3_keys must be a list of strings, got a string"):
        op.execute(context=NO_CONTEXT)
    assert list(remote_dir.iterdir()) == []


# -- claims refused for permission, appends racing the claim -------------------------------------


async def collect(events: AsyncIterator[Any], seconds: float, stop_after: int) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []

    async def gather() -> None:
        async for event in events:
            payloads.append(event.payload)
            if len(payloads) >= stop_after:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gather(), seconds)
    with contextlib.suppress(AttributeError):
        await events.aclose()  # type: ignore[attr-defined]
    return payloads


def owned_dir(parent: Path, name: str, sshd: SSHDServer) -> Path:
    path = parent / name
    path.mkdir()
    os.chown(path, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    return path


@pytest.mark.requires_root  # as root, the test can take write permission away from the server's plain user
def test_a_claim_refused_for_permission_is_retried_each_poll(sshd, remote_dir, capfd):
    inbound, claimed = owned_dir(remote_dir, "inbound", sshd), owned_dir(remote_dir, "claimed", sshd)
    data = os.urandom(30_000)
    (inbound / "a.csv").write_bytes(data)
    claimed.chmod(0o555)  # the plain user may not create names in it
    trigger = SFTPFileStableEventTrigger(
        f"{inbound}/*.csv", stable_for=0.3, poke_interval=0.2, claim_to=str(claimed)
    )

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        refused = await collect(trigger.run(), 3.0, stop_after=1)
        claimed.chmod(0o755)  # the partner fixes the directory; the file itself does not change
        return refused, await collect(trigger.run(), 15.0, stop_after=1)

    refused, fired = asyncio.run(scenario())
    assert refused == []
    out, err = capfd.readouterr()
    assert (out + err).count("refused to move it") == 1  # throttled: not once per poll
    assert [event["path"] for event in fired] == [str(claimed / "a.csv")]
    assert fired[0]["checksum"] == sha(data)
    assert (claimed / "a.csv").read_bytes() == data


class AppendingBeforeClaim(SFTPSensingHook):
    """The real sync hook, with a writer appending to the file just before the claim renames it."""

    def __init__(self, local: Path, extra: bytes) -> None:
        super().__init__("sftp_default")
        self.local, self.extra = local, extra

    def claim(self, source: str, target: str) -> poll.Claimed:
        with open(self.local, "ab") as handle:  # the uploader's still-open file gets 28 more bytes
            handle.write(self.extra)
        return super().claim(source, target)


def test_an_append_between_the_verdict_and_the_claim_is_caught(sshd, remote_dir):
    inbound, claimed = owned_dir(remote_dir, "inbound", sshd), owned_dir(remote_dir, "claimed", sshd)
    data, extra = os.urandom(10_000), os.urandom(28)
    (inbound / "a.csv").write_bytes(data)
    os.utime(inbound / "a.csv", (OLD, OLD))
    policy = stability.Policy.build(target="a.csv", stable_for=0, checksum="sha256")
    watch = poll.Watch(str(inbound), "*.csv", policy, str(claimed))
    io = AppendingBeforeClaim(inbound / "a.csv", extra)
    fired: list[poll.Fired] = []
    try:
        for _ in range(10):
            fired += poll.drive(watch.round(), io).fired
            if fired:
                break
            time.sleep(0.6)  # the poll interval: two digests a poll apart
    finally:
        io.close()
    assert len(fired) == 1
    payload = fired[0].payload()
    assert payload["path"] == str(claimed / "a.csv")
    assert payload["size"] == 10_028 and payload["checksum"] == sha(data + extra)
    assert payload["mtime"] == int((claimed / "a.csv").stat().st_mtime)


# -- the sensor and the deferred trigger ride out a dropped connection ----------------------------


def proxied(set_connection, sshd: SSHDServer, proxy: FaultyProxy, **extra: Any) -> str:
    return set_connection("sftp_proxied", sshd.connection(**extra) | {"port": proxy.port})


def test_the_poke_sensor_reconnects_after_a_dropped_connection(sshd, remote_dir, set_connection):
    data = os.urandom(MiB)
    (remote_dir / "big.bin").write_bytes(data)
    chunks = itertools.count()
    # The 20th request chunk is a STAT of a poll (the handshake takes fewer; many polls come before the
    # hash, as stable_for spans several poke intervals): the connection drops under a poke.
    with CutWhen(sshd.port, when=lambda: next(chunks) >= 20) as proxy:
        sensor = SFTPFileStableSensor(
            task_id="sense",
            path=str(remote_dir / "big.bin"),
            sftp_conn_id=proxied(set_connection, sshd, proxy),
            stable_for=1.5,
            poke_interval=0.1,
            timeout=60,
            expected_checksum=sha(data),
            deferrable=False,
        )
        result = sensor.execute(NO_CONTEXT)
    assert proxy.faults == 1 and proxy.connections == 2
    assert result["checksum"] == sha(data) and result["size"] == len(data)


def test_the_deferred_trigger_reconnects_after_a_dropped_connection(sshd, remote_dir, set_connection):
    data = os.urandom(3 * MiB)
    (remote_dir / "big.bin").write_bytes(data)
    with FaultyProxy(sshd.port, after=MiB, direction="down") as proxy:
        policy = stability.Policy.build(
            target="big.bin", stable_for=0.2, checksum=None, expected_checksum=sha(data)
        )
        trigger = SFTPFileStableTrigger(
            path=str(remote_dir / "big.bin"),
            sftp_conn_id=proxied(set_connection, sshd, proxy),
            policy=policy.to_dict(),
            poke_interval=0.2,
            chunk_size=64 * 1024,
        )

        async def events() -> list[dict[str, Any]]:
            return [event.payload async for event in trigger.run()]

        payloads = asyncio.run(events())
    assert proxy.faults == 1 and proxy.connections == 2
    assert len(payloads) == 1 and payloads[0]["status"] == "success", payloads
    assert payloads[0]["result"]["checksum"] == sha(data)


def test_a_changed_host_key_still_ends_the_sensor_at_once(sshd, remote_dir, set_connection):
    (remote_dir / "f").write_bytes(b"x")
    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with FaultyProxy(sshd.port, after=10**12) as proxy:
        sensor = SFTPFileStableSensor(
            task_id="sense",
            path=str(remote_dir / "f"),
            sftp_conn_id=proxied(set_connection, sshd, proxy, host_key=other_key),
            stable_for=0.2,
            poke_interval=0.2,
            timeout=60,
            deferrable=False,
        )
        with pytest.raises(HostKeyVerificationError):
            sensor.execute(NO_CONTEXT)
    assert proxy.connections == 1  # not retried


# -- arguments checked at parse time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"file_mode": "644"}, r"file_mode must be an integer such as 0o644"),
        ({"file_mode": 0o17777}, r"file_mode must be permission bits"),
        ({"create_dirs": "False"}, r"create_dirs must be True or False"),
        ({"atomic": 1}, r"atomic must be True or False"),
        ({"done_marker": ".do\x00ne"}, r"done_marker must not contain a NUL byte"),
        ({"done_marker": ".a/b"}, r"done_marker .* must not contain '/'"),
        ({"tuning": {"io_timeout": float("nan")}}, r"io_timeout must be a finite number"),
        (
            {"tuning": {"connection_retry_delay": float("inf")}},
            r"connection_retry_delay must be a finite number",
        ),
        ({"tuning": {"stale_temp_after": float("nan")}}, r"stale_temp_after must be a finite number"),
        ({"tuning": {"chunk_size": True}}, r"chunk_size must be an integer"),
        ({"tuning": {"chunk_size": 1.5}}, r"chunk_size must be an integer"),
        ({"tuning": {"connection_retries": -1}}, r"connection_retries must be at least 0"),
        ({"max_concurrency": True}, r"max_concurrency must be an integer"),
        ({"checksum": ""}, r"checksum must name a digest algorithm"),
        ({"tuning": {"write_size": 1024 * 1024}}, r"write_size 1048576 is above 262144"),
        ({"s3_regex": "("}, r"s3_regex '\(' is not a valid regular expression"),
        ({"allow_empty": "yes"}, r"allow_empty must be True or False"),
        ({"tuning": {"fsync": "false"}}, r"fsync must be True or False"),
    ],
)
def test_operator_arguments_are_checked_at_parse_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S3ToSFTPStreamOperator(task_id="t", s3_key="s3://b/k", sftp_path="/in/k", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stable_for": float("nan")}, r"stable_for must be a finite number"),
        ({"stable_for": True}, r"stable_for must be a number"),
        ({"checksum": ""}, r"checksum must name a digest algorithm"),
        ({"min_size": "1"}, r"min_size must be an integer"),
        ({"chunk_size": 0}, r"chunk_size must be at least 1"),
        ({"expected_checksum_from": "file"}, r"expected_checksum_from for /in/f must be one of 'sidecar'"),
        ({"poke_interval": float("nan")}, r"poke_interval"),
    ],
)
def test_sensor_arguments_are_checked_at_parse_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SFTPFileStableSensor(task_id="s", path="/in/f", deferrable=False, **kwargs)


def test_sensor_checks_a_templated_path_when_it_runs(remote_dir):
    sensor = SFTPFileStableSensor(task_id="s", path="/in/{{ ds }}", stable_for=0, deferrable=False)
    sensor.path = f"{remote_dir}/a\x00b"
    with pytest.raises(ValueError, match=r"path must not contain a NUL byte"):
        sensor.execute(NO_CONTEXT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "inbound/*.csv"}, r"path must be an absolute path"),
        ({"path": "/in/a\x00*.csv"}, r"path must not contain a NUL byte"),
        ({"stable_for": float("nan")}, r"stable_for must be a finite number"),
        ({"poke_interval": float("nan")}, r"poke_interval must be a finite number"),
        ({"poke_interval": True}, r"poke_interval must be a number"),
        ({"checksum": ""}, r"checksum must name a digest algorithm"),
        ({"claim_to": "done"}, r"claim_to must be an absolute directory"),
        ({"claim_to": "/done\x00"}, r"claim_to must not contain a NUL byte"),
    ],
)
def test_event_trigger_arguments_are_checked_at_parse_time(kwargs, message):
    kwargs.setdefault("path", "/in/*.csv")
    with pytest.raises(ValueError, match=message):
        SFTPFileStableEventTrigger(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poke_interval": float("nan")}, r"poke_interval must be a finite number"),
        ({"chunk_size": "64k"}, r"chunk_size must be an integer"),
        ({"path": "/in/a\x00"}, r"path must not contain a NUL byte"),
    ],
)
def test_deferred_trigger_arguments_are_checked_when_built(kwargs, message):
    kwargs.setdefault("path", "/in/f")
    kwargs.setdefault("policy", stability.Policy.build(target="t", stable_for=1, checksum="sha256").to_dict())
    with pytest.raises(ValueError, match=message):
        SFTPFileStableTrigger(**kwargs)
