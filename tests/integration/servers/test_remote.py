# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The delivery's SFTP port, both implementations, against every real server of the matrix."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator

import pytest

from airflow_s3sftp.core.remote import PipelinedRemote, Remote, StrictRemote
from airflow_s3sftp.core.session import SFTPSession
from tests.integration.servers.conftest import MatrixServer

MODES = ["pipelined", "strict"]
DATA = os.urandom(3 * 1024 * 1024 + 12345)  # several windows of WRITEs, not a multiple of any size


@pytest.fixture(params=MODES)
def remote(request: pytest.FixtureRequest, sftp_server: MatrixServer) -> Iterator[Remote]:
    client, sftp = sftp_server.connect()
    session = SFTPSession(sftp, close=client.close, endpoint=f"test@127.0.0.1:{sftp_server.port}")
    port = session.remote(strict_order=request.param == "strict", io_timeout=60)
    assert isinstance(port, StrictRemote if request.param == "strict" else PipelinedRemote)
    yield port
    session.close()


def write_all(remote: Remote, path: str, data: bytes, *, look_at: str | None = None) -> object:
    file, target = remote.create(path, exclusive=True, look_at=look_at, size=len(data))
    for begin in range(0, len(data), 100_000):  # odd-sized pieces, as S3 chunks arrive
        file.write(data[begin : begin + 100_000])
    assert file.position == len(data)
    landed = file.finish(sync=True)
    assert landed is not None and landed.st_size == len(data)
    return target


def sha(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_create_write_finish_read_publish_replace(remote: Remote, sftp_server: MatrixServer) -> None:
    local = sftp_server.new_dir()
    directory = sftp_server.remote(local)
    final, temp = f"{directory}/f.bin", f"{directory}/.f.bin.tmp"
    (local / "f.bin").write_bytes(b"the previous version")
    target = write_all(remote, temp, DATA, look_at=final)
    assert target is not None and getattr(target, "st_size", None) == len(b"the previous version")
    assert stat.S_IMODE((local / ".f.bin.tmp").stat().st_mode) == 0o600  # ours alone until published
    assert sha(remote.read(temp, len(DATA))) == hashlib.sha256(DATA).hexdigest()
    how = remote.publish(temp, final, replace=True, backup=f"{directory}/.f.bin.bak", mode=0o640)
    assert how in ("posix-rename", "rename-with-backup")
    assert (local / "f.bin").read_bytes() == DATA
    assert stat.S_IMODE((local / "f.bin").stat().st_mode) == 0o640
    assert sorted(p.name for p in local.iterdir()) == ["f.bin"]
    assert [a.filename for a in remote.listdir(directory)] == ["f.bin"]


def test_reopen_cuts_at_the_offset_and_appends_in_order(remote: Remote, sftp_server: MatrixServer) -> None:
    local = sftp_server.new_dir()
    path = f"{sftp_server.remote(local)}/r.bin"
    file, _ = remote.create(path, exclusive=True)
    file.write(b"x" * 500_000)
    file.finish(sync=False)
    again = remote.reopen(path, 200_000)
    assert again.position == 200_000
    again.write(DATA[200_000:1_000_000])
    landed = again.finish(sync=True)
    assert landed is not None and landed.st_size == 1_000_000
    assert (local / "r.bin").read_bytes() == b"x" * 200_000 + DATA[200_000:1_000_000]


def test_refusals_are_builtin_errors_that_name_the_path(remote: Remote, sftp_server: MatrixServer) -> None:
    local = sftp_server.new_dir()
    directory = sftp_server.remote(local)
    (local / "taken").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="taken"):
        remote.create(f"{directory}/taken", exclusive=True)
    with pytest.raises(FileNotFoundError, match="missing"):
        remote.create(f"{directory}/missing/f", exclusive=True)
    with pytest.raises(FileNotFoundError):
        remote.publish(
            f"{directory}/.gone", f"{directory}/f", replace=True, backup=f"{directory}/.b", mode=None
        )
    write_all(remote, f"{directory}/.new", b"new bytes")
    with pytest.raises(FileExistsError, match="taken"):
        remote.publish(f"{directory}/.new", f"{directory}/taken", replace=False, backup="", mode=None)
    assert (local / "taken").read_bytes() == b"someone else's"  # never replaced, never removed
    assert remote.stat(f"{directory}/nothing") is None
    assert remote.remove(f"{directory}/nothing") is False
    with pytest.raises(FileNotFoundError, match="create_dirs"):
        remote.ensure_directory(f"{directory}/a/b", create=False)
    remote.ensure_directory(f"{directory}/a/b", create=True)
    assert (local / "a" / "b").is_dir()


def test_small_files_are_published_whole(remote: Remote, sftp_server: MatrixServer) -> None:
    local = sftp_server.new_dir()
    directory = sftp_server.remote(local)
    remote.write_small(
        f"{directory}/m.done", b"marker", 0o644, temp=f"{directory}/.m.t", backup=f"{directory}/.m.b"
    )
    remote.write_small(
        f"{directory}/m.done", b"again", 0o644, temp=f"{directory}/.m.t2", backup=f"{directory}/.m.b2"
    )
    assert sorted(p.name for p in local.iterdir()) == ["m.done"]
    assert (local / "m.done").read_bytes() == b"again"
    free = remote.free_bytes(directory)
    assert free is None or free > 0
