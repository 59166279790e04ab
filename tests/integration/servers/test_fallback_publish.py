# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The three-step publish of servers without posix-rename, watched and cut on a real ProFTPD.

Steps: the previous version moved aside, our temp file renamed to the final name, the previous
version removed. The README promises that the final name never holds a partial file, only the
old or the new complete one (or, for a moment, nothing); a cut at any step is retried to the same end.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.integration.cut_proxy import CutWhen
from tests.integration.servers.conftest import MatrixServer, conn_id

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FinalNameObserver(threading.Thread):
    """Reads the final name on the server's disk in a loop; every content seen must be a complete one."""

    def __init__(self, path: Path, allowed: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.path, self.allowed = path, {sha(b) for b in allowed}
        self.stop = threading.Event()
        self.seen: list[str] = []  # digests in the order they were first seen, "absent" for no file
        self.violations: list[str] = []
        self.reads = 0
        self._cycles = 0
        self._cycled = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                content = self.path.read_bytes()
            except FileNotFoundError:
                state = "absent"
            else:
                self.reads += 1
                state = sha(content)
                if state not in self.allowed:
                    self.violations.append(f"{len(content)} bytes that were never a complete version")
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)
            with self._cycled:
                self._cycles += 1
                self._cycled.notify_all()

    def look_once_more(self) -> None:
        """Return once a whole look at the final name began after this call (e.g. after the publish)."""
        with self._cycled:
            target = self._cycles + 2
            assert self._cycled.wait_for(lambda: self._cycles >= target, timeout=30), "the observer stopped"

    def __enter__(self) -> FinalNameObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def deliver(server: MatrixServer, bucket: str, target: Path, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sftp_conn_id", conn_id(server))
    op = S3ToSFTPStreamOperator(
        task_id="deliver", s3_bucket=bucket, s3_key="f", sftp_path=server.remote(target), **kwargs
    )
    return op.execute(context={})  # type: ignore[arg-type,no-any-return]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def old_and_new(proftpd_without_posix_rename, s3, bucket):  # type: ignore[no-untyped-def]
    server = proftpd_without_posix_rename
    directory = server.new_dir()
    old, new = os.urandom(3 * MiB + 1), os.urandom(4 * MiB + 3)
    (directory / "f").write_bytes(old)
    os.chown(directory / "f", *server.owner)
    s3.put_object(Bucket=bucket, Key="f", Body=new)
    return server, directory, old, new


def test_the_fallback_never_shows_a_partial_file_under_the_final_name(old_and_new, bucket):
    server, directory, old, new = old_and_new
    with FinalNameObserver(directory / "f", [old, new]) as observer:
        result = deliver(server, bucket, directory / "f")
        observer.look_once_more()
    assert result["published_with"] == "rename-with-backup"
    assert observer.violations == []
    assert observer.reads > 0
    # It watched the whole publish: the old version first, the new one last (a moment of "absent" between).
    assert observer.seen[0] == sha(old)
    assert observer.seen[-1] == sha(new)
    assert set(observer.seen) <= {sha(old), sha(new), "absent"}
    assert names(directory) == ["f"]


def _backup(directory: Path) -> Path | None:
    return next(directory.glob(".f.*.s3sftp-old"), None)


def _temp(directory: Path) -> Path | None:
    return next(directory.glob(".f.*.s3sftp-part"), None)


# The first reply after each step happened on the server's disk is the reply to that step: cut it there.
STEPS = {
    "moved-aside": lambda d, old, new: _backup(d) is not None and not (d / "f").exists(),
    "renamed": lambda d, old, new: _backup(d) is not None and _temp(d) is None and (d / "f").exists(),
    "old-removed": lambda d, old, new: (
        _backup(d) is None
        and _temp(d) is None
        and (d / "f").exists()
        and (d / "f").stat().st_size == len(new)
    ),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_cut_after_each_step_of_the_fallback_ends_with_the_new_file_and_no_leftover(
    old_and_new, bucket, set_connection, step
):
    server, directory, old, new = old_and_new
    condition = STEPS[step]
    with (
        CutWhen(server.port, when=lambda: condition(directory, old, new), direction="down") as proxy,
        FinalNameObserver(directory / "f", [old, new]) as observer,
    ):
        faulty = set_connection(f"sftp_cut_{step.replace('-', '_')}", server.conn | {"port": proxy.port})
        result = deliver(
            server,
            bucket,
            directory / "f",
            sftp_conn_id=faulty,
            tuning={"connection_retry_delay": 0.1, "io_timeout": 5},
        )
        observer.look_once_more()
    assert proxy.faults == 1
    # Once the new file is published, a lost reply to the last step costs nothing but a warning.
    assert result["attempts"] == (1 if step == "old-removed" else 2)
    assert observer.violations == []
    assert observer.seen[-1] == sha(new)
    assert (directory / "f").read_bytes() == new
    assert names(directory) == ["f"]
