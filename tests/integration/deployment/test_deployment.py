# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Sensing under a real scheduler, triggerer, dag-processor and api-server (LocalExecutor, sqlite).

(a) the delivery DAG's deferrable sensor really defers to the triggerer and succeeds; (b) every file dropped
into a watched directory reaches exactly one run of the asset-scheduled DAG, claimed, with its checksum, and
lands in S3 as exactly one object equal to it, then archived; (c) a triggerer restart mid-watch neither loses
nor duplicates a file; (d) a triggerer killed between a claim and its event loses no file; (e) a file
replaced after its event lands nothing and fails its run clearly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.deployment.airflow_deployment import Deployment, running_deployment
from tests.integration.reports import read_report
from tests.integration.sftp_writers import SlowWriter, random_bytes, sha256
from testservers.processes import MotoServer, SSHDServer

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "example_dags"
DELIVERY = "example_s3_to_sftp_delivery"
INBOUND = "example_sftp_inbound_asset"


def owned(sshd: SSHDServer, path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
    return path


@pytest.fixture(scope="module")
def inbound_dirs(sshd: SSHDServer) -> dict[str, Path]:
    base = sshd.root / f"deployment-{uuid.uuid4().hex[:8]}"
    names = ("inbound", "claimed", "processed", "archive", "delivered")
    return {name: owned(sshd, base / name) for name in names}


INBOUND_BUCKET = f"landing-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def deployment(sshd: SSHDServer, moto: MotoServer, inbound_dirs: dict[str, Path]) -> Iterator[Deployment]:
    """One deployment for the module: the delivery and the inbound asset example DAGs, fast timings."""
    started = time.monotonic()
    moto.client().create_bucket(Bucket=INBOUND_BUCKET)
    env = {
        "S3SFTP_STABLE_FOR_SECONDS": "1",
        "S3SFTP_POKE_INTERVAL_SECONDS": "1",
        "S3SFTP_DELIVERY_RETRIES": "0",
        "S3SFTP_INBOUND_DIR": str(inbound_dirs["inbound"]),
        "S3SFTP_INBOUND_CLAIM_DIR": str(inbound_dirs["claimed"]),
        "S3SFTP_INBOUND_PROCESSED_DIR": str(inbound_dirs["processed"]),
        "S3SFTP_INBOUND_ARCHIVE_DIR": str(inbound_dirs["archive"]),
        "S3SFTP_INBOUND_BUCKET": INBOUND_BUCKET,
        "S3SFTP_INBOUND_PREFIX": "partner/",
        "S3SFTP_INBOUND_STABLE_FOR_SECONDS": "1",
        "S3SFTP_INBOUND_POKE_INTERVAL_SECONDS": "0.5",
    }
    with running_deployment(
        [EXAMPLE_DAGS / f"{DELIVERY}.py", EXAMPLE_DAGS / f"{INBOUND}.py"], env
    ) as deployment:
        deployment.wait_for(
            "both DAGs parsed and the asset watcher registered",
            lambda: (
                len(
                    deployment.query(
                        "SELECT dag_id FROM dag WHERE dag_id IN (?, ?) AND is_paused = 0", DELIVERY, INBOUND
                    )
                )
                == 2
                and deployment.query(
                    "SELECT id FROM trigger WHERE classpath LIKE '%SFTPFileStableEventTrigger'"
                )
            ),
            timeout=180,
        )
        deployment.wait_for("the api-server", lambda: deployment.api("GET", "/monitor/health"))
        print(f"\ndeployment ready in {time.monotonic() - started:.1f}s")
        yield deployment


TERMINAL = ("success", "failed")


def deployment_s3() -> Any:
    """A boto3 client on the tests' moto (the ``aws_default`` connection the deployment uses)."""
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=conn["extra"]["endpoint_url"],
        aws_access_key_id=conn["login"],
        aws_secret_access_key=conn["password"],
        region_name="us-east-1",
    )


