# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A write-only file wrapper that makes out-of-order writes impossible."""

from __future__ import annotations

import io
from typing import Protocol


class Sink(Protocol):
    """What :class:`OrderedWriter` writes into: anything with ``write`` (a paramiko ``SFTPFile``)."""

    def write(self, data: bytes) -> object: ...


class OrderedWriter(io.RawIOBase):
    """Append-only writer: every write starts exactly where the previous one ended.

    It reports itself as non-seekable, so libraries such as s3transfer take their in-memory
    reordering path instead of ``seek()`` + ``write()`` from many threads, and it refuses any
    attempt to seek or truncate: every write lands at :attr:`position`. Holes in the remote file
    therefore cannot happen, whoever drives the writer.

    :param sink: the file to append to, positioned at ``start``
    :param start: offset of the first byte this writer will write (non-zero when resuming)
    """

    def __init__(self, sink: Sink, start: int = 0) -> None:
        super().__init__()
        self._sink = sink
        self._position = start

    @property
    def position(self) -> int:
        """Return the offset at which the next write will land."""
        return self._position

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raise io.UnsupportedOperation(
            f"OrderedWriter cannot seek (to {offset}, whence={whence}): writes must stay in offset order"
        )

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("OrderedWriter cannot truncate: writes must stay in offset order")

    def tell(self) -> int:
        return self._position

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Append ``data`` at the current position and return its length."""
        if self.closed:
            raise ValueError("write to a closed OrderedWriter")
        length = len(data)
        if length:
            self._sink.write(bytes(data) if not isinstance(data, bytes) else data)
            self._position += length
        return length
