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
from typing import TYPE_CHECKING, TypeVar

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

_T = TypeVar("_T")

#: Sessions share connections only on a link with at least this round trip (seconds): below, the
#: client's CPU, not the round trips, bounds a small file (measured on loopback: 4 sessions on 4
#: connections moved 200 x 64 KiB at 108 files/s, 16 on 4 at 58), and more threads only contend.
SHARE_MIN_ROUND_TRIP = 0.010

#: Seconds to wait for the server to open one more SFTP channel when no I/O timeout is set yet.
_CHANNEL_OPEN_TIMEOUT = 60.0


class ChannelRefusedError(ConnectionError):
    """The server refused one more SFTP channel on a live SSH connection (OpenSSH's ``MaxSessions``)."""


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
        origin: SFTPSession | None = None,
    ) -> None:
        self.sftp = sftp
        self.endpoint = endpoint
        self._close = close
        self._writes_in_order = writes_in_order
        self._origin = origin  # the connection's first session: what it learnt holds for this one too
        self._learning = threading.Lock()
        self._lanes: list[SFTPClient] = []
        self._side: SFTPClient | None = None
        self._lanes_refused = False
        self._timeout: float | None = None
        self._limit_asked: tuple[Replies, int] | None = None  # limits@openssh.com sent, not yet read
        self.closed = False
        self._connection_closed = False

    def _learnt(self, name: str, ask: Callable[[], _T]) -> _T:
        """Return what this connection learnt as ``name``, else ask on this channel and keep it."""
        origin = self._origin or self
        known = origin.__dict__
        if name not in known:
            with origin._learning:  # one question at a time: a probe may take a channel of its own
                if name not in known:
                    known[name] = ask()
        value: _T = known[name]
        return value

    @property
    def write_size(self) -> int:
        """Return the largest WRITE the server accepts (asked once per connection)."""
        return write_size_for(self.write_limit)

    @property
    def profile(self) -> ServerProfile:
        """Return what the server is and can do (asked once per connection, on a channel of its own)."""
        from airflow_s3sftp.core.servers import detect_server

        return self._learnt("_profile_learnt", lambda: detect_server(self.sftp))

    @property
    def writes_in_order(self) -> bool:
        """Return whether pipelined writes land in offset order on this server."""
        if self._writes_in_order is None:
            self._writes_in_order = self.profile.pipelined_writes_in_order
        return self._writes_in_order

    @property
    def round_trip(self) -> float:
        """Return the round-trip time of one SFTP request (seconds, the best of two, once per connection)."""

        def measure() -> float:
            samples = []
            for _ in range(2):
                begin = time.monotonic()
                self.sftp.normalize(".")
                samples.append(time.monotonic() - begin)
            return min(samples)

        return self._learnt("_round_trip_learnt", measure)

    def shares_connection(self) -> bool:
        """Return whether sessions on several SFTP channels of this connection may work at once."""
        return self.profile.channels_side_by_side

    def open_channel(self) -> SFTPSession:
        """Return a new session on an SFTP channel of its own on this session's SSH connection.

        It shares what this session learnt about the server; closing it closes its channel only.
        Raises :class:`ChannelRefusedError` when the server refuses the channel (OpenSSH's
        ``MaxSessions``) and :class:`~airflow_s3sftp.exceptions.ConnectionLostError` when the
        connection is gone.
        """
        origin = self._origin or self
        transport = self.sftp.get_channel().get_transport()  # type: ignore[union-attr]
        timeout = origin._timeout or _CHANNEL_OPEN_TIMEOUT
        begin = time.monotonic()
        try:
            channel = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as err:
            # paramiko keeps one failure per transport: of two channels refused at once, one sees
            # ChannelException and the other a bare SSHException. A live connection that answered
            # in time refused it; one that did not answer is stalled.
            answered = time.monotonic() - begin < timeout
            if isinstance(err, paramiko.SSHException) and transport.is_active() and answered:
                raise ChannelRefusedError(f"{self.endpoint} refused one more SFTP channel: {err}") from err
            raise ConnectionLostError(
                f"connection to {self.endpoint} lost while opening an SFTP channel: {err}"
            ) from err
        try:
            if origin._timeout is not None:
                channel.settimeout(origin._timeout)
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
        except (paramiko.SSHException, OSError, EOFError) as err:
            channel.close()
            if transport.is_active() and not isinstance(err, (socket.timeout, TimeoutError)):
                raise ChannelRefusedError(
                    f"{self.endpoint} refused an SFTP subsystem on one more channel: {err}"
                ) from err
            raise ConnectionLostError(
                f"connection to {self.endpoint} lost while opening an SFTP channel: {err}"
            ) from err
        child = SFTPSession(
            sftp,
            close=lambda: None,
            endpoint=self.endpoint,
            writes_in_order=origin._writes_in_order,
            origin=origin,
        )
        child._timeout = origin._timeout
        return child

    def side_channel(self) -> SFTPClient | None:
        """Return an SFTP channel of its own for small writes beside a stream (opened once, kept).

        None when the server refuses one more channel (OpenSSH's ``MaxSessions``, with other
        sessions on this connection): the caller writes on its own channel instead.
        """
        if self._side is None:
            transport = self.sftp.get_channel().get_transport()  # type: ignore[union-attr]
            try:
                side = paramiko.SFTPClient.from_transport(transport)
            except paramiko.ChannelException as err:
                log.info(
                    "%s refused a side SFTP channel (%s): writing beside the stream inline",
                    self.endpoint,
                    err,
                )
                return None
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

    @property
    def write_limit(self) -> int | None:
        """Return the largest WRITE the server advertises (``limits@openssh.com``), or None."""

        def ask() -> int | None:
            if self._limit_asked is not None:
                replies, num = self._limit_asked
                self._limit_asked = None
                return write_limit_of(*replies.wait(num))
            return advertised_write_limit(self.sftp)

        return self._learnt("_write_limit_learnt", ask)

    def _ask_write_limit(self) -> None:
        """Send ``limits@openssh.com`` without waiting when the server's profile is still to be probed.

        The probe runs on a channel of its own (three round trips); the answer arrives meanwhile,
        so the write size costs no round trip of its own.
        """
        known = (self._origin or self).__dict__
        if "_write_limit_learnt" in known or self._limit_asked is not None:
            return
        if self._writes_in_order is not None or "_profile_learnt" in known:
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

    def close_channel(self) -> None:
        """Close this session's SFTP channels and leave its SSH connection open (idempotent, never raises)."""
        if self.closed:
            return
        self.closed = True
        for sftp in (*self._lanes, *([self._side] if self._side else []), self.sftp):
            try:
                sftp.close()
            except Exception:  # a dead channel may fail to close; nothing is left to do
                log.debug("Closing an SFTP channel to %s failed", self.endpoint, exc_info=True)
        self._lanes, self._side = [], None

    def close(self) -> None:
        """Close the session and its SSH connection (idempotent, never raises).

        A session from :meth:`open_channel` closes its channels only.
        """
        if self._connection_closed:
            return
        self._connection_closed = True
        if self._origin is not None:
            self.close_channel()
            return
        self.closed = True
        try:
            self._close()
        except Exception:  # closing a dead connection may fail; nothing is left to do
            log.debug("Closing the SFTP session to %s failed", self.endpoint, exc_info=True)