def runs(deployment: Deployment, dag_id: str) -> list[tuple[str, str]]:
    return deployment.query("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id)


def taken(deployment: Deployment) -> list[dict[str, Any]]:
    """Every file the inbound DAG's runs took (``take``'s ``files``), over all runs so far."""
    files: list[dict[str, Any]] = []
    for (value,) in deployment.query(
        "SELECT value FROM xcom WHERE dag_id=? AND task_id='take' AND key='files'", INBOUND
    ):
        files += json.loads(value) or []
    return files


def processed(deployment: Deployment) -> list[dict[str, Any]]:
    """Every file the inbound DAG's runs landed in S3 (``land``'s report records, with ``name``), over all runs."""
    landed: list[dict[str, Any]] = []
    for run_id, _ in runs(deployment, INBOUND):
        summary = deployment.xcom(INBOUND, run_id, "land") or {}
        if not summary.get("report"):
            continue
        bucket, _, key = summary["report"][len("s3://") :].partition("/")
        landed += [
            {**record, "name": Path(record["sftp_path"]).name}
            for record in read_report(deployment_s3(), bucket, key)
            if "error" not in record
        ]
    return landed


def events_per_file(deployment: Deployment) -> Counter[str]:
    """Count the asset events the watcher fired, per source file name."""
    payloads = [
        json.loads(extra)["payload"] for (extra,) in deployment.query("SELECT extra FROM asset_event")
    ]
    return Counter(Path(payload["source_path"]).name for payload in payloads)


def watcher_owner(deployment: Deployment) -> int | None:
    """Return the id of the triggerer job running the inbound watcher, None while nobody runs it."""
    rows = deployment.query(
        "SELECT triggerer_id FROM trigger WHERE classpath LIKE '%SFTPFileStableEventTrigger'"
    )
    owners = {owner for (owner,) in rows if owner is not None}
    assert len(owners) <= 1, rows
    return owners.pop() if owners else None


def settled(deployment: Deployment, names: set[str]) -> bool:
    """Return whether every named file was processed and no inbound run is still going."""
    done = {item["name"] for item in processed(deployment)}
    return names <= done and all(state in TERMINAL for _, state in runs(deployment, INBOUND))


def test_a_delivery_dag_defers_its_sensor_to_the_triggerer(
    deployment: Deployment, s3: Any, bucket: str, inbound_dirs: dict[str, Path]
) -> None:
    started = time.monotonic()
    today = datetime.datetime.now(datetime.UTC)
    data = random_bytes(2 * 1024 * 1024 + 5)
    s3.put_object(Bucket=bucket, Key=f"feeds/{today:%Y-%m-%d}/orders.bin", Body=data)
    conf = {
        "bucket": bucket,
        "prefix": "feeds",
        "file_name": "orders.bin",
        "target_dir": str(inbound_dirs["delivered"]),
    }

    run = deployment.api(
        "POST", f"/dags/{DELIVERY}/dagRuns", {"logical_date": today.isoformat(), "conf": conf}
    )
    run_id = run["dag_run_id"]
    state = deployment.wait_for(
        "the delivery run to finish",
        lambda: next((s for r, s in runs(deployment, DELIVERY) if r == run_id and s in TERMINAL), None),
        timeout=150,
    )

    assert state == "success", deployment.query(
        "SELECT task_id, state FROM task_instance WHERE run_id = ?", run_id
    )
    deliver, confirm = (
        deployment.xcom(DELIVERY, run_id, "deliver"),
        deployment.xcom(DELIVERY, run_id, "confirm"),
    )
    assert deliver["checksum"] == confirm["checksum"] == sha256(data)
    assert (inbound_dirs["delivered"] / "orders.bin").read_bytes() == data
    # The sensor deferred: the triggerer ran its trigger and wrote the trigger's log beside the task's.
    logs = deployment.home / "logs"
    trigger_logs = [path for path in logs.rglob("*.log.trigger.*") if "task_id=confirm" in str(path)]
    assert trigger_logs, sorted(str(path) for path in logs.rglob("*") if path.is_file())
    assert any("is complete" in p.read_text(errors="replace") for p in trigger_logs)
    assert confirm["polls"] >= 2
    print(f"(a) delivery with a deferred sensor: {time.monotonic() - started:.1f}s")


def test_b_every_dropped_file_reaches_exactly_one_run(
    deployment: Deployment, sshd: SSHDServer, inbound_dirs: dict[str, Path]
) -> None:
    started = time.monotonic()
    inbound, claimed = inbound_dirs["inbound"], inbound_dirs["claimed"]
    slow = b"order_id,amount\n" + b"".join(f"{i},{i * 2}\n".encode() for i in range(40_000))
    quick = b"order_id,amount\n1,2\n"
    (inbound / "quick.csv").write_bytes(quick)
    # A burst: five files that become complete in the same poll fire five events back to back.
    burst = {f"burst-{i}.csv": random_bytes(10_000 + i) for i in range(5)}
    for name, data in burst.items():
        (inbound / name).write_bytes(data)
    # Six pieces, out of order, 0.4 s apart: each pause is shorter than the 1 s stability window.
    writer = SlowWriter(sshd, str(inbound / "slow.csv"), slow, pieces=6, pause=0.4, out_of_order=True)
    writer.start()
    writer.join_checked()

    files = {"slow.csv": slow, "quick.csv": quick, **burst}
    deployment.wait_for("every file processed", lambda: settled(deployment, set(files)), timeout=120)

    landed = {item["name"]: item for item in processed(deployment)}
    took = {item["name"]: item for item in taken(deployment)}
    counts = Counter(item["name"] for item in processed(deployment))
    assert all(counts[name] == 1 for name in files), counts
    assert all(Counter(item["name"] for item in taken(deployment))[name] == 1 for name in files)
    # The trigger itself fired exactly one event per file (however the scheduler batched them into runs).
    assert all(events_per_file(deployment)[name] == 1 for name in files), events_per_file(deployment)
    s3 = deployment_s3()
    for name, data in files.items():
        assert landed[name]["checksum"] == sha256(data)
        assert took[name]["claimed_path"] == str(claimed / name)
        if took[name]["from_event"]:  # the payload's checksum was the proof the upload was checked against
            assert took[name]["checksum"] == sha256(data)
        # Exactly one object, equal to the file, then the file archived.
        assert s3.get_object(Bucket=INBOUND_BUCKET, Key=f"partner/{name}")["Body"].read() == data
        assert (inbound_dirs["archive"] / name).read_bytes() == data
    assert sorted(inbound.iterdir()) == [] and sorted(claimed.iterdir()) == []
    assert sorted(inbound_dirs["processed"].iterdir()) == []
    assert s3.list_multipart_uploads(Bucket=INBOUND_BUCKET).get("Uploads", []) == []
    # The events carried the claimed path and the checksum the trigger proved.
    payloads = [
        json.loads(extra)["payload"] for (extra,) in deployment.query("SELECT extra FROM asset_event")
    ]
    by_source = {Path(p["source_path"]).name: p for p in payloads}
    assert by_source["slow.csv"]["checksum"] == sha256(slow) and by_source["slow.csv"]["size"] == len(slow)
    assert by_source["slow.csv"]["path"] == str(claimed / "slow.csv")
    assert all(state == "success" for _, state in runs(deployment, INBOUND))
    swept = sum(not item["from_event"] for item in taken(deployment))
    print(
        f"(b) {len(files)} files in {len(runs(deployment, INBOUND))} run(s), {swept} taken by a sweep "
        f"rather than their own event: {time.monotonic() - started:.1f}s"
    )


def test_c_a_triggerer_restart_neither_loses_nor_duplicates_a_file(
    deployment: Deployment, sshd: SSHDServer, inbound_dirs: dict[str, Path]
) -> None:
    started = time.monotonic()
    inbound = inbound_dirs["inbound"]
    before = Counter(item["name"] for item in processed(deployment))
    during = random_bytes(600_000)
    # 12 s of upload: a graceful stop of the triggerer takes seconds, and it must end before the upload does.
    writer = SlowWriter(sshd, str(inbound / "during.csv"), during, pieces=24, pause=0.5)
    writer.start()
    deployment.wait_for(
        "the upload under way while a triggerer runs the watcher",
        lambda: len(writer.sizes_seen) >= 2 and watcher_owner(deployment) is not None,
        timeout=30,
    )
    owner = watcher_owner(deployment)
    deployment.stop("triggerer")
    stopped = time.monotonic()
    # Mid-watch and mid-upload: the triggerer was gone while the file was still being written.
    assert writer.finished_at is None, "the upload ended before the triggerer did"
    assert (inbound / "during.csv").exists() and events_per_file(deployment)["during.csv"] == 0
    down = random_bytes(1000)
    (inbound / "down.csv").write_bytes(down)  # arrives while no triggerer runs
    writer.join_checked()
    deployment.start("triggerer")

    deployment.wait_for(
        "both files processed after the restart",
        lambda: settled(deployment, {"during.csv", "down.csv"}),
        timeout=150,
    )
    recovered = time.monotonic() - stopped
    assert watcher_owner(deployment) not in (None, owner)  # the new triggerer took the watcher over

    counts = Counter(item["name"] for item in processed(deployment))
    assert counts["during.csv"] == counts["down.csv"] == 1
    assert events_per_file(deployment)["during.csv"] == events_per_file(deployment)["down.csv"] == 1
    assert max(events_per_file(deployment).values()) == 1  # no file of (b) fired again after the restart
    assert counts - Counter({"during.csv": 1, "down.csv": 1}) == before  # nothing earlier came back
    landed = {item["name"]: item for item in processed(deployment)}
    assert landed["during.csv"]["checksum"] == sha256(during)
    assert landed["down.csv"]["checksum"] == sha256(down)
    assert (inbound_dirs["archive"] / "during.csv").read_bytes() == during
    s3 = deployment_s3()
    assert s3.get_object(Bucket=INBOUND_BUCKET, Key="partner/during.csv")["Body"].read() == during
    assert sorted(inbound.iterdir()) == []
    print(
        f"(c) triggerer restart: files processed {recovered:.1f}s after the stop, test {time.monotonic() - started:.1f}s"
    )


def test_d_a_triggerer_killed_between_a_claim_and_its_event_loses_no_file(
    deployment: Deployment, sshd: SSHDServer, inbound_dirs: dict[str, Path]
) -> None:
    """SIGKILL the triggerer the moment a file lands in ``claim_to``, before its event is stored (the
    window the docs name): the next run takes the file from ``claim_to``, exactly once."""
    started = time.monotonic()
    inbound, claimed = inbound_dirs["inbound"], inbound_dirs["claimed"]
    before = Counter(item["name"] for item in processed(deployment))
    deployment.wait_for("a triggerer running the watcher", lambda: watcher_owner(deployment) is not None)
    orphan = random_bytes(5000)
    (inbound / "orphan.csv").write_bytes(orphan)
    deadline = time.monotonic() + 60
    while not (claimed / "orphan.csv").exists():  # polled fast: the window is about one second
        assert time.monotonic() < deadline, "the watcher never claimed orphan.csv"
        time.sleep(0.005)
    deployment.stop("triggerer", signal.SIGKILL)
    assert events_per_file(deployment)["orphan.csv"] == 0, "the event was stored before the kill"
    deployment.start("triggerer")
    later = random_bytes(700)
    (inbound / "later.csv").write_bytes(later)  # its run also takes what waits in claim_to

    deployment.wait_for(
        "both files processed after the kill",
        lambda: settled(deployment, {"orphan.csv", "later.csv"}),
        timeout=150,
    )
    counts = Counter(item["name"] for item in processed(deployment))
    assert counts - Counter({"orphan.csv": 1, "later.csv": 1}) == before
    landed = {item["name"]: item for item in processed(deployment)}
    took = {item["name"]: item for item in taken(deployment)}
    assert landed["orphan.csv"]["checksum"] == sha256(orphan) and not took["orphan.csv"]["from_event"]
    assert events_per_file(deployment)["orphan.csv"] == 0
    assert (inbound_dirs["archive"] / "orphan.csv").read_bytes() == orphan
    assert (
        deployment_s3().get_object(Bucket=INBOUND_BUCKET, Key="partner/orphan.csv")["Body"].read() == orphan
    )
    assert sorted(inbound.iterdir()) == [] and sorted(claimed.iterdir()) == []
    print(f"(d) triggerer killed between a claim and its event: {time.monotonic() - started:.1f}s")


def test_e_a_file_replaced_after_its_event_lands_nothing_and_fails_clearly(
    deployment: Deployment, sshd: SSHDServer, inbound_dirs: dict[str, Path]
) -> None:
    started = time.monotonic()
    inbound = inbound_dirs["inbound"]
    proven, swapped = random_bytes(300_000), random_bytes(300_000)
    done = threading.Event()

    def event_stored() -> bool:
        with contextlib.suppress(sqlite3.OperationalError):  # the scheduler may hold the write lock
            return events_per_file(deployment)["replaced.csv"] >= 1
        return False

    def replace_once_claimed() -> None:
        # The moment its event (with the proven checksum) is stored, the partner overwrites the file,
        # wherever it is by then: claimed, or already taken by the run (the upload is a later task).
        while not done.is_set():
            if not event_stored():
                done.wait(0.02)
                continue
            for where in (inbound_dirs["claimed"], inbound_dirs["processed"]):
                if (where / "replaced.csv").exists():
                    temp = where / ".replaced.csv.tmp"
                    temp.write_bytes(swapped)
                    os.chown(temp, sshd.root.stat().st_uid, sshd.root.stat().st_gid)
                    os.replace(temp, where / "replaced.csv")
                    done.set()
                    return
            done.wait(0.005)

    watcher = threading.Thread(target=replace_once_claimed, daemon=True)
    watcher.start()
    (inbound / "replaced.csv").write_bytes(proven)
    deployment.wait_for("the file to be claimed and replaced", done.is_set, timeout=60)

    def failed_run() -> str | None:
        for value, run_id in deployment.query(
            "SELECT value, run_id FROM xcom WHERE dag_id=? AND task_id='take' AND key='files'", INBOUND
        ):
            if any(item["name"] == "replaced.csv" for item in json.loads(value)):
                state = dict(runs(deployment, INBOUND)).get(run_id)
                return run_id if state in TERMINAL else None
        return None

    run_id = deployment.wait_for("the run that took the replaced file to finish", failed_run, timeout=120)
    assert dict(runs(deployment, INBOUND))[run_id] == "failed"
    states = dict(deployment.query("SELECT task_id, state FROM task_instance WHERE run_id = ?", run_id))
    assert states == {"take": "success", "land": "failed"}, states
    log = "\n".join(
        path.read_text(errors="replace")
        for path in (deployment.home / "logs").rglob("*")
        if path.is_file() and "task_id=land" in str(path)
    )
    assert "ChecksumMismatchError" in log and "replaced.csv" in log and "expected_checksum" in log
    s3 = deployment_s3()
    assert "Contents" not in s3.list_objects_v2(Bucket=INBOUND_BUCKET, Prefix="partner/replaced.csv")
    assert s3.list_multipart_uploads(Bucket=INBOUND_BUCKET).get("Uploads", []) == []
    # Not archived: the replaced file waits in the processed directory for someone to look at it.
    assert (inbound_dirs["processed"] / "replaced.csv").read_bytes() == swapped
    assert not (inbound_dirs["archive"] / "replaced.csv").exists()
    print(
        f"(e) replaced after its event: nothing landed, run failed clearly: {time.monotonic() - started:.1f}s"
    )
