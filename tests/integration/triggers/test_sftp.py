# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTPFileStableTrigger driven with asyncio against a real OpenSSH server."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import inspect
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from airflow_s3sftp.core import stability
from airflow_s3sftp.core.sidecar import MAX_SIDECAR_BYTES, sidecar_text
from airflow_s3sftp.exceptions import (
    AuthenticationError,
    ChecksumMismatchError,
    HostKeyVerificationError,
    S3SFTPDeprecationWarning,
    VerificationError,
)
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger
from tests.integration.sftp_writers import random_bytes, sha256
from testservers.processes import TEST_PASSWORD, SSHDServer

NO_CONTEXT: Any = {}


def make_trigger(
    path: Path | str,
    *,
    sftp_conn_id: str = "sftp_default",
    poke_interval: float = 0.25,
    chunk_size: int = 256 * 1024,
    state: dict[str, Any] | None = None,
    **policy: Any,
) -> SFTPFileStableTrigger:
    """A trigger with a policy built the way the sensor builds it (``stable_for`` 0.5 s, sha256)."""
    policy.setdefault("stable_for", 0.5)
    policy.setdefault("checksum", "sha256")
    return SFTPFileStableTrigger(
        path=str(path),
        sftp_conn_id=sftp_conn_id,
        policy=stability.Policy.build(target=str(path), **policy).to_dict(),
        poke_interval=poke_interval,
        chunk_size=chunk_size,
        state=state,
    )


def raw_policy(path: Path | str, **fields: Any) -> dict[str, Any]:
    """A policy dict as it would arrive from a serialized trigger, not validated: the trigger refuses it."""
    return {"target": str(path), "stable_for": 0.5, "algorithm": "sha256", **fields}


def run_trigger(trigger: SFTPFileStableTrigger, timeout: float = 30) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def complete_with(trigger: SFTPFileStableTrigger, events: list[dict[str, Any]]) -> Any:
    """Hand the single event to the sensor's ``execute_complete``, as the task runner does."""
    assert len(events) == 1
    return SFTPFileStableSensor(task_id="wait", path=trigger.path).execute_complete(NO_CONTEXT, events[0])


