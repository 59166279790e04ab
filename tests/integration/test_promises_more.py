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

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests import servers
from tests.servers import SFTP_SERVER, SSHDServer

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
        chunk_size=MiB,
        strict_order=strict_order,
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
