# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""StripedFile: the join copies a stripe only once the server acknowledged it, and in offset order."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from airflow_s3sftp.core.parts import StripedFile, Striping

KiB = 1024


class LaggingFile:
    """A part file whose writes the "server" acknowledges only ``lag`` bytes behind, all at finish."""

    def __init__(self, path: str, lag: int) -> None:
        self.path, self.data, self.lag, self.finished = path, bytearray(), lag, False
        self.lock = threading.Lock()

    @property
    def position(self) -> int:
        return len(self.data)

    @property
    def confirmed(self) -> int:
        with self.lock:
            return len(self.data) if self.finished else max(0, len(self.data) - self.lag)

    def write(self, data: bytes) -> int:
        with self.lock:
            self.data += data
        return len(data)

    def finish(self, *, sync: bool) -> Any:
        with self.lock:
            self.finished = True
        return type("Attrs", (), {"st_size": len(self.data)})()

    def server_time(self) -> float | None:
        return None

    def checkpoint(self, on_synced: Any) -> None:
        pass

    def abort(self) -> None:
        pass


class Joiner:
    def __init__(self, target: LaggingFile, parts: list[LaggingFile]) -> None:
        self.target, self.parts, self.finished = target, parts, False
        self.copies: list[tuple[int, int, int, int, int]] = []

    def copy(self, part: int, offset: int, length: int, at: int) -> None:
        source = self.parts[part]
        self.copies.append((part, offset, length, at, source.confirmed))
        assert at == len(self.target.data), "a copy below or beyond the temp file's end"
        assert offset + length <= source.confirmed, "a stripe copied before the server acknowledged it"
        self.target.data += source.data[offset : offset + length]

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        pass


class Remote:
    def __init__(self, parts: list[LaggingFile]) -> None:
        self.parts = parts
        self.joiners: list[Joiner] = []

    def joiner(self, target: LaggingFile, paths: list[str]) -> Joiner:
        assert paths == [part.path for part in self.parts]
        self.joiners.append(Joiner(target, self.parts))
        return self.joiners[-1]


@pytest.mark.parametrize("lag", [0, 3 * KiB, 64 * KiB])
def test_stripes_are_copied_in_order_and_only_once_acknowledged(lag: int) -> None:
    data = os.urandom(40 * KiB + 17)
    striping = Striping(channels=3, stripe_size=2 * KiB)
    target = LaggingFile("temp", 0)
    parts = [LaggingFile(f"part{n}", lag) for n in range(3)]
    remote = Remote(parts)
    striped = StripedFile(remote, target, parts, striping, len(data), budget=4 * KiB)  # type: ignore[arg-type]
    for begin in range(0, len(data), 1500):  # chunks across stripe boundaries
        striped.write(data[begin : begin + 1500])
    striped.finish(sync=True)
    striped.abort()
    (joiner,) = remote.joiners
    assert joiner.finished
    assert bytes(target.data) == data
    assert [at for *_, at, _ in joiner.copies] == [at for *_, at in striping.pieces(len(data))]
