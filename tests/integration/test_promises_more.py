# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""More promises met on real servers: fsync before rename, host keys, secrets, memory, write errors, S3 checks.

Observed from outside: OpenSSH's ``sftp-server`` logging every request (started through a wrapper
as sshd's sftp subsystem), the same server under a file size limit, ``known_hosts`` files,
captured logs, a child process's allocations, a proxy in front of moto.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.core import stability
from airflow_s3sftp.exceptions import (
    AuthenticationError,
    DeliveryFailedError,
    HostKeyVerificationError,
    VerificationError,
)
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger
from tests.faults import FaultyProxy
from tests.integration.reports import read_report
from tests.servers import SFTP_SERVER, SSHDServer
from testservers import processes as servers

MiB = 1024 * 1024


def start_wrapped_sshd(name: str, *, file_size_limit_kib: int | None = None) -> tuple[SSHDServer, Path]:
    """Start sshd whose sftp subsystem is OpenSSH's sftp-server logging every request (DEBUG3) to a file.

    ``file_size_limit_kib`` runs it under ``ulimit -f`` with SIGXFSZ ignored, so a write past the
    limit gets a failure status (EFBIG) instead of killing the server.
    """
    user = pwd.getpwnam(servers.ensure_test_user())
    tmp = Path(tempfile.mkdtemp(prefix="s3sftp-subsystem-"))  # the login user must reach it
    tmp.chmod(0o755)
    log = tmp / "sftp-server.log"
    log.touch()
    os.chown(log, user.pw_uid, user.pw_gid)
    limit = f"ulimit -f {file_size_limit_kib}\n" if file_size_limit_kib else ""
    wrapper = tmp / "sftp-subsystem"
    wrapper.write_text(f"#!/bin/bash\ntrap '' XFSZ\n{limit}exec {SFTP_SERVER} -e -l DEBUG3 2>>{log}\n")
    wrapper.chmod(0o755)
    servers._SUBSYSTEMS[name] = str(wrapper)
    try:
        return servers.start_sshd(sftp_server=name), log
    finally:
        del servers._SUBSYSTEMS[name]


@pytest.fixture(scope="module")
def logged_sshd(test_user: None) -> Iterator[tuple[SSHDServer, Path]]:
    server, log = start_wrapped_sshd("openssh-logged")
    yield server, log
    server.stop()
    shutil.rmtree(log.parent, ignore_errors=True)


def run(**kwargs: object) -> dict[str, object]:
    op = S3ToSFTPStreamOperator(task_id="deliver", **kwargs)  # type: ignore[arg-type]
    return op.execute(context={})  # type: ignore[arg-type]


def owned_dir(server: SSHDServer, name: str) -> Path:
    path = server.root / name
    path.mkdir()
    os.chown(path, server.root.stat().st_uid, server.root.stat().st_gid)
    return path


def requests_on(log: Path, path: Path) -> list[str]:
    """Return sftp-server's log lines that name ``path``, in the order the server handled them."""
    quoted = f'"{path}"'
    return [line for line in log.read_text(errors="replace").splitlines() if quoted in line]


@pytest.mark.parametrize("strict_order", [False, True], ids=["pipelined", "strict"])
def test_the_temp_file_is_fsynced_after_its_last_write_and_before_the_rename(
    logged_sshd, s3, bucket, set_connection, strict_order
):
    server, log = logged_sshd
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(3 * MiB))
    target = owned_dir(server, f"fsync-{strict_order}") / "k"
    conn_id = set_connection("sftp_logged", server.connection())
    run(
        s3_bucket=bucket,
        s3_key="k",
        sftp_path=str(target),
        sftp_conn_id=conn_id,
        tuning={"chunk_size": MiB, "strict_order": strict_order},
    )

    renames = [line for line in requests_on(log, target) if line.startswith("posix-rename old ")]
    assert len(renames) == 1, renames
    temp = Path(re.fullmatch(r'posix-rename old "(.*)" new ".*"', renames[0])[1])  # type: ignore[index]
    assert temp.parent == target.parent and temp.name.startswith(".k.")
    kinds = [
        "write" if ": write " in line else line.split(" ", 1)[0]
        for line in requests_on(log, temp)
        if ": write " in line or line.startswith(("fsync ", "close ", "posix-rename "))
    ]
    assert kinds.count("write") >= 3, kinds  # 3 MiB in writes of at most 256 KiB
    last_write = len(kinds) - 1 - kinds[::-1].index("write")
    assert kinds[last_write + 1 :] == ["fsync", "close", "posix-rename"], kinds[last_write:]