def test_event_loop_stays_responsive_while_hashing(remote_dir: Path) -> None:
    """Hashing awaits every chunk: a ticker on the same loop keeps running while 8 MiB are read."""
    target = remote_dir / "big.bin"
    data = random_bytes(8 * 1024 * 1024)
    target.write_bytes(data)
    trigger = make_trigger(target, stable_for=0, expected_checksum=sha256(data))

    async def main() -> tuple[list[dict[str, Any]], float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        events = [event.payload async for event in trigger.run()]
        done.set()
        await tick
        return events, max(gaps)

    events, worst_gap = asyncio.run(main())

    assert events[0]["status"] == "success"
    assert events[0]["result"]["checksum"] == sha256(data)
    assert worst_gap < 0.25


def test_continues_from_the_sensors_observations(remote_dir: Path) -> None:
    """The state handed over at deferral counts: an old enough first observation fires at once."""
    data = b"complete" * 1000
    target = remote_dir / "handed_over.bin"
    target.write_bytes(data)
    mtime = int(target.stat().st_mtime)
    earlier = stability.Observation(
        at=stability.utcnow() - datetime.timedelta(seconds=30),
        size=len(data),
        mtime=mtime,
    )
    state = stability.State(since=earlier, last=earlier, polls=7).to_dict()

    events = run_trigger(make_trigger(target, stable_for=10, expected_checksum=sha256(data), state=state))

    result = complete_with(make_trigger(target), events)
    assert result["polls"] == 8
    assert result["stable_seconds"] >= 30


def test_missing_file_never_fires(remote_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hang would time out too: record the polls' verdicts to prove the trigger kept looking.
    actions: list[stability.Action] = []
    real = stability.assess

    def recording(*args: Any, **kwargs: Any) -> stability.Verdict:
        verdict = real(*args, **kwargs)
        actions.append(verdict.action)
        return verdict

    monkeypatch.setattr(stability, "assess", recording)
    trigger = make_trigger(remote_dir / "absent.bin")

    async def first_event() -> Any:
        async for event in trigger.run():
            return event
        return None

    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(first_event(), 1.0))
    assert len(actions) >= 2, f"the trigger polled {len(actions)} times in 1 s"
    assert set(actions) == {stability.Action.WAIT}


def test_checksum_mismatch_is_one_error_event(remote_dir: Path) -> None:
    data = random_bytes(20_000)
    target = remote_dir / "mismatch.bin"
    target.write_bytes(data)
    wrong = sha256(b"other")

    events = run_trigger(make_trigger(target, stable_for=0, expected_checksum=wrong))

    assert len(events) == 1 and events[0]["status"] == "error"
    with pytest.raises(ChecksumMismatchError) as err:
        complete_with(make_trigger(target), events)
    assert (err.value.expected, err.value.actual) == (wrong, sha256(data))
    assert str(target) in str(err.value)


def test_oversize_is_one_error_event(remote_dir: Path) -> None:
    target = remote_dir / "big.bin"
    target.write_bytes(b"x" * 100)

    events = run_trigger(make_trigger(target, stable_for=0, expected_size=99))

    with pytest.raises(VerificationError, match="exceeds expected_size 99"):
        complete_with(make_trigger(target), events)


def write_sidecar(target: Path, hexdigest_or_text: str, raw: bool = False) -> Path:
    """Write ``<target>.sha256`` under a temp name and rename it in, as the upload operator does."""
    side = target.with_name(target.name + ".sha256")
    temp = target.with_name(target.name + ".sha256.part")
    temp.write_text(hexdigest_or_text if raw else sidecar_text(str(target), hexdigest_or_text))
    temp.rename(side)
    return side


@pytest.fixture
def sidecar_actions(monkeypatch: pytest.MonkeyPatch) -> list[stability.Action]:
    """Record what :func:`stability.assess_sidecar` decided, to prove the sidecar was consulted."""
    actions: list[stability.Action] = []
    real = stability.assess_sidecar

    def recording(*args: Any, **kwargs: Any) -> stability.Verdict:
        verdict = real(*args, **kwargs)
        actions.append(verdict.action)
        return verdict

    monkeypatch.setattr(stability, "assess_sidecar", recording)
    return actions


class TestExpectedChecksumFromSidecar:
    def test_waits_for_the_sidecar_then_fires_with_its_checksum(
        self, remote_dir: Path, sidecar_actions: list[stability.Action]
    ) -> None:
        data = random_bytes(600_000)  # several reads per digest
        target = remote_dir / "report.csv"
        target.write_bytes(data)
        trigger = make_trigger(target, stable_for=0, expected_checksum_from="sidecar", chunk_size=64 * 1024)

        async def main() -> tuple[list[dict[str, Any]], float, float]:
            async def late_sidecar() -> float:
                # Once the trigger found the file stable and no sidecar (the recorded WAIT): the
                # trigger and this task share the loop, so the check runs between its polls.
                while stability.Action.WAIT not in sidecar_actions:
                    await asyncio.sleep(0.01)
                write_sidecar(target, sha256(data).split(":")[1])
                return time.monotonic()

            writer = asyncio.create_task(late_sidecar())
            events = [event.payload async for event in trigger.run()]
            return events, time.monotonic(), await writer

        events, fired_at, written_at = asyncio.run(asyncio.wait_for(main(), 30))

        result = complete_with(trigger, events)
        assert result["checksum"] == sha256(data)
        assert fired_at > written_at
        assert stability.Action.WAIT in sidecar_actions and sidecar_actions[-1] is stability.Action.HASH

    def test_wrong_digest_is_one_checksum_mismatch_event(self, remote_dir: Path) -> None:
        data = random_bytes(20_000)
        target = remote_dir / "report.csv"
        target.write_bytes(data)
        wrong = sha256(b"yesterday's report")
        write_sidecar(target, wrong.split(":")[1])

        events = run_trigger(make_trigger(target, stable_for=0, expected_checksum_from="sidecar"))

        assert len(events) == 1 and events[0]["status"] == "error"
        with pytest.raises(ChecksumMismatchError) as err:
            complete_with(make_trigger(target), events)
        assert (err.value.expected, err.value.actual) == (wrong, sha256(data))
        assert str(target) in str(err.value)

    @pytest.mark.parametrize(
        "sidecar",
        [
            pytest.param(None, id="missing"),
            pytest.param("not a digest  report.csv\n", id="garbage"),
            pytest.param(f"{'0' * 64}  report.csv\n" + "#" * MAX_SIDECAR_BYTES, id="over-64-KiB"),
        ],
    )
    def test_no_valid_sidecar_never_fires(
        self, remote_dir: Path, sidecar_actions: list[stability.Action], sidecar: str | None
    ) -> None:
        target = remote_dir / "report.csv"
        target.write_bytes(b"complete" * 100)
        if sidecar is not None:
            write_sidecar(target, sidecar, raw=True)
        trigger = make_trigger(target, stable_for=0, expected_checksum_from="sidecar")

        async def first_event() -> Any:
            async for event in trigger.run():
                return event
            return None

        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(first_event(), 2.0))
        assert sidecar_actions, "the file never became stable, so the sidecar was never read"
        assert set(sidecar_actions) == {stability.Action.WAIT}

    def test_unreadable_sidecar_is_one_permission_error_event(self, remote_dir: Path) -> None:
        target = remote_dir / "report.csv"
        target.write_bytes(b"data")
        write_sidecar(target, "0" * 64).chmod(0o000)

        events = run_trigger(make_trigger(target, stable_for=0, expected_checksum_from="sidecar"))

        with pytest.raises(PermissionError, match=f"Permission denied when reading sftp://.*{target}.sha256"):
            complete_with(make_trigger(target), events)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"expected_checksum": "sha256:" + "0" * 64}, "not both"),
            ({"checksum": None}, "needs a checksum algorithm"),
        ],
    )
    def test_bad_combinations_are_one_value_error_event(
        self, remote_dir: Path, kwargs: dict[str, Any], message: str
    ) -> None:
        target = remote_dir / "report.csv"
        fields = {"expected_checksum_from": "sidecar", **kwargs}
        if "checksum" in fields:
            fields["algorithm"] = fields.pop("checksum")
        policy = raw_policy(target, **fields)
        events = run_trigger(SFTPFileStableTrigger(path=str(target), policy=policy, poke_interval=0.25))
        with pytest.raises(ValueError, match=message):
            complete_with(make_trigger(target), events)


