# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Every WRITE reply is checked: a refused write in the middle of a pipeline is not lost."""

from __future__ import annotations

from typing import Any

import pytest
from paramiko.sftp import CMD_STATUS, SFTP_FAILURE, SFTP_OK, SFTP_PERMISSION_DENIED

from airflow_s3sftp.core.sftp import PipelinedWriter


class Msg:
    """A reply message: hands out its values in order, as paramiko's ``Message`` getters do."""

    def __init__(self, *values: Any) -> None:
        self._values = list(values)

    def _next(self) -> Any:
        return self._values.pop(0)

    get_int = get_text = _next


class Server:
    """Answers WRITE requests in arrival order; the ``fail_at``-th write (0-based) gets ``code``."""

    def __init__(self, fail_at: int, code: int) -> None:
        self.fail_at, self.code = fail_at, code
        self.queue: list[tuple[Any, int]] = []
        self.writes = 0

    def _async_request(self, owner: Any, kind: int, *args: Any) -> int:
        num = self.writes
        self.writes += 1
        self.queue.append((owner, num))
        return num

    def _read_response(self) -> None:
        owner, num = self.queue.pop(0)
        code = self.code if num == self.fail_at else SFTP_OK
        owner._async_response(CMD_STATUS, Msg(code, "refused" if code != SFTP_OK else ""), num)


def send_all(writer: PipelinedWriter, data: bytes) -> None:
    writer.write(data)
    writer.flush()


class Handle:
    handle = b"h"


@pytest.mark.parametrize("in_flight", [1, 16])
@pytest.mark.parametrize(
    ("code", "error"), [(SFTP_FAILURE, OSError), (SFTP_PERMISSION_DENIED, PermissionError)]
)
def test_a_failed_write_status_in_the_middle_is_raised(in_flight, code, error):
    server = Server(fail_at=5, code=code)
    writer = PipelinedWriter(server, Handle(), start=0, write_size=1024, max_in_flight=in_flight)  # type: ignore[arg-type]
    with pytest.raises(error, match="refused"):
        send_all(writer, b"x" * 1024 * 40)
    assert server.writes > 5


def test_every_ok_reply_passes():
    server = Server(fail_at=-1, code=SFTP_FAILURE)
    writer = PipelinedWriter(server, Handle(), start=0, write_size=1024, max_in_flight=16)  # type: ignore[arg-type]
    writer.write(b"x" * 1024 * 40)
    writer.flush()
    assert server.writes == 40 and server.queue == []


def test_confirmed_covers_only_writes_the_server_acknowledged_and_stops_at_a_failure():
    """The progressive join copies a stripe only below ``confirmed``: it must never run ahead."""
    server = Server(fail_at=6, code=SFTP_FAILURE)
    writer = PipelinedWriter(server, Handle(), start=4096, write_size=1024, max_in_flight=4)  # type: ignore[arg-type]
    writer.write(b"x" * 4096)  # four writes in flight, none answered
    assert writer.confirmed == 4096 and writer.offset == 8192
    server._read_response()
    server._read_response()
    assert writer.confirmed == 4096 + 2048
    writer.write(b"x" * 4096)  # four more: the window fills, so two more answers are read first
    assert writer.confirmed == 8192
    with pytest.raises(OSError, match="refused"):
        writer.flush()  # the seventh write (bytes 10240-11263) fails, the eighth succeeds
    assert writer.confirmed == 10240  # neither the failed write nor the one after it is covered