@pytest.fixture(scope="module")
def limited_sshd(test_user: None) -> Iterator[SSHDServer]:
    """An OpenSSH sftp-server that may write no file past 2 MiB (``ulimit -f``): WRITE fails with a status."""
    server, log = start_wrapped_sshd("openssh-2mib", file_size_limit_kib=2048)
    yield server
    server.stop()
    shutil.rmtree(log.parent, ignore_errors=True)


@pytest.mark.parametrize("strict_order", [False, True], ids=["pipelined", "strict"])
def test_a_refused_write_on_a_real_server_names_the_path_and_leaves_nothing(
    limited_sshd, s3, bucket, set_connection, strict_order
):
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(3 * MiB))
    directory = owned_dir(limited_sshd, f"limit-{strict_order}")
    (directory / "big").write_bytes(b"previous version")
    conn_id = set_connection("sftp_limited", limited_sshd.connection())
    refused = rf"SFTP write '{re.escape(str(directory))}/\.big\.[0-9a-f]+\.s3sftp-part' failed"
    with pytest.raises(OSError, match=refused):
        run(
            s3_bucket=bucket,
            s3_key="big",
            sftp_path=str(directory / "big"),
            sftp_conn_id=conn_id,
            tuning={"chunk_size": MiB, "strict_order": strict_order, "connection_retries": 0},
        )
    assert (directory / "big").read_bytes() == b"previous version"
    assert sorted(p.name for p in directory.iterdir()) == ["big"]


