# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The sensor and both triggers with a range manifest as the expected content, against a real OpenSSH."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from airflow_s3sftp.core.manifest import RangeHasher, manifest_path, render_manifest
from airflow_s3sftp.exceptions import ManifestMismatchError, VerificationError
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor
from airflow_s3sftp.triggers.sftp import SFTPFileStableTrigger
from tests.conftest import open_sftp
from tests.integration.sftp_writers import random_bytes
from tests.integration.triggers.test_sftp_event import make_trigger, watch
from testservers.processes import SSHDServer

STABLE_FOR = 0.5
POKE = 0.25
RANGE = 64 * 1024
SIZE = 10 * RANGE + 5000  # ten full ranges and a short eleventh
NO_CONTEXT: Any = {}


def make_sensor(path: Path | str, **kwargs: Any) -> SFTPFileStableSensor:
    kwargs.setdefault("stable_for", STABLE_FOR)
    kwargs.setdefault("poke_interval", POKE)
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("deferrable", False)
    kwargs.setdefault("expected_checksum_from", "manifest")
    return SFTPFileStableSensor(task_id=f"wait_{time.monotonic_ns()}", path=str(path), **kwargs)


def deliver(sshd: SSHDServer, target: Path, data: bytes, range_size: int = RANGE) -> str:
    """Write ``target`` and its manifest over SFTP, as a delivery would; return the manifest text."""
    hasher = RangeHasher(range_size)
    hasher.update(data)
    text = render_manifest(hasher.manifest(target.name))
    client, sftp = open_sftp(sshd)
    try:
        sftp.putfo(io.BytesIO(data), str(target))
        sftp.putfo(io.BytesIO(text.encode()), manifest_path(str(target)))
    finally:
        sftp.close()
        client.close()
    return text