class TestClearErrors:
    def test_directory(self, remote_dir: Path) -> None:
        events = run_trigger(make_trigger(remote_dir))
        with pytest.raises(IsADirectoryError, match=str(remote_dir)):
            complete_with(make_trigger(remote_dir), events)

    def test_unreadable_file(self, remote_dir: Path) -> None:
        target = remote_dir / "secret.bin"
        target.write_bytes(b"root only")
        target.chmod(0o000)

        events = run_trigger(make_trigger(target, stable_for=0))

        with pytest.raises(PermissionError, match=f"Permission denied when reading .*{target}"):
            complete_with(make_trigger(target), events)

    def test_bad_expected_checksum(self, remote_dir: Path) -> None:
        policy = raw_policy(remote_dir / "a.bin", expected_checksum="sha256:abc")
        events = run_trigger(SFTPFileStableTrigger(path=str(remote_dir / "a.bin"), policy=policy))
        with pytest.raises(ValueError, match="expected_checksum"):
            complete_with(make_trigger(remote_dir), events)

    def test_refused_login(self, sshd: SSHDServer, remote_dir: Path, set_connection: Any) -> None:
        conn = sshd.connection(key_file=None)
        conn["password"] = TEST_PASSWORD + "-wrong"
        set_connection("sftp_wrong_password", conn)

        events = run_trigger(make_trigger(remote_dir / "a.bin", sftp_conn_id="sftp_wrong_password"))

        assert len(events) == 1 and TEST_PASSWORD not in str(events[0])
        with pytest.raises(AuthenticationError, match=f"127.0.0.1:{sshd.port} refused the login"):
            complete_with(make_trigger(remote_dir), events)

    @pytest.mark.parametrize("host_key", ["other", None], ids=["different-host-key", "unknown-host-key"])
    def test_host_key(
        self, sshd: SSHDServer, remote_dir: Path, set_connection: Any, host_key: str | None
    ) -> None:
        if host_key == "other":
            other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
            host_key = " ".join(other.split()[:2])
        set_connection("sftp_host_key", sshd.connection(host_key=host_key))

        events = run_trigger(make_trigger(remote_dir / "a.bin", sftp_conn_id="sftp_host_key"))

        with pytest.raises(HostKeyVerificationError, match=f"127.0.0.1:{sshd.port}"):
            complete_with(make_trigger(remote_dir), events)


