# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SessionPool: the first session opens alone, a final failure is never attempted again, refusals shrink the pool."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_s3sftp.core.session import ChannelRefusedError, SessionPool
from airflow_s3sftp.exceptions import AuthenticationError, ConnectionLostError


class FakeSession:
    endpoint = "u@h:22"

    def __init__(self) -> None:
        self.closed = False

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class Connector:
    """Counts attempts and the most that ran at once; fails as told."""

    def __init__(self, fail: BaseException | None = None, succeed: int = 10**9) -> None:
        self.fail, self.succeed = fail, succeed
        self.attempts = self.running = self.most = 0
        self.lock = threading.Lock()
        self.release_first = threading.Event()

    def __call__(self) -> FakeSession:
        with self.lock:
            self.attempts += 1
            self.running += 1
            self.most = max(self.most, self.running)
            attempt = self.attempts
        try:
            if attempt == 1:
                self.release_first.wait(5)
            if self.fail is not None or attempt > self.succeed:
                raise self.fail or ConnectionLostError("MaxStartups: connection dropped")
            return FakeSession()  # type: ignore[return-value]
        finally:
            with self.lock:
                self.running -= 1


def _acquire_all(pool: SessionPool, n: int) -> list[object]:
    def one(_: int) -> object:
        try:
            return pool.acquire()
        except Exception as err:
            return err

    with ThreadPoolExecutor(n) as threads:
        futures = [threads.submit(one, i) for i in range(n)]
        return [f.result() for f in futures]


def test_final_failure_is_attempted_once_and_alone():
    connect = Connector(fail=AuthenticationError("refused"))
    pool = SessionPool(connect, 8)  # type: ignore[arg-type]
    threading.Timer(0.2, connect.release_first.set).start()
    results = _acquire_all(pool, 8)
    assert connect.attempts == 1 and connect.most == 1
    assert all(isinstance(r, AuthenticationError) for r in results)


def test_more_sessions_open_only_after_the_first_succeeded():
    connect = Connector()
    pool = SessionPool(connect, 4)  # type: ignore[arg-type]
    seen_while_first_ran: list[int] = []

    def release() -> None:
        seen_while_first_ran.append(connect.attempts)
        connect.release_first.set()

    threading.Timer(0.3, release).start()
    sessions = _acquire_all(pool, 4)
    assert all(isinstance(s, FakeSession) for s in sessions)
    assert seen_while_first_ran == [1]  # nobody else tried while the first connection was under way
    assert connect.attempts == 4 and pool.opened == 4


def test_a_refused_extra_session_shrinks_the_pool_instead_of_failing():
    connect = Connector(succeed=2)  # the server grants two sessions, then drops new connections
    connect.release_first.set()
    pool = SessionPool(connect, 4)  # type: ignore[arg-type]
    a, b = pool.acquire(), pool.acquire()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    while connect.attempts < 3:  # the third connection was tried and refused
        threading.Event().wait(0.01)
    assert waiter.is_alive()  # ... and the object waits for a session instead of failing
    pool.release(a)
    waiter.join(5)
    assert got == [a]
    assert pool.size == 2 and connect.attempts == 3
    pool.release(b)


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError, match="positive size"):
        SessionPool(Connector(), 0)  # type: ignore[arg-type]


