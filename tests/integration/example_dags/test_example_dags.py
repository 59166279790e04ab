# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The example DAGs import cleanly and run to success with ``dag.test()`` against real sshd and moto."""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testservers.processes import SSHDServer

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "example_dags"
EXPECTED_DAG_IDS = {
    "example_s3_to_sftp_delivery",
    "example_sftp_inbound_stable",
    "example_s3_to_sftp_prefix",
    "example_s3_to_sftp_mapped",
    "example_sftp_inbound_asset",
    "example_s3_to_sftp_sharded",
}
LOGICAL_DATE = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
DS = LOGICAL_DATE.strftime("%Y-%m-%d")


@pytest.fixture
def fast_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the sensors' stability window and poll interval (read when the DAG files are parsed)."""
    monkeypatch.setenv("S3SFTP_STABLE_FOR_SECONDS", "1")
    monkeypatch.setenv("S3SFTP_POKE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("S3SFTP_DELIVERY_RETRIES", "0")  # a failure shows at once, not after retry delays


def load_dag(folder: Path, dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def run(dag: Any, conf: dict[str, Any]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``dag.test()`` one run; return the run and every task's ``return_value`` XCom."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = dag.test(logical_date=LOGICAL_DATE, run_conf=conf)
    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag.dag_id, key="return_value")
        ).all()
        xcoms = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    return dag_run, xcoms


def test_every_example_dag_imports_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))

    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXPECTED_DAG_IDS
    for dag_id in EXPECTED_DAG_IDS:
        dag = bag.dags[dag_id]
        assert dag.doc_md, f"{dag_id} has no documentation"
        assert dag.tags and "example" in dag.tags


def test_delivery_dag_streams_confirms_and_reports(
    dags_folder: Path, fast_sensors: None, s3: Any, bucket: str, remote_dir: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket=bucket, Key=f"feeds/{DS}/orders.bin", Body=data)
    dag = load_dag(dags_folder, "example_s3_to_sftp_delivery")

    dag_run, xcoms = run(
        dag,
        {
            "bucket": bucket,
            "prefix": "feeds",
            "file_name": "orders.bin",
            "target_dir": str(remote_dir / "out"),
        },
    )

    assert dag_run.state == "success"
    landed = remote_dir / "out" / "orders.bin"
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in landed.parent.iterdir()) == ["orders.bin"]  # no temp file left behind
    report = xcoms["report"]
    assert report["s3_uri"] == f"s3://{bucket}/feeds/{DS}/orders.bin"
    assert report["sftp_path"] == str(landed)
    assert report["size"] == len(data)
    assert report["checksum"] == report["sensor_checksum"] == f"sha256:{digest}"
    assert report["checksum_verified"] is True
    assert report["mb_per_s"] > 0
    # The first poll (in the worker) cannot fire: the later ones ran in the trigger, after deferral.
    assert xcoms["confirm"]["path"] == str(landed)
    assert xcoms["confirm"]["polls"] >= 2


def test_inbound_dag_waits_for_a_growing_upload_then_summarizes_it(
    dags_folder: Path, fast_sensors: None, sshd: SSHDServer, remote_dir: Path
) -> None:
    rows = [f"{i},customer-{i % 97},{i * 3.5:.2f}\n".encode() for i in range(20_000)]
    content = b"order_id,customer,amount\n" + b"".join(rows)
    target = remote_dir / f"orders-{DS}.csv"
    stop = threading.Event()

    def upload_slowly() -> None:
        # A partner client writing in pieces, each pause shorter than the 1 s stability window: the
        # sensor must not fire on any of the partial sizes.
        with target.open("wb") as out:
            for start in range(0, len(content), len(content) // 6 + 1):
                if stop.is_set():
                    return
                out.write(content[start : start + len(content) // 6 + 1])
                out.flush()
                time.sleep(0.6)

    writer = threading.Thread(target=upload_slowly)
    writer.start()
    try:
        dag = load_dag(dags_folder, "example_sftp_inbound_stable")
        dag_run, xcoms = run(dag, {"inbound_dir": str(remote_dir)})
    finally:
        stop.set()
        writer.join()

    assert dag_run.state == "success"
    summary = xcoms["summarize"]
    assert summary["path"] == str(target)
    assert summary["size"] == len(content)
    assert summary["rows"] == len(rows)
    assert summary["columns"] == 3
    assert summary["header"] == "order_id,customer,amount"
    assert summary["checksum"] == f"sha256:{hashlib.sha256(content).hexdigest()}"
    # Two digests a poll apart, after the writer's last piece, in reschedule mode.
    assert xcoms["wait_for_upload"]["checksum"] == summary["checksum"]
    assert xcoms["wait_for_upload"]["polls"] >= 3