def test_one_object_failing_mid_stream_in_a_many_object_task(limited_sshd, s3, bucket, set_connection):
    """The middle object outgrows the server's limit half way: the others land, the summary names it."""
    bodies = {"in/a.bin": os.urandom(MiB), "in/b.bin": os.urandom(3 * MiB), "in/c.bin": os.urandom(MiB + 1)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    directory = owned_dir(limited_sshd, "many")
    conn_id = set_connection("sftp_limited", limited_sshd.connection())
    with pytest.raises(DeliveryFailedError, match=r"b\.bin") as info:
        run(
            s3_bucket=bucket,
            s3_prefix="in/",
            sftp_path=f"{directory}/",
            sftp_conn_id=conn_id,
            tuning={"chunk_size": 256 * 1024, "connection_retries": 0},
            max_concurrency=1,
            report=f"s3://{bucket}/reports/many.jsonl",
        )
    summary = info.value.summary
    assert [Path(str(r["sftp_path"])).name for r in summary["failed"]] == ["b.bin"]
    assert re.search(
        r"SFTP write '.*/\.b\.bin\.[0-9a-f]+\.s3sftp-part' failed", str(summary["failed"][0]["error"])
    )
    records = read_report(s3, bucket, "reports/many.jsonl")
    assert sorted(Path(str(r["sftp_path"])).name for r in records if "error" not in r) == ["a.bin", "c.bin"]
    assert len(records) == 3
    assert (directory / "a.bin").read_bytes() == bodies["in/a.bin"]
    assert (directory / "c.bin").read_bytes() == bodies["in/c.bin"]
    assert sorted(p.name for p in directory.iterdir()) == ["a.bin", "c.bin"]


def make_sensor(path: Path, conn_id: str) -> SFTPFileStableSensor:
    return SFTPFileStableSensor(
        task_id="wait", path=str(path), sftp_conn_id=conn_id, stable_for=0.5, deferrable=False
    )


def make_trigger(path: Path, conn_id: str) -> SFTPFileStableTrigger:
    policy = stability.Policy.build(target=str(path), stable_for=0.5, checksum="sha256").to_dict()
    return SFTPFileStableTrigger(path=str(path), sftp_conn_id=conn_id, policy=policy, poke_interval=0.25)


def trigger_events(trigger: SFTPFileStableTrigger, timeout: float = 30) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def known_hosts_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: SSHDServer, key: str) -> None:
    """Make ``~/.ssh/known_hosts`` (the default of paramiko and asyncssh) hold ``key`` for ``server``."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {key}\n")
    monkeypatch.setenv("HOME", str(tmp_path))


def another_host_key(tmp_path: Path) -> str:
    path = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.mark.parametrize("known", ["right", "wrong"])
@pytest.mark.parametrize("user", ["operator", "sensor", "trigger"])
def test_host_keys_come_from_known_hosts_without_a_host_key_extra(
    sshd, s3, bucket, remote_dir, set_connection, monkeypatch, tmp_path, user, known
):
    key = sshd.host_key if known == "right" else another_host_key(tmp_path)
    known_hosts_home(tmp_path, monkeypatch, sshd, key)
    conn_id = set_connection("sftp_known_hosts", sshd.connection(host_key=None))
    data = b"complete file"
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    (remote_dir / "seen").write_bytes(data)

    def act() -> object:
        if user == "operator":
            return run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k"), sftp_conn_id=conn_id)
        if user == "sensor":
            return make_sensor(remote_dir / "seen", conn_id).poke({})  # type: ignore[arg-type]
        trigger = make_trigger(remote_dir / "seen", conn_id)
        events = trigger_events(trigger)
        return make_sensor(remote_dir / "seen", conn_id).execute_complete({}, events[0])  # type: ignore[arg-type]

    if known == "wrong":
        with pytest.raises(HostKeyVerificationError, match=f"127.0.0.1:{sshd.port}"):
            act()
        assert not (remote_dir / "k").exists()
        return
    result = act()
    if user == "operator":
        assert (remote_dir / "k").read_bytes() == data
    elif user == "sensor":
        assert result is False  # looked at the file: one observation, not yet stable for 0.5 s
    else:
        assert result["checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}", result


@pytest.mark.parametrize("user", ["sensor", "trigger"])
def test_no_host_key_check_warns_in_the_sensor_and_the_trigger(
    sshd, remote_dir, set_connection, monkeypatch, tmp_path, caplog, capfd, user
):
    """The sensor logs our warning (connection and server named); the trigger's async hook logs the
    sftp provider's own warning, through Airflow's structured logging (captured output, not caplog)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no known_hosts: only the extra lets the login through
    conn_id = set_connection("sftp_trusting", sshd.connection(host_key=None, no_host_key_check="true"))
    (remote_dir / "seen").write_bytes(b"data")
    caplog.set_level(logging.WARNING)
    capfd.readouterr()
    if user == "sensor":
        assert make_sensor(remote_dir / "seen", conn_id).poke({}) is False  # type: ignore[arg-type]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "'sftp_trusting' sets no_host_key_check" in m and f"127.0.0.1:{sshd.port}" in m for m in warnings
        ), warnings
    else:
        events = trigger_events(make_trigger(remote_dir / "seen", conn_id))
        assert [e["status"] for e in events] == ["success"], events
        out, err = capfd.readouterr()
        emitted = [line for line in (caplog.text + out + err).splitlines() if "warning" in line.lower()]
        assert any("No Host Key Verification" in line or "no_host_key_check" in line for line in emitted), (
            emitted
        )


def test_an_inline_private_key_never_reaches_logs_or_errors(
    sshd, s3, bucket, remote_dir, set_connection, tmp_path, caplog, capfd
):
    """The key text of a ``private_key`` extra, in a delivery, a refused login and a sensor poke."""
    key_text = sshd.key_file.read_text()
    other = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    other_text = other.read_text()
    secrets = [
        line for text in (key_text, other_text) for line in text.splitlines() if "PRIVATE KEY" not in line
    ]
    assert len(secrets) >= 8 and all(len(line) > 20 for line in secrets)
    inline = set_connection("sftp_inline", sshd.connection(key_file=None, private_key=key_text))
    refused = set_connection("sftp_refused", sshd.connection(key_file=None, private_key=other_text))
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    (remote_dir / "seen").write_bytes(b"seen")
    caplog.set_level(logging.DEBUG)

    record = run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k"), sftp_conn_id=inline)
    assert (remote_dir / "k").read_bytes() == b"data"
    assert make_sensor(remote_dir / "seen", inline).poke({}) is False  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="refused the login") as info:
        run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k2"), sftp_conn_id=refused)
    errors = [repr(e) + str(e) for e in (info.value, info.value.__cause__, info.value.__context__)]

    out, err = capfd.readouterr()
    emitted = "\n".join([caplog.text, out, err, json.dumps(record), *errors])
    assert "Authentication (publickey) successful" in emitted  # the logs were captured at all
    assert len(caplog.records) > 5
    leaked = [line for line in secrets if line in emitted or line[:20] in emitted]
    assert leaked == []


