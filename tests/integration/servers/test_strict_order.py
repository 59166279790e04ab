# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""strict_order watched on Green End, the server of the matrix that applies requests in parallel.

Final bytes cannot show order; two observers can: one on the wire (how many WRITEs the delivery had in
flight, in which order the server answered them) and one on the server's disk (the temp file is at
every moment a prefix of the object, never a file with a hole).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.core import remote as remote_module
from airflow_s3sftp.core.sftp import PipelinedWriter
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.integration.servers.conftest import MatrixServer, _start
from testservers.processes import conn_env

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def greenend(test_user: None) -> Iterator[MatrixServer]:
    for server in _start("greenend"):
        name, value = conn_env("sftp_greenend_order", server.conn)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(name, value)
            yield server


class WireRecorder(PipelinedWriter):
    """The delivery's own writer, recording requests in flight at each WRITE and the order of replies."""

    sent: list[int]
    replies: list[int]
    in_flight: list[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        WireRecorder.instances.append(self)
        self.sent, self.replies, self.in_flight = [], [], []

    instances: list[WireRecorder] = []

    def write(self, data: bytes) -> int:
        original = self._sftp._async_request  # type: ignore[attr-defined]

        def send(*args: Any) -> int:
            num: int = original(*args)
            self.sent.append(num)
            self.in_flight.append(len(self._outstanding) + 1)
            return num

        self._sftp._async_request = send  # type: ignore[attr-defined]
        try:
            return super().write(data)
        finally:
            self._sftp._async_request = original  # type: ignore[attr-defined]

    def _async_response(self, kind: int, msg: Any, num: int) -> None:
        self.replies.append(num)
        super()._async_response(kind, msg, num)


class PrefixObserver(threading.Thread):
    """Checks, on the server's disk, that the temp file is always a prefix of ``data`` (no hole)."""

    def __init__(self, directory: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.directory, self.data = directory, data
        self.stop = threading.Event()
        self.looks: list[int] = []  # sizes of the temp file the observer compared
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            temp = next(self.directory.glob(".*.s3sftp-part"), None)
            if temp is None:
                continue
            try:
                content = temp.read_bytes()
            except FileNotFoundError:
                continue
            self.looks.append(len(content))
            if content != self.data[: len(content)]:
                hole = next(i for i, (a, b) in enumerate(zip(content, self.data, strict=False)) if a != b)
                self.violations.append(f"temp file of {len(content)} bytes differs at byte {hole}")

    def __enter__(self) -> PrefixObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[WireRecorder]:
    WireRecorder.instances = []
    monkeypatch.setattr(remote_module, "PipelinedWriter", WireRecorder)
    return WireRecorder


@pytest.mark.parametrize("strict_order", [None, True], ids=["default", "strict"])
def test_green_end_gets_one_write_in_flight_and_the_file_is_always_a_prefix(
    greenend, s3, bucket, recorder, strict_order
):
    data = os.urandom(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    directory = greenend.new_dir()
    with PrefixObserver(directory, data) as observer:
        S3ToSFTPStreamOperator(
            task_id="deliver",
            s3_bucket=bucket,
            s3_key="k",
            sftp_path=greenend.remote(directory / "k"),
            sftp_conn_id="sftp_greenend_order",
            tuning={"strict_order": strict_order, "write_size": 32 * 1024},
        ).execute(context={})  # type: ignore[arg-type]
    (writer,) = recorder.instances
    assert len(writer.sent) == -(-len(data) // (32 * 1024))  # every WRITE was seen...
    assert sorted(writer.replies) == sorted(writer.sent)  # ...and every reply to it
    assert max(writer.in_flight) == 1
    assert writer.replies == writer.sent  # answered in the order sent
    assert observer.violations == []
    assert observer.looks, "the observer never saw the temp file"
    assert (directory / "k").read_bytes() == data


def test_green_end_with_strict_order_off_pipelines_so_the_recorder_can_see_it(greenend, s3, bucket, recorder):
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    directory = greenend.new_dir()
    S3ToSFTPStreamOperator(
        task_id="deliver",
        s3_bucket=bucket,
        s3_key="k",
        sftp_path=greenend.remote(directory / "k"),
        sftp_conn_id="sftp_greenend_order",
        tuning={"strict_order": False, "write_size": 32 * 1024},
    ).execute(context={})  # type: ignore[arg-type]
    (writer,) = recorder.instances
    assert len(writer.sent) == len(data) // (32 * 1024)
    assert max(writer.in_flight) > 1
    assert (directory / "k").read_bytes() == data