def _run(closing: list[Callable[[], None]]) -> None:
    """Run the closers (each idempotent and never raising) outside the pool's lock."""
    for close in closing:
        close()


class _Connection:
    """One SSH connection of a pool: its first session, and how many SFTP channels it has now."""

    def __init__(self, base: SFTPSession) -> None:
        self.base = base
        self.channels = 1  # open sessions on it (idle or busy), the base's own channel included
        self.opening = 0  # channels being opened on it now
        self.cap: int | None = None  # channels the server granted at most (it refused one more)
        self.retired = False  # a session on it broke: no new channel on it, closed with its last


class SessionPool:
    """Up to ``size`` SFTP sessions on at most ``max_connections`` SSH connections, reused by one task.

    :meth:`acquire` returns an idle live session or opens a new one (blocking while ``size`` are
    busy); :meth:`release` returns a healthy session for the next delivery; :meth:`discard`
    closes a broken one so that the next :meth:`acquire` reconnects.

    With ``max_connections`` below ``size``, a session is an SFTP channel of its own on one of the
    connections (:meth:`SFTPSession.open_channel`), spread evenly, so that many objects move at
    once over few connections: each object still has its channel to itself, and the round trips of
    one overlap those of the others. A session that broke retires its connection: no new channel
    opens on it, and it closes with its last channel; the next session opens a fresh connection.

    A good guest on the partner's server: the first connection opens alone, and more open only once
    one has succeeded. A final failure (:func:`~airflow_s3sftp.exceptions.is_final`: a refused
    login, a host key, a missing key file) is never attempted again: every later :meth:`acquire`
    raises it without connecting. When the server refuses an additional connection (throttling,
    ``MaxStartups``) while others are open, or one more channel on a connection (``MaxSessions``),
    the pool keeps what it has (logged once) instead of failing the object that asked; a refused
    channel is no login.

    :param connect: opens a new session on a new SSH connection
    :param size: sessions open at most at once
    :param max_connections: SSH connections open at most at once; None for one per session
    """

    def __init__(
        self, connect: Callable[[], SFTPSession], size: int = 1, max_connections: int | None = None
    ) -> None:
        if size <= 0:
            raise ValueError(f"A session pool needs a positive size (got {size})")
        if max_connections is not None and max_connections <= 0:
            raise ValueError(f"A session pool needs a positive max_connections (got {max_connections})")
        self._connect = connect
        self._size = size
        self._channels = max_connections is not None and max_connections < size  # sessions share connections
        self._max_connections = min(size, max_connections or size)
        self._idle: list[SFTPSession] = []
        self._connections: list[_Connection] = []
        self._of: dict[int, _Connection] = {}  # id(session) -> its connection, for open sessions
        self._connecting = 0
        self._final: BaseException | None = None
        self._refusal_logged = False
        self._cond = threading.Condition()
        self.opened = 0  # SSH connections opened over the pool's life, for the record and benchmarks
        self.channels_opened = 0  # sessions opened on an existing connection, likewise

    @property
    def size(self) -> int:
        """Return how many sessions may be open at once (less than asked when the server refused more)."""
        return self._size

    @property
    def max_connections(self) -> int:
        """Return how many SSH connections may be open at once (fewer when the server refused more)."""
        return self._max_connections

    @property
    def _live(self) -> int:
        return sum(c.channels + c.opening for c in self._connections) + self._connecting

    def _share(self) -> int:
        """Return the channels one connection carries at most: ``size`` spread over the connections."""
        return -(-self._size // self._max_connections) if self._channels else 1

    def _capacity(self) -> int:
        """Return the sessions the connections open and still allowed can carry (lock held)."""
        share = self._share()
        open_ = sum(min(c.cap or share, share) for c in self._connections if not c.retired)
        return max(1, open_ + share * max(0, self._max_connections - len(self._connections)))

    def _roomiest(self) -> _Connection | None:
        """Return the open connection with the fewest channels that may carry one more, or None."""
        share = self._share()
        roomy = [
            c
            for c in self._connections
            if not c.retired and c.channels + c.opening < min(share, c.cap or share)
        ]
        return min(roomy, key=lambda c: c.channels + c.opening) if roomy else None

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
                    closing = self._forget(session)
                    self._cond.release()
                    try:
                        _run(closing)
                    finally:
                        self._cond.acquire()
                    continue
                # Until one connection is open, at most one connection attempt is under way.
                alone = not self._connections and self._connecting > 0
                if not alone and self._live < self._size:
                    connection = self._roomiest()
                    if connection is not None:
                        connection.opening += 1
                        break
                    if len(self._connections) + self._connecting < self._max_connections:
                        connection = None
                        self._connecting += 1
                        break
                self._cond.wait()
        if connection is not None:
            return self._open_channel(connection)
        return self._open_connection()

    def _open_connection(self) -> SFTPSession:
        try:
            session = self._connect()
        except BaseException as err:
            with self._cond:
                self._connecting -= 1
                self._cond.notify_all()
                if is_final(err):
                    self._final = err
                    raise
                if not self._connections or not isinstance(err, ConnectionError):
                    raise
                # The server refused one more connection while others work: keep those.
                self._max_connections = len(self._connections)
                self._size = min(self._size, self._capacity())
                log.info(
                    "The SFTP server refused another connection (%s); continuing with %s",
                    err,
                    len(self._connections),
                )
            return self.acquire()
        short = self._channels and self.opened == 0 and self._short_link(session)
        with self._cond:
            self._connecting -= 1
            if short and self._channels:
                self._channels = False
                self._size = min(self._size, self._max_connections)
                log.info(
                    "%s answers within %.1f ms: one session per connection, %s at once",
                    session.endpoint,
                    session.round_trip * 1000,
                    self._size,
                )
            connection = _Connection(session)
            self._connections.append(connection)
            self._of[id(session)] = connection
            self.opened += 1
            self._cond.notify_all()
        return session

    @staticmethod
    def _short_link(session: SFTPSession) -> bool:
        """Return True when the link is so short that sessions sharing connections would not pay."""
        try:
            return session.round_trip < SHARE_MIN_ROUND_TRIP
        except Exception:  # the delivery that gets this session meets a broken connection itself
            log.debug("Measuring the round trip to %s failed", session.endpoint, exc_info=True)
            return False

    def _open_channel(self, connection: _Connection) -> SFTPSession:
        try:
            session = connection.base.open_channel() if connection.base.shares_connection() else None
        except ChannelRefusedError as err:
            with self._cond:
                connection.opening -= 1
                granted = max(1, connection.channels)  # those opening at once are refused likewise
                connection.cap = min(connection.cap or granted, granted)
                self._size = min(self._size, self._capacity())
                if not self._refusal_logged:
                    self._refusal_logged = True
                    log.info(
                        "The SFTP server refused one more channel on a connection (%s): %s per connection, "
                        "%s at once",
                        err,
                        connection.cap,
                        self._size,
                    )
                self._cond.notify_all()
            return self.acquire()
        except BaseException:
            with self._cond:
                connection.opening -= 1
                connection.retired = True
                closing = self._unused(connection)
                self._cond.notify_all()
            _run(closing)
            raise
        with self._cond:
            connection.opening -= 1
            if session is None:  # the server is not known to take it: one session per connection
                if self._channels:
                    self._channels = False
                    self._size = min(self._size, self._max_connections)
                    log.info(
                        "%s is not known to serve several SFTP channels of one connection at once: "
                        "one session per connection, %s at once",
                        connection.base.endpoint,
                        self._size,
                    )
                self._cond.notify_all()
            else:
                connection.channels += 1
                self._of[id(session)] = connection
                self.channels_opened += 1
                self._cond.notify_all()
        return session if session is not None else self.acquire()

    def release(self, session: SFTPSession) -> None:
        """Give a healthy session back for the next delivery."""
        with self._cond:
            connection = self._of.get(id(session))
            healthy = session.alive() and connection is not None and not connection.retired
            if healthy:
                self._idle.append(session)
                self._cond.notify_all()
                return
        self.discard(session, retire=False)

    def discard(self, session: SFTPSession, *, retire: bool = True) -> None:
        """Close a broken session; the next :meth:`acquire` opens a fresh one (on a fresh connection)."""
        with self._cond:
            connection = self._of.get(id(session))
            if connection is not None and retire:
                connection.retired = True
            closing = self._forget(session)
            self._cond.notify_all()
        _run(closing)

    def _forget(self, session: SFTPSession) -> list[Callable[[], None]]:
        """Drop one session; return what closes its channel, and its connection once unused (lock held)."""
        connection = self._of.pop(id(session), None)
        if connection is None:
            return [session.close]
        connection.channels -= 1
        if session is not connection.base:
            closing = [session.close]
        elif connection.channels + connection.opening > 0:
            closing = [session.close_channel]  # the connection outlives its first channel
        else:
            closing = []
        return closing + self._unused(connection)

    def _unused(self, connection: _Connection) -> list[Callable[[], None]]:
        """Drop a connection no session uses any more; return what closes it (lock held)."""
        if connection.channels + connection.opening > 0 or connection not in self._connections:
            return []
        self._connections.remove(connection)
        return [connection.base.close]

    def close(self) -> None:
        """Close every idle session, and every connection none is using."""
        with self._cond:
            idle, self._idle = self._idle, []
            closing = [close for session in idle for close in self._forget(session)]
            self._cond.notify_all()
        _run(closing)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