def flip(path: Path, offset: int) -> None:
    """Alter one byte in place, as a disk fault or a stray edit after delivery would."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_trigger(trigger: SFTPFileStableTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_a_delivered_file_fires_with_its_whole_digest(sshd: SSHDServer, remote_dir: Path) -> None:
    data = random_bytes(SIZE)
    target = remote_dir / "report.csv"
    deliver(sshd, target, data)

    result = make_sensor(target).execute(NO_CONTEXT)

    assert result["checksum"] == f"sha256:{sha(data)}"
    assert result["size"] == SIZE


@pytest.mark.parametrize("offset", [0, 7 * RANGE + 123, SIZE - 1])
def test_a_file_altered_after_delivery_fails_naming_its_one_bad_range(
    sshd: SSHDServer, remote_dir: Path, offset: int
) -> None:
    data = random_bytes(SIZE)
    target = remote_dir / "report.csv"
    deliver(sshd, target, data)
    flip(target, offset)
    index = offset // RANGE
    start, stop = index * RANGE, min((index + 1) * RANGE, SIZE)
    started = time.monotonic()

    with pytest.raises(ManifestMismatchError) as err:
        make_sensor(target, timeout=60).execute(NO_CONTEXT)

    assert time.monotonic() - started < 10, "a mismatch fails at once, not at the timeout"
    altered = target.read_bytes()
    assert err.value.bad_ranges == 1
    assert err.value.first == (
        f"range {index} bytes {start}-{stop - 1}: expected {sha(data[start:stop])}, "
        f"actual {sha(altered[start:stop])} (digest differs)"
    )
    assert (err.value.expected, err.value.actual) == (
        f"sha256:{sha(data[start:stop])}",
        f"sha256:{sha(altered[start:stop])}",
    )
    assert str(target) in str(err.value) and err.value.first in str(err.value)


def test_a_truncated_file_fails_naming_the_short_range(sshd: SSHDServer, remote_dir: Path) -> None:
    data = random_bytes(SIZE)
    target = remote_dir / "report.csv"
    deliver(sshd, target, data)
    with target.open("r+b") as handle:
        handle.truncate(3 * RANGE + 10)

    with pytest.raises(ManifestMismatchError) as err:
        make_sensor(target).execute(NO_CONTEXT)

    assert err.value.first.startswith(f"range 3 bytes {3 * RANGE}-{4 * RANGE - 1}: ")
    assert err.value.first.endswith(f"(short: the file ends at byte {3 * RANGE + 10})")
    assert err.value.bad_ranges == 8  # the short range and the seven missing after it


def test_extra_bytes_fail(sshd: SSHDServer, remote_dir: Path) -> None:
    data = random_bytes(SIZE)
    target = remote_dir / "report.csv"
    deliver(sshd, target, data)
    with target.open("ab") as handle:
        handle.write(b"appended")

    with pytest.raises(ManifestMismatchError) as err:
        make_sensor(target).execute(NO_CONTEXT)

    assert err.value.first.startswith(f"range 11 bytes {SIZE}-{SIZE + 7}: expected -")
    assert err.value.bad_ranges == 1


def test_no_manifest_yet_is_not_yet(sshd: SSHDServer, remote_dir: Path) -> None:
    target = remote_dir / "report.csv"
    target.write_bytes(random_bytes(1000))

    with pytest.raises(AirflowSensorTimeout):
        make_sensor(target, stable_for=0, timeout=2.0).execute(NO_CONTEXT)


def test_a_malformed_manifest_fails_naming_its_line(sshd: SSHDServer, remote_dir: Path) -> None:
    data = random_bytes(SIZE)
    target = remote_dir / "report.csv"
    text = deliver(sshd, target, data)
    Path(manifest_path(str(target))).write_text(text.replace("  3\n", "  4\n"))

    with pytest.raises(
        VerificationError, match="manifest is malformed: Manifest line 9: range index '4'"
    ) as err:
        make_sensor(target).execute(NO_CONTEXT)
    assert str(target) in str(err.value)


def test_manifest_needs_sha256(remote_dir: Path) -> None:
    with pytest.raises(ValueError, match="checksum must be 'sha256'"):
        make_sensor(remote_dir / "x", checksum="md5").execute(NO_CONTEXT)


def test_unreadable_manifest_names_it(sshd: SSHDServer, remote_dir: Path) -> None:
    target = remote_dir / "report.csv"
    deliver(sshd, target, b"data")
    Path(manifest_path(str(target))).chmod(0o000)

    with pytest.raises(PermissionError, match="Permission denied when reading") as err:
        make_sensor(target, stable_for=0).execute(NO_CONTEXT)
    assert manifest_path(str(target)) in str(err.value)


class TestDeferred:
    """The deferred trigger answers the same requests over asyncssh."""

    def defer(self, target: Path) -> tuple[SFTPFileStableSensor, SFTPFileStableTrigger]:
        sensor = make_sensor(target, deferrable=True, chunk_size=16 * 1024)
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(NO_CONTEXT)
        trigger = deferred.value.trigger
        assert isinstance(trigger, SFTPFileStableTrigger)
        assert trigger.policy["expected_checksum_from"] == "manifest"
        return sensor, trigger

    def test_a_good_file_fires(self, sshd: SSHDServer, remote_dir: Path) -> None:
        data = random_bytes(SIZE)
        target = remote_dir / "report.csv"
        deliver(sshd, target, data)
        sensor, trigger = self.defer(target)

        events = run_trigger(trigger)

        assert [event["status"] for event in events] == ["success"]
        result = sensor.execute_complete(NO_CONTEXT, events[0])
        assert result["checksum"] == f"sha256:{sha(data)}"

    def test_an_altered_file_is_one_error_event_naming_the_range(
        self, sshd: SSHDServer, remote_dir: Path
    ) -> None:
        data = random_bytes(SIZE)
        target = remote_dir / "report.csv"
        deliver(sshd, target, data)
        flip(target, 4 * RANGE + 1)
        sensor, trigger = self.defer(target)

        events = run_trigger(trigger)

        assert len(events) == 1
        event = events[0]
        assert (event["status"], event["error_type"], event["bad_ranges"]) == (
            "error",
            "ManifestMismatchError",
            1,
        )
        assert event["first"].startswith(f"range 4 bytes {4 * RANGE}-{5 * RANGE - 1}: ")
        with pytest.raises(ManifestMismatchError) as err:
            sensor.execute_complete(NO_CONTEXT, event)
        assert (err.value.first, err.value.expected, err.value.actual) == (
            event["first"],
            event["expected"],
            event["actual"],
        )
        assert str(err.value) == event["message"]

    def test_a_manifest_of_many_ranges_is_read_whole(self, sshd: SSHDServer, remote_dir: Path) -> None:
        """A manifest larger than one SFTP read (about 600 KiB here) is read to its end by both hooks."""
        data = random_bytes(512 * 1024)
        target = remote_dir / "report.csv"
        text = deliver(sshd, target, data, range_size=64)
        assert len(text) > 512 * 1024
        _, trigger = self.defer(target)

        events = run_trigger(trigger)

        assert events[0]["status"] == "success", events[0]
        assert events[0]["result"]["checksum"] == f"sha256:{sha(data)}"
        assert make_sensor(target).execute(NO_CONTEXT)["checksum"] == f"sha256:{sha(data)}"


def test_event_trigger_fires_for_good_files_and_logs_the_bad_range(
    sshd: SSHDServer, remote_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = random_bytes(SIZE), random_bytes(SIZE)
    deliver(sshd, remote_dir / "good.csv", good)
    deliver(sshd, remote_dir / "bad.csv", bad)
    flip(remote_dir / "bad.csv", 9 * RANGE)
    (remote_dir / "waiting.csv").write_bytes(b"no manifest yet")
    trigger = make_trigger(remote_dir / "*", expected_checksum_from="manifest")
    assert trigger.serialize()[1]["expected_checksum_from"] == "manifest"
    capsys.readouterr()

    events = watch(trigger, 6)

    # good.csv only: not bad.csv, not waiting.csv (no manifest), not the manifests themselves.
    assert [(event["path"], event["checksum"]) for event in events] == [
        (str(remote_dir / "good.csv"), f"sha256:{sha(good)}")
    ]
    # Airflow's structured logging writes the trigger's log lines to stdout.
    complaints = [line for line in capsys.readouterr().out.splitlines() if "Skipping bad.csv" in line]
    assert len(complaints) == 1, complaints  # once, not every poll
    assert f"range 9 bytes {9 * RANGE}-{10 * RANGE - 1}: " in complaints[0]
