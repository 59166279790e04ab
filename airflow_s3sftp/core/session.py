# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTP sessions that serve many objects in turn, and the small pool that hands them out."""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING

import paramiko
from paramiko.sftp import CMD_EXTENDED

from airflow_s3sftp.core.sftp import (
    DEFAULT_WRITE_SIZE,
    Replies,
    advertised_write_limit,
    write_limit_of,
    write_size_for,
)
from airflow_s3sftp.exceptions import ConnectionLostError, is_final

if TYPE_CHECKING:
    from collections.abc import Callable

    from paramiko import SFTPClient

    from airflow_s3sftp.core.remote import Remote
    from airflow_s3sftp.core.servers import ServerProfile

log = logging.getLogger(__name__)


class SFTPSession:
    """One SFTP session on one SSH connection, and what was learnt about its server.

    Built by the hook (which knows connections and credentials); used by the core, which knows
    neither. A session serves one delivery at a time and many deliveries in turn.

    :param sftp: the open SFTP client
    :param close: closes the session and its SSH connection
    :param endpoint: ``user@host:port``, for messages (never a secret)
    :param writes_in_order: whether the server applies pipelined writes in arrival order; None
        asks :func:`airflow_s3sftp.core.servers.detect_server` on first use
    """

    def __init__(
        self,
        sftp: SFTPClient,
        *,
        close: Callable[[], None],
        endpoint: str,
        writes_in_order: bool | None = None,
    ) -> None:
        self.sftp = sftp
        self.endpoint = endpoint
        self._close = close
        self._writes_in_order = writes_in_order
        self._lanes: list[SFTPClient] = []
        self._side: SFTPClient | None = None
        self._lanes_refused = False
        self._timeout: float | None = None
        self._limit_asked: tuple[Replies, int] | None = None  # limits@openssh.com sent, not yet read
        self.closed = False

    @cached_property
    def write_size(self) -> int:
        """Return the largest WRITE the server accepts (asked once per session)."""
        return write_size_for(self.write_limit)

    @cached_property
    def profile(self) -> ServerProfile:
        """Return what the server is and can do (asked once per session, on a channel of its own)."""
        from airflow_s3sftp.core.servers import detect_server

        return detect_server(self.sftp)

    @property
    def writes_in_order(self) -> bool:
        """Return whether pipelined writes land in offset order on this server."""
        if self._writes_in_order is None:
            self._writes_in_order = self.profile.pipelined_writes_in_order
        return self._writes_in_order

    @cached_property
    def round_trip(self) -> float:
        """Return the round-trip time of one SFTP request in seconds (the best of two, once per session)."""
        samples = []
        for _ in range(2):
            begin = time.monotonic()
            self.sftp.normalize(".")
            samples.append(time.monotonic() - begin)
        return min(samples)

    def side_channel(self) -> SFTPClient:
        """Return an SFTP channel of its own for small writes beside a stream (opened once, kept)."""
        if self._side is None:
            transport = self.sftp.get_channel().get_transport()  # type: ignore[union-attr]
            side = paramiko.SFTPClient.from_transport(transport)
            if side is None:
                raise OSError(f"{self.endpoint} refused one more SFTP channel")
            channel = side.get_channel()
            if channel is not None and self._timeout is not None:
                channel.settimeout(self._timeout)
            self._side = side
        return self._side

    def lanes(self, count: int) -> list[SFTPClient]:
        """Return up to ``count`` SFTP channels of their own on this connection, opened once and kept.

        The missing channels are opened at once, each on a thread of its own: opening one costs
        three round trips (channel open, subsystem, SFTP version), not three per channel. The
        server may grant fewer (OpenSSH's ``MaxSessions`` defaults to 10 channels per
        connection); what it refuses is not asked again in this session.
        """
        missing = 0 if self._lanes_refused else max(0, count - len(self._lanes))
        if missing:
            transport = self.sftp.get_channel().get_transport()  # type: ignore[union-attr]
            opened: list[SFTPClient | BaseException | None] = [None] * missing

            def open_one(index: int) -> None:
                try:
                    opened[index] = paramiko.SFTPClient.from_transport(transport)
                except (paramiko.SSHException, OSError) as err:
                    opened[index] = err

            threads = [
                threading.Thread(
                    target=open_one, args=(index,), name=f"s3sftp-open-lane-{index}", daemon=True
                )
                for index in range(missing)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            refusals = [item for item in opened if not isinstance(item, paramiko.SFTPClient)]
            for lane in opened:
                if isinstance(lane, paramiko.SFTPClient):
                    channel = lane.get_channel()
                    if channel is not None and self._timeout is not None:
                        channel.settimeout(self._timeout)
                    self._lanes.append(lane)
            if refusals:
                self._lanes_refused = True
                log.info(
                    "%s granted %s extra SFTP channels of the %s asked for (%s)",
                    self.endpoint,
                    len(self._lanes),
                    count,
                    next((err for err in refusals if err is not None), "refused"),
                )
        return self._lanes[:count]

    def remote(
        self,
        *,
        strict_order: bool | None = None,
        write_size: int | None = None,
        max_in_flight: int = 32,
        io_timeout: float | None = None,
    ) -> Remote:
        """Return the SFTP port of this session for one delivery, in the wire mode the server needs.

        :param strict_order: one request at a time; None decides by what the server is known to do
        :param write_size: bytes per WRITE; None asks the server (``limits@openssh.com``)
        :param max_in_flight: WRITE requests outstanding at most when pipelined
        :param io_timeout: seconds a request may stall before the connection counts as lost
        """
        from airflow_s3sftp.core.remote import PipelinedRemote, StrictRemote

        if io_timeout is not None:
            self.set_timeout(io_timeout)
        if write_size is None or write_size > DEFAULT_WRITE_SIZE:
            self._ask_write_limit()
        strict = strict_order if strict_order is not None else not self.writes_in_order
        kind = StrictRemote if strict else PipelinedRemote
        return kind(
            self.sftp,
            endpoint=self.endpoint,
            lost=self.lost,
            write_size=self._write_size(write_size),
            max_in_flight=max_in_flight,
            session=self,
        )

    def _write_size(self, wanted: int | None) -> int:
        """Return the bytes per WRITE: ``wanted`` capped to what the server takes, else its own size."""
        if wanted is None:
            return self.write_size
        if wanted <= DEFAULT_WRITE_SIZE:
            return wanted  # every SFTP server must take 32 KiB writes
        limit = self.write_limit
        if limit is not None and wanted > limit:
            log.warning(
                "write_size=%s is above the %s bytes %s accepts in one WRITE (limits@openssh.com): using %s",
                wanted,
                limit,
                self.endpoint,
                limit,
            )
            return limit
        return wanted

    @cached_property
    def write_limit(self) -> int | None:
        """Return the largest WRITE the server advertises (``limits@openssh.com``), or None."""
        if self._limit_asked is not None:
            replies, num = self._limit_asked
            self._limit_asked = None
            return write_limit_of(*replies.wait(num))
        return advertised_write_limit(self.sftp)

    def _ask_write_limit(self) -> None:
        """Send ``limits@openssh.com`` without waiting when the server's profile is still to be probed.

        The probe runs on a channel of its own (three round trips); the answer arrives meanwhile,
        so the write size costs no round trip of its own.
        """
        if "write_limit" in self.__dict__ or self._limit_asked is not None:
            return
        if self._writes_in_order is not None or "profile" in self.__dict__:
            return  # nothing to overlap with: asked when needed
        replies = Replies(self.sftp)
        self._limit_asked = (replies, replies.send(CMD_EXTENDED, "limits@openssh.com"))

    def set_timeout(self, seconds: float) -> None:
        """Make a request that stalls longer than ``seconds`` fail instead of hanging."""
        self._timeout = seconds
        for sftp in (self.sftp, *self._lanes, *([self._side] if self._side else [])):
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(seconds)

    def alive(self) -> bool:
        """Return True while the SSH connection is up."""
        if self.closed:
            return False
        channel = self.sftp.get_channel()
        if channel is None or channel.closed:
            return False
        transport = channel.get_transport()
        return transport is not None and transport.is_active()

    def lost(self, err: BaseException) -> bool:
        """Return True when ``err`` means this session's connection is gone or stalled."""
        # paramiko raises SSHException("Server connection dropped") before it marks the transport
        # inactive; within a session (the login is long done) an SSHException is the transport's.
        if isinstance(
            err, (socket.timeout, TimeoutError, EOFError, ConnectionLostError, paramiko.SSHException)
        ):
            return True
        return not self.alive()

    def close(self) -> None:
        """Close the session and its SSH connection (idempotent, never raises)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._close()
        except Exception:  # closing a dead connection may fail; nothing is left to do
            log.debug("Closing the SFTP session to %s failed", self.endpoint, exc_info=True)


class SessionPool:
    """Up to ``size`` SFTP sessions, opened on demand and reused by the deliveries of one task.

    :meth:`acquire` returns an idle live session or opens a new one (blocking while ``size`` are
    busy); :meth:`release` returns a healthy session for the next delivery; :meth:`discard`
    closes a broken one so that the next :meth:`acquire` reconnects.

    A good guest on the partner's server: the first session opens alone, and more open only once
    one has succeeded. A final failure (:func:`~airflow_s3sftp.exceptions.is_final`: a refused
    login, a host key, a missing key file) is never attempted again: every later :meth:`acquire`
    raises it without connecting. When the server refuses an additional session (throttling,
    ``MaxStartups``, ``MaxSessions``) while others are open, the pool keeps the sessions it has
    instead of failing the object that asked.

    :param connect: opens a new session
    :param size: sessions open at most at once
    """

    def __init__(self, connect: Callable[[], SFTPSession], size: int = 1) -> None:
        if size <= 0:
            raise ValueError(f"A session pool needs a positive size (got {size})")
        self._connect = connect
        self._size = size
        self._idle: list[SFTPSession] = []
        self._live = 0  # sessions open now, idle or busy
        self._connecting = 0
        self._final: BaseException | None = None
        self._cond = threading.Condition()
        self.opened = 0  # sessions opened over the pool's life, for the record and benchmarks

    @property
    def size(self) -> int:
        """Return how many sessions may be open at once (less than asked when the server refused more)."""
        return self._size

    def acquire(self) -> SFTPSession:
        """Return a session for the caller's exclusive use until :meth:`release` or :meth:`discard`."""
        with self._cond:
            while True:
                if self._final is not None:
                    raise self._final
                if self._idle:
                    session = self._idle.pop()
                    if session.alive():
                        return session
                    self._live -= 1
                    session.close()
                    continue
                # Until one session is open, at most one connection attempt is under way.
                alone = self._live == 0 and self._connecting > 0
                if not alone and self._live + self._connecting < self._size:
                    break
                self._cond.wait()
            self._connecting += 1
        try:
            session = self._connect()
        except BaseException as err:
            with self._cond:
                self._connecting -= 1
                self._cond.notify_all()
                if is_final(err):
                    self._final = err
                    raise
                if self._live == 0 or not isinstance(err, ConnectionError):
                    raise
                # The server refused one more session while others work: keep those.
                self._size = self._live
                log.info("The SFTP server refused another session (%s); continuing with %s", err, self._live)
            return self.acquire()
        with self._cond:
            self._connecting -= 1
            self._live += 1
            self.opened += 1
            self._cond.notify_all()
        return session

    def release(self, session: SFTPSession) -> None:
        """Give a healthy session back for the next delivery."""
        if session.alive():
            with self._cond:
                self._idle.append(session)
                self._cond.notify_all()
        else:
            self.discard(session)

    def discard(self, session: SFTPSession) -> None:
        """Close a broken session; the next :meth:`acquire` opens a fresh one."""
        session.close()
        with self._cond:
            self._live -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Close every idle session."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for session in idle:
            session.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
