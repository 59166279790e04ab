# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SessionPool: the first session opens alone, a final failure is never attempted again, refusals shrink the pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_s3sftp.core.session import SessionPool
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
