# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTPSession.lanes: the extra SFTP channels of a striped delivery open at once, not one after another."""

from __future__ import annotations

import threading
from typing import Any

import paramiko
import pytest

from airflow_s3sftp.core.session import SFTPSession


class _Channel:
    def get_transport(self) -> object:
        return object()

    def settimeout(self, seconds: float) -> None:
        pass


class _Client:
    def get_channel(self) -> _Channel:
        return _Channel()


def _lane() -> paramiko.SFTPClient:
    lane = paramiko.SFTPClient.__new__(paramiko.SFTPClient)
    lane.sock = None  # type: ignore[assignment]  # get_channel() returns it: no channel to configure
    return lane


def _session() -> SFTPSession:
    return SFTPSession(_Client(), close=lambda: None, endpoint="u@h:22")  # type: ignore[arg-type]


def test_lanes_open_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every open is under way before any completes: opened one by one, the barrier would break."""
    barrier = threading.Barrier(4, timeout=30)
    calls: list[Any] = []

    def from_transport(transport: object) -> paramiko.SFTPClient:
        calls.append(transport)
        barrier.wait()
        return _lane()

    monkeypatch.setattr(paramiko.SFTPClient, "from_transport", from_transport)
    session = _session()
    lanes = session.lanes(4)
    assert len(lanes) == 4 and len(calls) == 4
    assert session.lanes(4) == lanes  # kept: not opened again
    assert len(calls) == 4


def test_refused_lanes_are_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    granted = iter([True, True, False, False])
    lock = threading.Lock()
    calls = 0

    def from_transport(transport: object) -> paramiko.SFTPClient:
        nonlocal calls
        with lock:
            calls += 1
            ok = next(granted)
        if not ok:
            raise paramiko.ChannelException(1, "Administratively prohibited")
        return _lane()

    monkeypatch.setattr(paramiko.SFTPClient, "from_transport", from_transport)
    session = _session()
    assert len(session.lanes(4)) == 2
    assert len(session.lanes(8)) == 2
    assert calls == 4
