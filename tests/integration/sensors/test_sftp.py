# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""SFTPFileStableSensor against a real OpenSSH server, in poke, reschedule and deferrable modes."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from airflow_s3sftp.core import stability
from airflow_s3sftp.core.sidecar import MAX_SIDECAR_BYTES, sidecar_path, sidecar_text
from airflow_s3sftp.exceptions import (
    AuthenticationError,
    ChecksumMismatchError,
    HostKeyVerificationError,
    VerificationError,
)
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger
from tests.integration.sftp_writers import OLD_MTIME, SlowWriter, random_bytes, sha256
from testservers.processes import TEST_PASSWORD, SSHDServer

STABLE_FOR = 0.5
POKE = 0.25
# Poke mode reads nothing from the context; reschedule mode is exercised through dag.test().
NO_CONTEXT: Any = {}


def make_sensor(path: Path | str, **kwargs: Any) -> SFTPFileStableSensor:
    kwargs.setdefault("stable_for", STABLE_FOR)
    kwargs.setdefault("poke_interval", POKE)
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("deferrable", False)
    return SFTPFileStableSensor(task_id=f"wait_{time.monotonic_ns()}", path=str(path), **kwargs)


def run_trigger(trigger: SFTPFileStableTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def write_sidecar(target: Path, text: str, algorithm: str = "sha256") -> Path:
    """Write ``<target>.<algorithm>`` under a temp name and rename it in, as the upload operator does."""
    side = Path(sidecar_path(str(target), algorithm))
    temp = side.with_name(side.name + ".part")
    write_file(temp, text.encode())
    temp.rename(side)
    return side


def sidecar_for(target: Path, data: bytes, algorithm: str = "sha256") -> str:
    return sidecar_text(str(target), hashlib.new(algorithm, data).hexdigest())


class SidecarVerdicts(list):  # type: ignore[type-arg]
    """What :func:`stability.assess_sidecar` decided; ``waited`` is set at the first WAIT (stable file,
    no sidecar yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()


class LateSidecar(threading.Thread):
    """Write the sidecar once the sensor (or trigger) has found the file stable without it."""

    def __init__(self, target: Path, text: str, verdicts: SidecarVerdicts, algorithm: str = "sha256") -> None:
        super().__init__(daemon=True)
        self.target, self.text, self.verdicts, self.algorithm = target, text, verdicts, algorithm
        self.written_at: float | None = None

    def run(self) -> None:
        if not self.verdicts.waited.wait(30):
            return  # the test fails on written_at; the sensor's own timeout ends it
        write_sidecar(self.target, self.text, self.algorithm)
        self.written_at = time.monotonic()


def spy_on_sidecar_verdicts(monkeypatch: pytest.MonkeyPatch) -> SidecarVerdicts:
    """Record what :func:`stability.assess_sidecar` decided, to prove the sidecar was consulted."""
    verdicts = SidecarVerdicts()
    real = stability.assess_sidecar

    def recording(*args: Any, **kwargs: Any) -> stability.Verdict:
        verdict = real(*args, **kwargs)
        verdicts.append(verdict)
        if verdict.action is stability.Action.WAIT:
            verdicts.waited.set()
        return verdict

    monkeypatch.setattr(stability, "assess_sidecar", recording)
    return verdicts


class TestOutOfOrderWriter:
    """The writer gives the file its final size at once, then fills it front to back."""

    def test_poke_mode_fires_only_after_the_last_write(self, sshd: SSHDServer, remote_dir: Path) -> None:
        data = random_bytes(300_000)
        target = remote_dir / "out_of_order.bin"
        writer = SlowWriter(sshd, str(target), data, pieces=5, pause=0.3, out_of_order=True)
        writer.start()

        result = make_sensor(target).execute(NO_CONTEXT)
        fired_at = time.monotonic()
        writer.join_checked()

        assert writer.sizes_seen[0] == len(data), "the size must be final before the content is"
        assert writer.finished_at is not None and fired_at > writer.finished_at
        assert result["checksum"] == sha256(data)
        assert result["size"] == len(data)
        assert result["path"] == str(target)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == result["checksum"].split(":")[1]

    def test_deferrable_defers_then_fires_only_after_the_last_write(
        self, sshd: SSHDServer, remote_dir: Path
    ) -> None:
        data = random_bytes(600_000)  # several reads per digest in the trigger
        target = remote_dir / "out_of_order_deferred.bin"
        writer = SlowWriter(sshd, str(target), data, pieces=5, pause=0.3, out_of_order=True)
        writer.start()
        while not target.exists():
            time.sleep(0.01)
        sensor = make_sensor(target, deferrable=True, timeout=40, chunk_size=64 * 1024)

        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(NO_CONTEXT)

        trigger = deferred.value.trigger
        assert isinstance(trigger, SFTPFileStableTrigger)
        assert deferred.value.method_name == "execute_complete"
        assert deferred.value.timeout == datetime.timedelta(seconds=40)
        # The synchronous check's observation travels with the trigger.
        assert trigger.state is not None and trigger.state["polls"] == 1
        assert trigger.state["last"]["size"] == len(data)
        events = run_trigger(trigger)
        fired_at = time.monotonic()
        writer.join_checked()

        assert len(events) == 1
        result = sensor.execute_complete(NO_CONTEXT, events[0])
        assert writer.finished_at is not None and fired_at > writer.finished_at
        assert result["checksum"] == sha256(data)
        assert result["polls"] > 1


def test_writer_stalling_mid_file_shorter_than_stable_for(sshd: SSHDServer, remote_dir: Path) -> None:
    data = random_bytes(200_000)
    target = remote_dir / "stalling.bin"
    # In offset order; one stall of 0.8 s: longer than a poll (0.25 s), shorter than stable_for (1 s).
    writer = SlowWriter(sshd, str(target), data, pieces=4, pause=0.1, stall_after=2, stall=0.8)
    writer.start()

    result = make_sensor(target, stable_for=1.0).execute(NO_CONTEXT)
    fired_at = time.monotonic()
    writer.join_checked()

    assert writer.finished_at is not None and fired_at > writer.finished_at
    assert result["checksum"] == sha256(data)


class TestMtimePreservingWriter:
    """The writer resets the mtime to 2020 after each write, out of order: size and mtime never move."""

    def test_checksum_mode_does_not_fire_early(self, sshd: SSHDServer, remote_dir: Path) -> None:
        data = random_bytes(200_000)
        target = remote_dir / "preserved.bin"
        writer = SlowWriter(
            sshd, str(target), data, pieces=8, pause=0.2, out_of_order=True, preserve_mtime=True
        )
        writer.start()

        result = make_sensor(target, poke_interval=0.3).execute(NO_CONTEXT)
        fired_at = time.monotonic()
        writer.join_checked()

        assert writer.finished_at is not None and fired_at > writer.finished_at
        assert result["checksum"] == sha256(data)
        assert result["mtime"] == OLD_MTIME

    def test_size_and_mtime_only_is_the_weaker_mode(self, sshd: SSHDServer, remote_dir: Path) -> None:
        """Documents why the checksum is on by default: without it this writer fools the sensor."""
        data = random_bytes(200_000)
        target = remote_dir / "preserved_weak.bin"
        writer = SlowWriter(
            sshd, str(target), data, pieces=6, pause=0.45, out_of_order=True, preserve_mtime=True
        )
        writer.start()

        result = make_sensor(target, checksum=None, stable_for=0).execute(NO_CONTEXT)
        fired_at = time.monotonic()
        writer.join_checked()

        assert result["checksum"] is None
        assert writer.finished_at is not None and fired_at < writer.finished_at


class TestExpectedChecksum:
    def test_match_fires_after_one_digest(self, remote_dir: Path) -> None:
        data = random_bytes(100_000)
        target = remote_dir / "expected.bin"
        write_file(target, data)
        started = time.monotonic()

        result = make_sensor(target, expected_checksum=sha256(data).upper()).execute(NO_CONTEXT)

        assert result["checksum"] == sha256(data)
        # One stable span (stable_for + 1 s mtime resolution) and one digest; no confirming poll.
        assert result["polls"] <= int((STABLE_FOR + 1) / POKE) + 2
        assert time.monotonic() - started < 5

    def test_algorithm_of_the_expected_checksum_wins(self, remote_dir: Path) -> None:
        data = random_bytes(10_000)
        target = remote_dir / "md5.bin"
        write_file(target, data)
        expected = f"md5:{hashlib.md5(data).hexdigest()}"

        result = make_sensor(target, checksum="sha256", expected_checksum=expected, stable_for=0).execute(
            NO_CONTEXT
        )

        assert result["checksum"] == expected

    def test_mismatch_fails_at_once_naming_both_checksums(self, remote_dir: Path) -> None:
        data = random_bytes(50_000)
        target = remote_dir / "mismatch.bin"
        write_file(target, data)
        wrong = sha256(b"something else")
        started = time.monotonic()

        with pytest.raises(ChecksumMismatchError) as err:
            make_sensor(target, expected_checksum=wrong, timeout=60).execute(NO_CONTEXT)

        assert time.monotonic() - started < 5
        assert wrong in str(err.value) and sha256(data) in str(err.value)
        assert str(target) in str(err.value)
        assert (err.value.expected, err.value.actual) == (wrong, sha256(data))

    def test_bad_format_fails_before_polling(self, remote_dir: Path) -> None:
        with pytest.raises(ValueError, match="expected_checksum") as err:
            make_sensor(remote_dir / "x.bin", expected_checksum="sha256:nothex").execute(NO_CONTEXT)
        assert str(remote_dir / "x.bin") in str(err.value)


class TestExpectedChecksumFromSidecar:
    @pytest.mark.parametrize("algorithm", ["sha256", "md5"])
    def test_fires_with_the_sidecars_checksum_once_it_appears(
        self, remote_dir: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
    ) -> None:
        data = random_bytes(100_000)
        target = remote_dir / "report.csv"
        write_file(target, data)
        verdicts = spy_on_sidecar_verdicts(monkeypatch)
        # Once the sensor found the file stable and the sidecar missing.
        late = LateSidecar(target, sidecar_for(target, data, algorithm), verdicts, algorithm=algorithm)
        late.start()

        result = make_sensor(target, checksum=algorithm, expected_checksum_from="sidecar").execute(NO_CONTEXT)
        fired_at = time.monotonic()
        late.join()

        expected = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        assert result["checksum"] == expected
        assert late.written_at is not None and fired_at > late.written_at
        assert [v.action for v in verdicts][-1] is stability.Action.HASH
        assert stability.Action.WAIT in [v.action for v in verdicts], "the missing sidecar was never read"

    def test_wrong_digest_fails_at_once_naming_both_checksums(self, remote_dir: Path) -> None:
        data = random_bytes(50_000)
        target = remote_dir / "report.csv"
        write_file(target, data)
        wrong = sha256(b"yesterday's report")
        write_sidecar(target, sidecar_text(str(target), wrong.split(":")[1]))
        started = time.monotonic()

        with pytest.raises(ChecksumMismatchError) as err:
            make_sensor(target, expected_checksum_from="sidecar", timeout=60).execute(NO_CONTEXT)

        assert time.monotonic() - started < 5
        assert (err.value.expected, err.value.actual) == (wrong, sha256(data))
        assert wrong in str(err.value) and sha256(data) in str(err.value)
        assert str(target) in str(err.value)

    @pytest.mark.parametrize(
        "sidecar",
        [
            pytest.param(None, id="missing"),
            pytest.param("", id="empty"),
            pytest.param("not a digest  report.csv\n", id="garbage"),
            pytest.param(f"{'0' * 32}  report.csv\n", id="md5-length-in-a-sha256-sidecar"),
            pytest.param(f"{'0' * 64}  report.csv\n" + "#" * MAX_SIDECAR_BYTES, id="over-64-KiB"),
        ],
    )
    def test_no_valid_sidecar_keeps_waiting_until_the_timeout(
        self, remote_dir: Path, monkeypatch: pytest.MonkeyPatch, sidecar: str | None
    ) -> None:
        target = remote_dir / "report.csv"
        write_file(target, random_bytes(10_000))
        if sidecar is not None:
            write_sidecar(target, sidecar)
        verdicts = spy_on_sidecar_verdicts(monkeypatch)

        with pytest.raises(AirflowSensorTimeout):
            make_sensor(target, expected_checksum_from="sidecar", stable_for=0, timeout=2.0).execute(
                NO_CONTEXT
            )

        assert verdicts, "the file never became stable, so the sidecar was never read"
        assert {v.action for v in verdicts} == {stability.Action.WAIT}

    def test_unreadable_sidecar_names_it(self, remote_dir: Path) -> None:
        target = remote_dir / "report.csv"
        write_file(target, b"data")
        side = write_sidecar(target, f"{'0' * 64}  report.csv\n")
        side.chmod(0o000)

        with pytest.raises(PermissionError, match="Permission denied when reading") as err:
            make_sensor(target, expected_checksum_from="sidecar", stable_for=0).execute(NO_CONTEXT)
        assert str(side) in str(err.value)

    @pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (
                {"expected_checksum": "sha256:" + "0" * 64},
                "either expected_checksum or expected_checksum_from, not both",
            ),
            ({"checksum": None}, "needs a checksum algorithm"),
        ],
        ids=["with-expected-checksum", "without-checksum"],
    )
    def test_bad_combinations_fail_before_polling(
        self, remote_dir: Path, kwargs: dict[str, Any], message: str, deferrable: bool
    ) -> None:
        sensor = make_sensor(
            remote_dir / "report.csv", expected_checksum_from="sidecar", deferrable=deferrable, **kwargs
        )
        with pytest.raises(ValueError, match=message) as err:
            sensor.execute(NO_CONTEXT)
        assert str(remote_dir / "report.csv") in str(err.value)

    def test_unknown_source_fails(self, remote_dir: Path) -> None:
        with pytest.raises(ValueError, match=r"expected_checksum_from for .* must be one of 'sidecar'"):
            make_sensor(remote_dir / "report.csv", expected_checksum_from="s3").execute(NO_CONTEXT)

    def test_deferrable_hands_the_source_to_the_trigger(
        self, remote_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = random_bytes(200_000)
        target = remote_dir / "report.csv"
        write_file(target, data)
        sensor = make_sensor(target, expected_checksum_from="sidecar", deferrable=True)

        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(NO_CONTEXT)

        trigger = deferred.value.trigger
        assert isinstance(trigger, SFTPFileStableTrigger)
        assert (
            trigger.policy["expected_checksum_from"] == "sidecar"
            and trigger.policy["expected_checksum"] is None
        )
        late = LateSidecar(target, sidecar_for(target, data), spy_on_sidecar_verdicts(monkeypatch))
        late.start()
        events = run_trigger(trigger)
        fired_at = time.monotonic()
        late.join()

        assert len(events) == 1
        result = sensor.execute_complete(NO_CONTEXT, events[0])
        assert result["checksum"] == sha256(data)
        assert late.written_at is not None and fired_at > late.written_at


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_after_the_upload_operator_with_a_sidecar(
    s3: Any, bucket: str, remote_dir: Path, deferrable: bool
) -> None:
    """End to end: the operator publishes the file and then its sidecar; the sensor proves the bytes."""
    data = random_bytes(300_000)
    s3.put_object(Bucket=bucket, Key="exports/report.csv", Body=data)
    upload = S3ToSFTPStreamOperator(
        task_id="upload",
        s3_bucket=bucket,
        s3_key="exports/report.csv",
        sftp_path=f"{remote_dir}/",
        sidecar=True,
    ).execute(NO_CONTEXT)
    assert upload["sidecar_path"] == f"{remote_dir}/report.csv.sha256"

    sensor = make_sensor(upload["sftp_path"], expected_checksum_from="sidecar", deferrable=deferrable)
    if deferrable:
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(NO_CONTEXT)
        events = run_trigger(deferred.value.trigger)
        result = sensor.execute_complete(NO_CONTEXT, events[0])
    else:
        result = sensor.execute(NO_CONTEXT)

    assert result["checksum"] == upload["checksum"] == sha256(data)
    assert result["path"] == upload["sftp_path"] == str(remote_dir / "report.csv")


class TestExpectedSize:
    def test_larger_stable_file_fails_at_once(self, remote_dir: Path) -> None:
        target = remote_dir / "too_big.bin"
        write_file(target, b"x" * 1000)
        started = time.monotonic()

        with pytest.raises(VerificationError, match="exceeds expected_size 999") as err:
            make_sensor(target, expected_size=999, timeout=60, stable_for=0).execute(NO_CONTEXT)

        assert time.monotonic() - started < 5
        assert str(target) in str(err.value)

    def test_exact_size_fires(self, remote_dir: Path) -> None:
        target = remote_dir / "exact.bin"
        write_file(target, b"y" * 1000)

        result = make_sensor(target, expected_size="1000", checksum=None, stable_for=0).execute(NO_CONTEXT)

        assert result["size"] == 1000


@pytest.mark.parametrize(
    ("content", "kwargs"),
    [
        pytest.param(None, {}, id="missing-file"),
        pytest.param(b"", {}, id="empty-below-min-size"),
        pytest.param(b"z" * 10, {"expected_size": 11}, id="smaller-than-expected-size"),
    ],
)
def test_not_yet_times_out_as_a_sensor_timeout(
    remote_dir: Path, content: bytes | None, kwargs: dict[str, Any]
) -> None:
    target = remote_dir / "never.bin"
    if content is not None:
        write_file(target, content)

    with pytest.raises(AirflowSensorTimeout):
        make_sensor(target, timeout=1.0, **kwargs).execute(NO_CONTEXT)


def test_timeout_with_soft_fail_skips(remote_dir: Path) -> None:
    with pytest.raises(AirflowSkipException):
        make_sensor(remote_dir / "never.bin", timeout=0.5, soft_fail=True).execute(NO_CONTEXT)


class TestClearErrors:
    def test_directory(self, remote_dir: Path) -> None:
        with pytest.raises(IsADirectoryError, match="is a directory") as err:
            make_sensor(remote_dir).execute(NO_CONTEXT)
        assert str(remote_dir) in str(err.value)

    def test_unreadable_file(self, remote_dir: Path) -> None:
        target = remote_dir / "secret.bin"
        write_file(target, b"root only", mode=0o600)  # owned by root; the sshd login is unprivileged
        if os.geteuid() != 0:
            os.chmod(target, 0o000)

        with pytest.raises(PermissionError, match="Permission denied when reading") as err:
            make_sensor(target, stable_for=0).execute(NO_CONTEXT)
        assert str(target) in str(err.value)

    def test_refused_login(self, sshd: SSHDServer, remote_dir: Path, set_connection: Any) -> None:
        conn = sshd.connection(key_file=None, look_for_keys="false")
        conn["password"] = TEST_PASSWORD + "-wrong"
        set_connection("sftp_wrong_password", conn)

        with pytest.raises(AuthenticationError, match="refused the login") as err:
            make_sensor(remote_dir / "a.bin", sftp_conn_id="sftp_wrong_password").execute(NO_CONTEXT)

        assert f"127.0.0.1:{sshd.port}" in str(err.value)
        assert TEST_PASSWORD not in str(err.value)

    @pytest.mark.parametrize("host_key", ["other", None], ids=["different-host-key", "unknown-host-key"])
    def test_host_key(
        self, sshd: SSHDServer, remote_dir: Path, set_connection: Any, host_key: str | None
    ) -> None:
        if host_key == "other":
            other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
            host_key = " ".join(other.split()[:2])
        set_connection("sftp_host_key", sshd.connection(host_key=host_key))

        with pytest.raises(HostKeyVerificationError, match=f"127.0.0.1:{sshd.port}"):
            make_sensor(remote_dir / "a.bin", sftp_conn_id="sftp_host_key").execute(NO_CONTEXT)


def test_poke_mode_keeps_one_connection(sshd: SSHDServer, remote_dir: Path, monkeypatch: Any) -> None:
    """Poke mode reuses its SSH connection across pokes and closes it at the end."""
    connects: list[object] = []
    original = paramiko.SSHClient.connect

    def counting_connect(self: paramiko.SSHClient, *args: Any, **kwargs: Any) -> None:
        connects.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.SSHClient, "connect", counting_connect)
    target = remote_dir / "one_connection.bin"
    write_file(target, b"ready" * 100)
    sensor = make_sensor(target, stable_for=0)

    result = sensor.execute(NO_CONTEXT)

    assert result["polls"] > 3
    assert len(connects) == 1
    transport = connects[0].get_transport()  # type: ignore[attr-defined]
    assert transport is None or not transport.is_active()


DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False) as dag:
    SFTPFileStableSensor(
        task_id="wait",
        path={path!r},
        stable_for={stable_for!r},
        poke_interval={poke_interval!r},
        timeout=60,
        mode={mode!r},
        deferrable={deferrable!r},
        expected_checksum_from={expected_checksum_from!r},
    )
"""


@pytest.fixture(scope="module")
def airflow_db() -> Path:
    """Create the metadata database of the tests' throwaway AIRFLOW_HOME; return its DAGs folder."""
    from airflow.configuration import conf
    from airflow.utils import db

    db.resetdb()
    dags = Path(conf.get("core", "dags_folder"))
    dags.mkdir(parents=True, exist_ok=True)
    return dags


def run_dag(dags: Path, **params: Any) -> tuple[Any, dict[str, Any] | None, int, Any]:
    """Write a one-sensor DAG file, ``dag.test()`` it; return the run, XCom, reschedule count, state store."""
    import importlib.util

    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from airflow_s3sftp.sensors.sftp import STATE_STORE_KEY

    dag_id = f"stable_{time.monotonic_ns()}"
    dag_file = dags / f"{dag_id}.py"
    params.setdefault("expected_checksum_from", None)
    dag_file.write_text(DAG_FILE.format(dag_id=dag_id, **params))
    spec = importlib.util.spec_from_file_location(dag_id, dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    dag_run = module.dag.test()

    with create_session() as session:
        ti = dag_run.get_task_instance("wait", session=session)
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids="wait", key="return_value")
        ).first()
        xcom = None if row is None else XComModel.deserialize_value(row)
        reschedules = session.scalar(
            select(func.count(TaskReschedule.id)).where(TaskReschedule.ti_id == ti.id)
        )
        stored = session.scalar(
            select(TaskStateStoreModel.value).where(
                TaskStateStoreModel.dag_id == dag_id,
                TaskStateStoreModel.run_id == dag_run.run_id,
                TaskStateStoreModel.task_id == "wait",
                TaskStateStoreModel.key == STATE_STORE_KEY,
            )
        )
    return dag_run, xcom, int(reschedules or 0), None if stored is None else json.loads(stored)


