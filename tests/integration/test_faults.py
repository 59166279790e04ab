"""Faults injected for real on loopback: dropped and stalled connections, broken S3 bodies,
full disks, vanished directories, killed workers, and many transfers at once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.exceptions import ConnectionLostError, SourceChangedError
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
from tests.faults import FaultyProxy

MiB = 1024 * 1024
FAST_RETRY = {"connection_retry_delay": 0.2}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(directory) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in directory.iterdir())


def temp_of(directory, name: str):  # type: ignore[no-untyped-def]
    """Return the temp file of ``name`` being written in ``directory`` (unique per delivery), or None."""
    return next(directory.glob(f".{name}.*.s3sftp-part"), None)


def test_ssh_connection_cut_mid_transfer_reconnects_and_resumes_a_proven_prefix(
    sshd, s3, bucket, remote_dir, set_connection
):
    data = os.urandom(24 * MiB + 11)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    with FaultyProxy(sshd.port, after=12 * MiB, mode="cut", direction="up") as proxy:
        set_connection("sftp_cut", sshd.connection() | {"port": proxy.port})
        result = S3ToSFTPHook(sftp_conn_id="sftp_cut").stream_object(
            bucket,
            "k",
            str(remote_dir / "k"),
            DeliveryOptions.build(tuning={"chunk_size": MiB, **FAST_RETRY}),
        )
    assert proxy.faults == 1
    assert result["attempts"] == 2
    assert 0 < result["resumed_from"] < len(data)
    assert (remote_dir / "k").read_bytes() == data
    assert result["checksum"] == f"sha256:{sha(data)}"
    assert files(remote_dir) == ["k"]


def test_ssh_connection_stalled_times_out_then_reconnects(sshd, s3, bucket, remote_dir, set_connection):
    data = os.urandom(8 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    with FaultyProxy(sshd.port, after=3 * MiB, mode="stall", direction="up") as proxy:
        set_connection("sftp_stall", sshd.connection() | {"port": proxy.port})
        started = time.monotonic()
        result = S3ToSFTPHook(sftp_conn_id="sftp_stall").stream_object(
            bucket,
            "k",
            str(remote_dir / "k"),
            DeliveryOptions.build(tuning={"io_timeout": 2, "chunk_size": MiB, **FAST_RETRY}),
        )
    assert time.monotonic() - started < 30
    assert result["attempts"] == 2
    assert (remote_dir / "k").read_bytes() == data


def test_ssh_stalling_every_time_fails_within_bound_and_publishes_nothing(
    sshd, s3, bucket, remote_dir, set_connection
):
    (remote_dir / "k").write_bytes(b"previous version")
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(8 * MiB))
    with FaultyProxy(sshd.port, after=2 * MiB, mode="stall", direction="up", faulty=99) as proxy:
        set_connection("sftp_hang", sshd.connection() | {"port": proxy.port})
        started = time.monotonic()
        with pytest.raises(ConnectionLostError, match=r"Giving up on s3://.*/k .* after 2 attempts"):
            S3ToSFTPHook(sftp_conn_id="sftp_hang").stream_object(
                bucket,
                "k",
                str(remote_dir / "k"),
                DeliveryOptions.build(tuning={"io_timeout": 1.5, "connection_retries": 1, **FAST_RETRY}),
            )
        elapsed = time.monotonic() - started
    assert elapsed < 30
    assert (remote_dir / "k").read_bytes() == b"previous version"
    assert files(remote_dir) == ["k"]  # the temp file was removed on a fresh connection


@pytest.mark.parametrize("parallel_parts", [1, 4], ids=["single-stream", "parallel-ranged"])
def test_s3_body_cut_mid_object_resumes_with_a_pinned_ranged_get(
    moto, sshd, s3, bucket, remote_dir, set_connection, parallel_parts
):
    data = os.urandom(16 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    cut_after = 6 * MiB if parallel_parts == 1 else 2 * MiB  # a ranged part is 3 MiB
    with FaultyProxy(moto.port, after=cut_after, mode="cut", direction="down") as proxy:
        set_connection(
            "aws_cut",
            moto.connection()
            | {"extra": {"endpoint_url": f"http://127.0.0.1:{proxy.port}", "region_name": "us-east-1"}},
        )
        result = S3ToSFTPHook(aws_conn_id="aws_cut").stream_object(
            bucket,
            "k",
            str(remote_dir / "k"),
            DeliveryOptions.build(
                tuning={"chunk_size": MiB, "parallel_parts": parallel_parts, "part_size": 3 * MiB}
            ),
        )
    assert proxy.faults == 1
    assert result["s3_retries"] >= 1
    assert (remote_dir / "k").read_bytes() == data
    assert result["source_check"] is not None


@pytest.mark.parametrize("parallel_parts", [1, 4], ids=["single-stream", "parallel-ranged"])
def test_s3_object_replaced_mid_transfer_fails_and_never_mixes(
    moto, sshd, s3, bucket, remote_dir, set_connection, parallel_parts
):
    old_remote = b"yesterday's complete file"
    (remote_dir / "k").write_bytes(old_remote)
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(16 * MiB))

    def overwrite() -> None:
        s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(16 * MiB))

    cut_after = 6 * MiB if parallel_parts == 1 else 2 * MiB  # a ranged part is 3 MiB
    with FaultyProxy(moto.port, after=cut_after, mode="cut", direction="down", on_fault=overwrite) as proxy:
        set_connection(
            "aws_swap",
            moto.connection()
            | {"extra": {"endpoint_url": f"http://127.0.0.1:{proxy.port}", "region_name": "us-east-1"}},
        )
        with pytest.raises(SourceChangedError, match=rf"s3://{bucket}/k changed while it was being read"):
            S3ToSFTPHook(aws_conn_id="aws_swap").stream_object(
                bucket,
                "k",
                str(remote_dir / "k"),
                DeliveryOptions.build(
                    tuning={"chunk_size": MiB, "parallel_parts": parallel_parts, "part_size": 3 * MiB}
                ),
            )
    assert (remote_dir / "k").read_bytes() == old_remote
    assert files(remote_dir) == ["k"]


@pytest.fixture
def small_disk(remote_dir, sshd):  # type: ignore[no-untyped-def]
    """A 3 MiB tmpfs inside the SFTP root (the tests run as root in CI, which allows mounting)."""
    mount = remote_dir / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount)], check=True)
    os.chown(mount, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.requires_root  # mounts a small tmpfs
def test_disk_full_fails_clearly_and_keeps_the_previous_version(s3, bucket, small_disk):
    (small_disk / "k").write_bytes(b"previous version")
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(5 * MiB))
    with pytest.raises(OSError, match="no space left on the server's disk") as info:
        S3ToSFTPHook().stream_object(
            bucket, "k", str(small_disk / "k"), DeliveryOptions.build(tuning={"chunk_size": MiB})
        )
    assert info.value.errno == 28
    assert (small_disk / "k").read_bytes() == b"previous version"
    assert files(small_disk) == ["k"]


def test_target_directory_removed_mid_transfer(s3, bucket, remote_dir):
    target_dir = remote_dir / "vanishing"
    target_dir.mkdir()
    os.chown(target_dir, remote_dir.stat().st_uid, remote_dir.stat().st_gid)
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(32 * MiB))

    def remove_when_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            temp = temp_of(target_dir, "k")
            try:
                if temp is not None and temp.stat().st_size > 0:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        shutil.rmtree(target_dir)

    remover = threading.Thread(target=remove_when_started)
    remover.start()
    with pytest.raises(FileNotFoundError, match=r"vanished during the transfer|No such file"):
        S3ToSFTPHook().stream_object(
            bucket,
            "k",
            str(target_dir / "k"),
            DeliveryOptions.build(create_dirs=False, tuning={"chunk_size": 256 * 1024}),
        )
    remover.join()
    assert not target_dir.exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
    from airflow_s3sftp.core.options import DeliveryOptions
    S3ToSFTPHook().stream_object(sys.argv[1], "k", sys.argv[2], DeliveryOptions.build(tuning={"chunk_size": 64 * 1024, "read_ahead": 1}))
    """
)