@pytest.mark.parametrize(
    "expected",
    [
        {"expected_checksum": "md5:" + "0" * 32, "expected_checksum_from": None},
        {"expected_checksum": None, "expected_checksum_from": "sidecar"},
    ],
    ids=["expected-checksum", "from-sidecar"],
)
def test_serialize_returns_exactly_the_constructor_arguments(expected: dict[str, Any]) -> None:
    from airflow.sdk.serde import deserialize, serialize

    policy = stability.Policy.build(
        target="sftp://h:22/in/data.csv",
        stable_for=30.0,
        checksum="sha512",
        expected_size=1234,
        min_size=5,
        **expected,
    )
    kwargs: dict[str, Any] = {
        "path": "/in/data.csv",
        "sftp_conn_id": "partner",
        "policy": policy.to_dict(),
        "poke_interval": 15.0,
        "chunk_size": 65536,
        "state": stability.State(
            since=stability.Observation.take(1234, 1700000000),
            last=stability.Observation.take(1234, 1700000000),
            checksum="sha512:" + "a" * 128,
            checksum_poll=3,
            polls=4,
        ).to_dict(),
        "timeout": 3600.0,
        "started_at": "2026-12-06T14:00:00+00:00",
    }
    classpath, serialized = SFTPFileStableTrigger(**kwargs).serialize()

    assert serialized == kwargs
    parameters = list(inspect.signature(SFTPFileStableTrigger).parameters)
    assert list(serialized) == [name for name in parameters if name != "poll_interval"]  # deprecated alias
    module, _, name = classpath.rpartition(".")
    assert classpath == "airflow_s3sftp.triggers.sftp.SFTPFileStableTrigger"
    # The way the task runner ships trigger arguments: Airflow serde there and back.
    rebuilt = getattr(importlib.import_module(module), name)(**deserialize(serialize(serialized)))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert stability.State.from_dict(rebuilt.state) == stability.State.from_dict(kwargs["state"])
    # The policy is one object, the same after the trip.
    assert stability.Policy.from_dict(rebuilt.policy) == policy


class TestDeprecatedPollInterval:
    """``poll_interval`` is ``poke_interval``'s old name: it still works for one release, with a warning."""

    def kwargs(self) -> dict[str, Any]:
        policy = stability.Policy.build(target="t", stable_for=1, checksum="sha256").to_dict()
        return {
            "path": "/in/f",
            "sftp_conn_id": "partner",
            "policy": policy,
            "chunk_size": 1024,
            "state": None,
        }

    def test_a_trigger_serialized_by_the_previous_release_runs_as_poke_interval(self) -> None:
        with pytest.warns(
            S3SFTPDeprecationWarning, match=r"poll_interval=\.\.\.\) is deprecated: use poke_interval"
        ):
            trigger = SFTPFileStableTrigger(**self.kwargs(), poll_interval=7.5)

        _, serialized = trigger.serialize()
        assert serialized == {**self.kwargs(), "poke_interval": 7.5, "timeout": None, "started_at": None}
        assert trigger.poke_interval == 7.5

    def test_both_names_are_refused(self) -> None:
        with (
            pytest.warns(S3SFTPDeprecationWarning),
            pytest.raises(ValueError, match="both poke_interval and its deprecated name poll_interval"),
        ):
            SFTPFileStableTrigger(**self.kwargs(), poke_interval=5, poll_interval=7.5)

    def test_the_old_name_is_validated_under_the_new_one(self) -> None:
        with pytest.warns(S3SFTPDeprecationWarning), pytest.raises(ValueError, match="poke_interval must be"):
            SFTPFileStableTrigger(**self.kwargs(), poll_interval=float("nan"))

    def test_the_warning_is_a_deprecation_warning(self) -> None:
        assert issubclass(S3SFTPDeprecationWarning, DeprecationWarning)


class TestExecuteComplete:
    def test_success_returns_the_result(self) -> None:
        result = {"path": "/a", "size": 1, "mtime": 2, "checksum": None}
        sensor = SFTPFileStableSensor(task_id="wait", path="/a")
        assert sensor.execute_complete(NO_CONTEXT, {"status": "success", "result": result}) == result

    def test_unexpected_error_names_the_trigger_and_path(self) -> None:
        sensor = SFTPFileStableSensor(task_id="wait", path="/a")
        event = {"status": "error", "error_type": "ZeroDivisionError", "message": "division by zero"}
        with pytest.raises(RuntimeError, match="SFTPFileStableTrigger failed for /a: ZeroDivisionError"):
            sensor.execute_complete(NO_CONTEXT, event)

    def test_a_lost_connection_is_raised_as_itself(self) -> None:
        sensor = SFTPFileStableSensor(task_id="wait", path="/a")
        event = {"status": "error", "error_type": "ConnectionResetError", "message": "reset by peer"}
        with pytest.raises(ConnectionResetError, match=r"^reset by peer$"):
            sensor.execute_complete(NO_CONTEXT, event)
