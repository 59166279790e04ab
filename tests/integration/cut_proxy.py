# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A FaultyProxy that cuts a connection when a condition on the server's files becomes true."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tests.faults import FaultyProxy


class CutWhen(FaultyProxy):
    """Cut the first connection at the first chunk in ``direction`` that arrives once ``when()`` is true.

    The chunk that finds ``when()`` true is dropped, not forwarded, ``on_fault`` runs, and both
    sockets close; every later connection passes untouched. Byte offsets cannot name "after the last write landed" or
    "the rename's reply" independently of how many requests a client sends, but the server's
    files can: a client sends nothing after its pipelined writes until every write is
    acknowledged, so the first upstream chunk after the file holds all its bytes is the first
    request of the verify/publish phase, and the first downstream chunk after the final name
    appeared carries the reply to the rename.
    """

    def __init__(
        self,
        target_port: int,
        *,
        when: Callable[[], bool],
        direction: str = "up",
        on_fault: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(target_port, after=0, mode="cut", direction=direction, on_fault=on_fault)
        self.when = when
        self._fault_lock = threading.Lock()

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if counted and self.faults < self.faulty and self.when():
                    with self._fault_lock:
                        self.faults += 1
                    if self.on_fault:
                        self.on_fault()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