DELIVER_AND_MEASURE = """
import json, sys, tracemalloc
from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook

bucket, directory = sys.argv[1:3]
hook, peaks = S3ToSFTPHook(), []
for verify in ("size", "checksum"):  # imports and first connections happen here, not below
    hook.stream_object(bucket, "warm-up", f"{directory}/warm-up-{verify}", DeliveryOptions.build(verify=verify))
tracemalloc.start()
for key in sys.argv[3:]:
    verify = key.split("-")[0]
    options = DeliveryOptions.build(verify=verify, checksum="sha256")
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    hook.stream_object(bucket, key, f"{directory}/{key}", options)
    peaks.append(tracemalloc.get_traced_memory()[1] - before)
print(json.dumps(dict(zip(sys.argv[3:], peaks))))
"""


def test_memory_is_flat_in_the_object_size(s3, bucket, remote_dir):
    """Peak Python allocations of whole deliveries, 48 MiB and then 16 MiB, with and without read-back.

    Both objects are larger than the read-ahead and write windows. One process: a warm-up delivery per mode first (imports, connections), then the large one, so
    whatever a first delivery still sets up counts against it.
    """
    small, large = os.urandom(16 * MiB), os.urandom(48 * MiB)
    s3.put_object(Bucket=bucket, Key="warm-up", Body=small[:MiB])
    keys = []
    for verify in ("size", "checksum"):
        for label, body in (("large", large), ("small", small)):
            keys.append(f"{verify}-{label}")
            s3.put_object(Bucket=bucket, Key=keys[-1], Body=body)
    done = subprocess.run(
        [sys.executable, "-c", DELIVER_AND_MEASURE, bucket, str(remote_dir), *keys],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.splitlines()[-1])
    for key in keys:
        assert (remote_dir / key).stat().st_size == len(large if key.endswith("large") else small)
    # Buffering the object would add 32 MiB; a fixed window of chunks (filled by 16 MiB) adds nothing.
    for verify in ("size", "checksum"):
        assert peaks[f"{verify}-large"] - peaks[f"{verify}-small"] < 4 * MiB, peaks