class FakeConnection(FakeSession):
    """A session on a new connection; :meth:`open_channel` adds sessions on it, up to ``granted`` channels."""

    def __init__(self, granted: int = 10, shares: bool = True, round_trip: float = 0.1) -> None:
        super().__init__()
        self.granted, self.shares, self.round_trip = granted, shares, round_trip
        self.channels: list[FakeSession] = [self]
        self.connection_closed = False

    def shares_connection(self) -> bool:
        return self.shares

    def open_channel(self) -> FakeSession:
        if self.connection_closed:
            raise ConnectionLostError("connection gone")
        if sum(not c.closed for c in self.channels) >= self.granted:
            raise ChannelRefusedError("u@h:22 refused one more SFTP channel: administratively prohibited")
        child = FakeSession()
        self.channels.append(child)
        return child

    def close_channel(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = self.connection_closed = True


class ChannelConnector(Connector):
    def __init__(self, **connection: object) -> None:
        super().__init__()
        self.release_first.set()
        self.connection = connection
        self.made: list[FakeConnection] = []

    def __call__(self) -> FakeConnection:
        with self.lock:
            self.attempts += 1
            made = FakeConnection(**self.connection)  # type: ignore[arg-type]
            self.made.append(made)
            return made


def test_many_sessions_share_few_connections_spread_evenly():
    connect = ChannelConnector()
    pool = SessionPool(connect, 16, max_connections=4)  # type: ignore[arg-type]
    sessions = _acquire_all(pool, 16)
    assert len({id(s) for s in sessions}) == 16
    assert connect.attempts == 4 and pool.opened == 4 and pool.channels_opened == 12
    assert sorted(len(c.channels) for c in connect.made) == [4, 4, 4, 4]
    for session in sessions:
        pool.release(session)  # type: ignore[arg-type]
    assert [pool.acquire() for _ in range(16)]  # reused: no new channel, no new connection
    assert connect.attempts == 4 and pool.channels_opened == 12


def test_a_refused_channel_shrinks_the_pool_and_is_no_login(caplog):
    connect = ChannelConnector(granted=2)  # MaxSessions 2
    pool = SessionPool(connect, 8, max_connections=2)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="airflow_s3sftp.core.session"):
        first = [pool.acquire() for _ in range(4)]
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # the fifth waits for a session instead of failing
        pool.release(first[0])  # type: ignore[arg-type]
        waiter.join(5)
    assert got == [first[0]]
    assert connect.attempts == 2 and pool.size == 4
    refusals = [r for r in caplog.records if "refused one more channel" in r.getMessage()]
    assert len(refusals) == 1


def test_a_server_not_known_to_share_gets_one_session_per_connection(caplog):
    connect = ChannelConnector(shares=False)  # ProFTPD
    pool = SessionPool(connect, 8, max_connections=2)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="airflow_s3sftp.core.session"):
        a, b = pool.acquire(), pool.acquire()
    assert connect.attempts == 2 and pool.size == 2
    assert all(len(c.channels) == 1 for c in connect.made)
    assert a is not b and "one session per connection" in caplog.text


def test_a_broken_session_retires_its_connection_which_closes_with_its_last_channel():
    connect = ChannelConnector()
    pool = SessionPool(connect, 4, max_connections=2)  # type: ignore[arg-type]
    sessions = [pool.acquire() for _ in range(4)]
    old = next(c for c in connect.made if c.channels[1] in sessions)
    base, child = old.channels
    pool.discard(child)  # type: ignore[arg-type]
    assert child.closed and not old.connection_closed  # the other session on it goes on
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # two connections open already: no third one
    pool.release(base)  # type: ignore[arg-type]  # healthy, but its connection is retired
    waiter.join(5)
    assert old.connection_closed and connect.attempts == 3
    assert got and got[0] is connect.made[2]


def test_a_lost_connection_while_opening_a_channel_fails_that_object_only():
    connect = ChannelConnector()
    pool = SessionPool(connect, 4, max_connections=1)  # type: ignore[arg-type]
    first = pool.acquire()
    connect.made[0].connection_closed = True
    with pytest.raises(ConnectionLostError):
        pool.acquire()
    pool.discard(first)  # type: ignore[arg-type]
    assert pool.acquire() is connect.made[1]  # a fresh connection; the old one is gone


def test_max_connections_must_be_positive():
    with pytest.raises(ValueError, match="positive max_connections"):
        SessionPool(Connector(), 4, max_connections=0)  # type: ignore[arg-type]


def test_on_a_short_link_sessions_do_not_share_connections(caplog):
    connect = ChannelConnector(round_trip=0.0005)  # loopback: the client's CPU is the limit
    pool = SessionPool(connect, 16, max_connections=4)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="airflow_s3sftp.core.session"):
        sessions = [pool.acquire() for _ in range(4)]
    assert pool.size == 4 and connect.attempts == 4 and pool.channels_opened == 0
    assert len({id(s) for s in sessions}) == 4 and "one session per connection" in caplog.text