class TestThroughTheTaskRunner:
    """``dag.test()``: the real task runner, execution API and metadata DB, one sensor instance per poke."""

    def test_reschedule_mode_carries_observations_across_pokes(
        self, remote_dir: Path, airflow_db: Path
    ) -> None:
        data = random_bytes(200_000)
        target = remote_dir / "rescheduled.bin"
        write_file(target, data)

        dag_run, xcom, reschedules, stored = run_dag(
            airflow_db,
            path=str(target),
            stable_for=0,  # the 1 s mtime resolution still applies; dag.test() pokes about once a second
            poke_interval=0.2,
            mode="reschedule",
            deferrable=False,
        )

        assert dag_run.state == "success"
        assert xcom is not None and xcom["checksum"] == sha256(data)
        # Three pokes, each a new sensor instance in a new run of the task: the first observes, the
        # second finds size and mtime stable since the first and takes a digest, the third confirms it.
        # A poke alone sees a single observation and can never fire: the task state store carried them.
        assert (reschedules, xcom["polls"]) == (2, 3)
        assert xcom["stable_seconds"] >= 1.0
        assert stored["try_number"] == 1 and stored["path"] == str(target)
        assert stored["state"]["since"]["at"].endswith("+00:00")
        assert stored["state"]["checksum"] == sha256(data)
        assert stored["state"]["checksum_poll"] == 2

    @pytest.mark.parametrize(
        ("mode", "deferrable"), [("reschedule", False), ("poke", True)], ids=["reschedule", "deferrable"]
    )
    def test_expected_checksum_from_sidecar(
        self, remote_dir: Path, airflow_db: Path, mode: str, deferrable: bool
    ) -> None:
        data = random_bytes(200_000)
        target = remote_dir / "report.csv"
        write_file(target, data)
        write_sidecar(target, sidecar_for(target, data))

        dag_run, xcom, reschedules, _ = run_dag(
            airflow_db,
            path=str(target),
            stable_for=0,
            poke_interval=0.2,
            mode=mode,
            deferrable=deferrable,
            expected_checksum_from="sidecar",
        )

        assert dag_run.state == "success"
        assert xcom is not None and xcom["checksum"] == sha256(data)
        if mode == "reschedule":
            # The first poke observes; the next finds it stable, reads the sidecar, hashes once and fires.
            assert (reschedules, xcom["polls"]) == (1, 2)

    def test_deferrable_through_the_triggerer_path(self, remote_dir: Path, airflow_db: Path) -> None:
        """Trigger arguments go through Airflow serde, the event back into ``execute_complete``."""
        data = random_bytes(200_000)
        target = remote_dir / "deferred_e2e.bin"
        write_file(target, data)

        dag_run, xcom, reschedules, _ = run_dag(
            airflow_db, path=str(target), stable_for=0, poke_interval=0.2, mode="poke", deferrable=True
        )

        assert dag_run.state == "success"
        assert xcom is not None and xcom["checksum"] == sha256(data)
        assert reschedules == 0
        assert xcom["polls"] >= 3  # one synchronous check in execute, the rest in the trigger