def _crc_table(poly: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C, _CRC64NVME = _crc_table(0x82F63B78), _crc_table(0x9A6C9329AC4BC9B5)


def reference_checksum(algorithm: str, data: bytes) -> str:
    """S3's base64 checksum of ``data``, computed here (reflected table CRCs), not by the code under test."""
    if algorithm == "SHA1":
        return base64.b64encode(hashlib.sha1(data).digest()).decode()
    table, width = (_CRC32C, 4) if algorithm == "CRC32C" else (_CRC64NVME, 8)
    mask = (1 << (8 * width)) - 1
    crc = mask
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return base64.b64encode((crc ^ mask).to_bytes(width, "big")).decode()


RUN = b"\xaa" * 4096  # a run no random body holds: the proxy below finds it in any response chunk


class FlipInBody(FaultyProxy):
    """Forward to moto, flipping one byte of every 64-byte stretch of :data:`RUN` that comes back."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port, after=0, direction="down", faulty=0)
        self.flipped = 0

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                at = data.find(RUN[:64]) if counted else -1
                if at >= 0:
                    data = data[:at] + b"\x55" + data[at + 1 :]
                    self.flipped += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()


def has_awscrt() -> bool:
    try:
        import awscrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME", "SHA1"])
def test_s3_full_object_checksums_are_checked_and_a_flipped_byte_fails(
    moto, s3, bucket, remote_dir, set_connection, caplog, algorithm
):
    """The check names the algorithm S3 vouches with; a byte flipped on the way from S3 fails it.

    CRC-32C and CRC-64/NVME need ``awscrt``: without it the delivery says so and checks the ETag
    (MD5) instead, which must catch the flipped byte just the same.
    """
    data = os.urandom(200_000) + RUN + os.urandom(100_000)
    s3.put_object(
        Bucket=bucket,
        Key="k",
        Body=data,
        ChecksumAlgorithm=algorithm,
        **{f"Checksum{algorithm}": reference_checksum(algorithm, data)},
    )
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    record = run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k"))
    assert (remote_dir / "k").read_bytes() == data
    if algorithm == "SHA1" or has_awscrt():
        check = f"S3 Checksum{algorithm}"
    else:
        check = "S3 ETag (MD5)"
        assert f"S3 offers Checksum{algorithm} but awscrt is not installed" in caplog.text
    assert record["source_check"] == check

    (remote_dir / "k").write_bytes(b"previous version")
    aws = moto.connection()
    with FlipInBody(moto.port) as proxy:
        aws["extra"] = {**aws["extra"], "endpoint_url": f"http://127.0.0.1:{proxy.port}"}  # type: ignore[dict-item]
        flipping = set_connection("aws_flipping", aws)
        with pytest.raises(VerificationError, match=rf"corrupted in transit: {re.escape(check)} says"):
            run(s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k"), aws_conn_id=flipping)
    assert proxy.flipped >= 1
    assert (remote_dir / "k").read_bytes() == b"previous version"
    assert sorted(p.name for p in remote_dir.iterdir()) == ["k"]


def test_a_new_version_uploaded_mid_delivery_does_not_mix_bytes(moto, s3, bucket, remote_dir, set_connection):
    """Versioned bucket: the S3 stream is cut after 2 MiB and a new version uploaded at that moment;
    the resumed read still comes from the version the delivery started with, and the record names it."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first, second = os.urandom(8 * MiB), os.urandom(8 * MiB)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=first)["VersionId"]
    uploaded: list[str] = []

    def upload_second() -> None:
        uploaded.append(s3.put_object(Bucket=bucket, Key="k", Body=second)["VersionId"])

    aws = moto.connection()
    with FaultyProxy(moto.port, after=2 * MiB, direction="down", on_fault=upload_second) as proxy:
        aws["extra"] = {**aws["extra"], "endpoint_url": f"http://127.0.0.1:{proxy.port}"}  # type: ignore[dict-item]
        record = run(
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=str(remote_dir / "k"),
            aws_conn_id=set_connection("aws_cut", aws),
            tuning={"chunk_size": 256 * 1024},
        )
    assert proxy.faults == 1 and uploaded and uploaded[0] != v1
    assert s3.head_object(Bucket=bucket, Key="k")["VersionId"] == uploaded[0]  # the new one is the latest
    assert record["s3_retries"] >= 1  # the read was resumed after the new version appeared
    assert (remote_dir / "k").read_bytes() == first
    assert record["version_id"] == v1
    assert record["checksum"] == f"sha256:{hashlib.sha256(first).hexdigest()}"


@pytest.mark.parametrize("skew_days", [-10, 10], ids=["client-behind", "client-ahead"])
def test_the_sweep_goes_by_the_servers_clock_not_the_clients(s3, bucket, remote_dir, monkeypatch, skew_days):
    """The worker's clock is ten days off: an abandoned temp file (two days old on the server) goes,
    one written a moment ago stays."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    abandoned = remote_dir / ".k.0123456789ab.s3sftp-part"
    fresh = remote_dir / ".k.0123456789ac.s3sftp-part"
    for path in (abandoned, fresh):
        path.write_bytes(b"left by another worker")
    two_days_ago = time.time() - 2 * 86400
    os.utime(abandoned, (two_days_ago, two_days_ago))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_days * 86400)

    record = run(
        s3_bucket=bucket, s3_key="k", sftp_path=str(remote_dir / "k"), tuning={"stale_temp_after": 86400}
    )

    assert record["size"] == 4
    assert not abandoned.exists()
    assert fresh.exists()