def holders_of(path: Path) -> list[int]:
    """Return the pids of the processes that have ``path`` open (read from /proc: the server is local)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
    return pids


def wait_until_nobody_has_open(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while holders := holders_of(path):
        assert time.monotonic() < deadline, f"{path} still open in processes {holders} after {timeout}s"
        time.sleep(0.05)


def test_worker_killed_mid_transfer_leaves_final_name_intact_and_next_try_recovers(s3, bucket, remote_dir):
    final = remote_dir / "k"
    final.write_bytes(b"previous version")
    data = os.urandom(64 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    worker = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, bucket, str(final)], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        (temp := temp_of(remote_dir, "k")) and temp.stat().st_size > MiB
    ):
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert final.read_bytes() == b"previous version"
    assert temp.exists() and temp.stat().st_size < len(data)
    # The killed worker's sftp-server may still apply requests it had read: wait until no process
    # holds the temp file open, then age it on the server's disk (instead of sleeping past 1 s mtimes).
    wait_until_nobody_has_open(temp)
    an_hour_ago = time.time() - 3600
    os.utime(temp, (an_hour_ago, an_hour_ago))

    result = S3ToSFTPHook().stream_object(
        bucket, "k", str(final), DeliveryOptions.build(tuning={"stale_temp_after": 60})
    )
    assert final.read_bytes() == data
    assert result["checksum"] == f"sha256:{sha(data)}"
    assert files(remote_dir) == ["k"]


def test_sixteen_transfers_in_parallel(s3, bucket, remote_dir):
    objects = {f"part-{i:02d}.bin": os.urandom(MiB + i * 4099) for i in range(16)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    def one(key: str) -> dict[str, object]:
        return S3ToSFTPHook().stream_object(
            bucket, key, str(remote_dir / key), DeliveryOptions.build(tuning={"chunk_size": 256 * 1024})
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, objects))
    for result, (key, body) in zip(results, objects.items(), strict=True):
        assert result["checksum"] == f"sha256:{sha(body)}"
        assert (remote_dir / key).read_bytes() == body
    assert files(remote_dir) == sorted(objects)


def test_two_runs_on_the_same_target_both_succeed_and_the_last_publish_wins(s3, bucket, remote_dir):
    data = os.urandom(24 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    outcomes: list[object] = []

    def run() -> None:
        outcomes.append(
            S3ToSFTPHook().stream_object(
                bucket, "k", str(remote_dir / "k"), DeliveryOptions.build(tuning={"chunk_size": 256 * 1024})
            )
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 2
    assert all(isinstance(o, dict) and o["checksum"] == f"sha256:{sha(data)}" for o in outcomes)
    assert (remote_dir / "k").read_bytes() == data
    assert files(remote_dir) == ["k"]
