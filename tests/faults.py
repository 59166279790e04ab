"""A loopback TCP proxy that breaks connections on purpose: cut or stall after N bytes."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class FaultyProxy:
    """Forward 127.0.0.1:<port> to a target port, breaking up to ``faulty`` connections.

    Once ``after`` bytes have flowed through one connection in ``direction`` ("up": client to
    server, "down": server to client), that connection is cut (both sockets closed) or stalled
    (no more bytes forwarded either way, sockets left open), until ``faulty`` faults have fired;
    after that every connection passes through untouched. ``on_fault`` runs
    when the fault fires, e.g. to change the source while a client is reconnecting.
    """

    def __init__(
        self,
        target_port: int,
        *,
        after: int,
        mode: str = "cut",
        direction: str = "up",
        faulty: int = 1,
        on_fault: Callable[[], None] | None = None,
    ) -> None:
        if mode not in ("cut", "stall") or direction not in ("up", "down"):
            raise ValueError("mode is 'cut' or 'stall', direction is 'up' or 'down'")
        self.target_port, self.after, self.mode, self.direction = target_port, after, mode, direction
        self.faulty, self.on_fault = faulty, on_fault
        self.connections = 0
        self.faults = 0
        self._closing = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            self.connections += 1
            state = {"bytes": 0, "tripped": False}
            lock = threading.Lock()
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(
                    target=self._pump,
                    args=(src, dst, direction == self.direction, state, lock, (client, upstream)),
                    daemon=True,
                ).start()

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        try:
            while not self._closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if state["tripped"]:
                    if self.mode == "stall":
                        self._closing.wait()
                    break
                if counted and self.faults < self.faulty:
                    with lock:
                        room = self.after - state["bytes"]
                        state["bytes"] += len(data)
                        if state["bytes"] >= self.after:
                            data = data[: max(room, 0)]
                            state["tripped"] = True
                    if data:
                        dst.sendall(data)
                    if state["tripped"]:
                        self.faults += 1
                        if self.on_fault:
                            self.on_fault()
                        if self.mode == "stall":
                            self._closing.wait()
                        break
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not (self.mode == "stall" and state["tripped"]):
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        sock.close()
