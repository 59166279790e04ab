"""The delivery guarantees on a second SFTP implementation: asyncssh's server, with and without
``posix-rename@openssh.com``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from testservers.embedded_sftp import EmbeddedSFTPServer

MiB = 1024 * 1024


class NoPosixRename(asyncssh.SFTPServer):  # type: ignore[misc]
    """A server that, like many non-OpenSSH servers, lacks posix-rename."""

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("posix-rename not supported")


@pytest.fixture(scope="module", params=["asyncssh", "asyncssh-no-posix-rename"])
def server(request) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """An asyncssh SFTP server serving a temp dir as '/', and its Airflow connection id."""
    root = Path(tempfile.mkdtemp(prefix="s3sftp-asyncssh-root-"))
    kind = NoPosixRename if request.param.endswith("no-posix-rename") else asyncssh.SFTPServer
    with EmbeddedSFTPServer(sftp_server_class=kind) as embedded:
        embedded.start(root)
        conn_id = request.param.replace("-", "_")
        mp = pytest.MonkeyPatch()
        from testservers.processes import conn_env

        name, value = conn_env(conn_id, embedded.connection())
        mp.setenv(name, value)
        yield conn_id, root
        mp.undo()


@pytest.fixture
def target(server) -> tuple[str, Path, str]:  # type: ignore[no-untyped-def]
    conn_id, root = server
    name = os.urandom(4).hex()
    (root / name).mkdir()
    return conn_id, root / name, f"/{name}"


def run(conn_id: str, **kwargs: object) -> dict[str, object]:
    return S3ToSFTPStreamOperator(task_id="t", sftp_conn_id=conn_id, **kwargs).execute(context={})  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 3 * MiB + 17])
def test_bytes_land_exactly(s3, bucket, target, size):
    conn_id, local, remote = target
    data = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    result = run(conn_id, s3_bucket=bucket, s3_key="k", sftp_path=f"{remote}/", tuning={"chunk_size": MiB})
    assert (local / "k").read_bytes() == data
    assert result["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in local.iterdir()) == ["k"]


def test_replace_uses_posix_rename_or_the_documented_fallback(s3, bucket, target, server):
    conn_id, local, remote = target
    (local / "k").write_bytes(b"old")
    data = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    result = run(conn_id, s3_bucket=bucket, s3_key="k", sftp_path=f"{remote}/k", verify="checksum")
    assert (local / "k").read_bytes() == data
    expected = "rename-with-backup" if conn_id.endswith("no_posix_rename") else "posix-rename"
    assert result["published_with"] == expected
    assert result["verified"] == "checksum"
    assert sorted(p.name for p in local.iterdir()) == ["k"]


def test_strict_order_and_if_exists_fail(s3, bucket, target):
    conn_id, local, remote = target
    data = os.urandom(2 * MiB + 1)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    run(conn_id, s3_bucket=bucket, s3_key="k", sftp_path=f"{remote}/", tuning={"strict_order": True})
    assert (local / "k").read_bytes() == data
    with pytest.raises(FileExistsError, match="already exists"):
        run(conn_id, s3_bucket=bucket, s3_key="k", sftp_path=f"{remote}/", if_exists="fail")


def test_missing_directory_and_prefix_delivery(s3, bucket, target):
    conn_id, local, remote = target
    s3.put_object(Bucket=bucket, Key="p/a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="p/x/b.txt", Body=b"b")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(conn_id, s3_bucket=bucket, s3_key="p/a.txt", sftp_path=f"{remote}/nope/", create_dirs=False)
    summary = run(
        conn_id, s3_bucket=bucket, s3_prefix="p/", sftp_path=f"{remote}/out/", sidecar=True, create_dirs=True
    )
    assert summary["count"] == 2
    assert (local / "out" / "x" / "b.txt").read_bytes() == b"b"
    assert (local / "out" / "a.txt.sha256").read_text().endswith("  a.txt\n")


def test_sensor_and_trigger_prove_the_file_on_asyncssh(s3, bucket, target):
    """The sensor suite's core guarantee on the second implementation: poke and trigger paths."""
    import asyncio

    from airflow_s3sftp.core import stability
    from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
    from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger

    conn_id, _, remote = target
    data = os.urandom(MiB + 3)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    result = run(conn_id, s3_bucket=bucket, s3_key="k", sftp_path=f"{remote}/", sidecar=True)
    sensor = SFTPFileStableSensor(
        task_id="wait", path=f"{remote}/k", sftp_conn_id=conn_id, stable_for=1, poke_interval=0.3, timeout=30
    )
    fired = sensor.execute(context={})  # type: ignore[arg-type]
    assert fired["checksum"] == result["checksum"]
    assert fired["size"] == len(data)

    trigger = SFTPFileStableTrigger(
        path=f"{remote}/k",
        sftp_conn_id=conn_id,
        policy=stability.Policy.build(
            target=f"{remote}/k", stable_for=1, checksum="sha256", expected_checksum_from="sidecar"
        ).to_dict(),
        poke_interval=0.3,
    )

    async def first_event() -> dict[str, object]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger yielded nothing")

    event = asyncio.run(first_event())
    assert event["status"] == "success", event
    assert event["result"]["checksum"] == result["checksum"]  # type: ignore[index]
