# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""A loopback TCP proxy that caps every connection's download rate and adds latency each way.

It stands in for the path to real S3, where one GET stream is capped per connection and
parallel ranged GETs are how fast clients go; loopback moto has no such cap.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

_SLICE = 64 * 1024


class ThrottleProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``, one pair of pumps per connection.

    Bytes from the target to the client are paced to ``rate`` bytes per second per connection;
    bytes in both directions are held for ``latency`` seconds (so a request/response pays twice
    that). The buffer between the two ends of a pump is bounded, so TCP back-pressure still works.

    :param target_port: loopback port to forward to
    :param rate: download cap per connection in bytes per second (0 for none)
    :param latency: one-way delay in seconds
    :param depth: bytes held per direction, in units of 64 KiB; with latency this caps the bytes in
        flight (``depth * 64 KiB`` per ``latency``), so raise it when the proxy itself must not limit
        throughput

    Each chunk is released ``latency`` after it arrived, whatever came before it: the delays
    overlap (a pump sleeps only until the head chunk is due), they are not added up. The bound is
    on bytes, not on reads, so a stream of small reads (SSH packets) is not capped by the count.
    ``connections`` counts the TCP connections accepted so far (SSH connections, for sshd).
    """

    def __init__(self, target_port: int, *, rate: float, latency: float, depth: int = 64) -> None:
        self.target_port = target_port
        self.rate = rate
        self.latency = latency
        self.depth = depth
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self.connections = 0

    def __enter__(self) -> ThrottleProxy:
        threading.Thread(target=self._accept, name="throttle-accept", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            self.connections += 1
            self._pump(client, upstream, rate=0)
            self._pump(upstream, client, rate=self.rate)

    def _pump(self, src: socket.socket, dst: socket.socket, *, rate: float) -> None:
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()
        limit, in_hand = self.depth * _SLICE, [0]  # bytes held, bounded: TCP back-pressure still works
        room = threading.Condition()

        def receive() -> None:
            with contextlib.suppress(OSError):
                while True:
                    with room:
                        room.wait_for(lambda: in_hand[0] < limit)
                    data = src.recv(_SLICE)
                    with room:
                        in_hand[0] += len(data)
                    held.put((time.monotonic() + self.latency, data))
                    if not data:
                        return
            held.put((time.monotonic() + self.latency, b""))

        def send() -> None:
            next_slot = time.monotonic()
            try:
                while True:
                    due, data = held.get()
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    with room:
                        in_hand[0] -= len(data)
                        room.notify()
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    if rate:
                        next_slot = max(next_slot, time.monotonic())
                        if (wait := next_slot - time.monotonic()) > 0:
                            time.sleep(wait)
                        next_slot += len(data) / rate
                    dst.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.close()

        threading.Thread(target=receive, name="throttle-recv", daemon=True).start()
        threading.Thread(target=send, name="throttle-send", daemon=True).start()
