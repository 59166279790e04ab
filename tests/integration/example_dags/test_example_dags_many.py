# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The many-object example DAGs (one task with a prefix, one mapped task per key) run end to end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.example_dags.test_example_dags import (
    DS,
    EXAMPLE_DAGS,
    LOGICAL_DATE,
    fast_sensors,  # noqa: F401 (a fixture)
    load_dag,
)
from tests.integration.reports import read_report

PREFIX_DAG_ID = "example_s3_to_sftp_prefix"
MAPPED_DAG_ID = "example_s3_to_sftp_mapped"
# Below feeds/<ds>/: three CSVs (one nested, one large enough for two read chunks), one object that
# does not match, and a CSV of another day that is outside the prefix.
MATCHING = ("orders.csv", "customers.csv", "eu/returns.csv")


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once instead of after retry delays (read when the DAG files are parsed)."""
    monkeypatch.setenv("S3SFTP_DELIVERY_RETRIES", "0")


@pytest.fixture
def exports(s3: Any, bucket: str) -> dict[str, bytes]:
    """Seed the day's export in moto; return the content of each matching key, by path below the prefix."""
    content = {
        "orders.csv": b"order_id,amount\n" + os.urandom(5 * 1024 * 1024 + 3),
        "customers.csv": b"customer_id,name\n" + os.urandom(70_001),
        "eu/returns.csv": b"return_id,order_id\n" + os.urandom(12_345),
    }
    for relative, data in content.items():
        extra = {"ChecksumAlgorithm": "SHA256"} if relative == "customers.csv" else {}
        s3.put_object(Bucket=bucket, Key=f"feeds/{DS}/{relative}", Body=data, **extra)
    s3.put_object(Bucket=bucket, Key=f"feeds/{DS}/README.txt", Body=b"not a csv")
    s3.put_object(Bucket=bucket, Key="feeds/2024-04-30/orders.csv", Body=b"yesterday")
    return content


def run(dag: Any, conf: dict[str, Any]) -> tuple[Any, dict[tuple[str, int], Any]]:
    """``dag.test()`` one run; return it and every ``return_value`` XCom by ``(task_id, map_index)``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = dag.test(logical_date=LOGICAL_DATE, run_conf=conf)
    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag.dag_id, key="return_value")
        ).all()
        xcoms = {(row.task_id, row.map_index): XComModel.deserialize_value(row) for row in rows}
    return dag_run, xcoms


def task_instances(dag_run: Any, task_id: str) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(TaskInstance)
                .where(
                    TaskInstance.dag_id == dag_run.dag_id,
                    TaskInstance.run_id == dag_run.run_id,
                    TaskInstance.task_id == task_id,
                )
                .order_by(TaskInstance.map_index)
            ).all()
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Return every file below ``root`` (hidden ones too) by relative path."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def test_many_object_dags_import_cleanly() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))

    assert bag.import_errors == {}
    for dag_id in (PREFIX_DAG_ID, MAPPED_DAG_ID):
        dag = bag.dags[dag_id]
        assert dag.doc_md, f"{dag_id} has no documentation"
        assert "example" in dag.tags
        assert set(dag.params.keys()) >= {"bucket", "prefix", "target_dir"}
    prefix_deliver = bag.dags[PREFIX_DAG_ID].get_task("deliver")
    assert (prefix_deliver.if_exists, prefix_deliver.sidecar, prefix_deliver.done_marker) == (
        "skip_identical",
        True,
        ".done",
    )
    assert prefix_deliver.max_concurrency == 4
    prefix_confirm = bag.dags[PREFIX_DAG_ID].get_task("confirm")
    assert type(prefix_confirm).__name__ == "MappedOperator"
    assert prefix_confirm.partial_kwargs["deferrable"] is True
    mapped_deliver = bag.dags[MAPPED_DAG_ID].get_task("deliver")
    assert type(mapped_deliver).__name__ == "MappedOperator"
    assert mapped_deliver.partial_kwargs["if_exists"] == "skip_identical"
    assert set(mapped_deliver.expand_input.value) == {"s3_key"}


def confirmed(dag_run: Any, xcoms: dict[tuple[str, int], Any]) -> dict[str, str]:
    """Return the checksum each mapped ``confirm`` sensor proved, by path; every instance must succeed."""
    instances = task_instances(dag_run, "confirm")
    assert {ti.state for ti in instances} == {"success"}
    return {
        xcoms[("confirm", ti.map_index)]["path"]: xcoms[("confirm", ti.map_index)]["checksum"]
        for ti in instances
    }


def test_prefix_dag_delivers_matching_objects_and_skips_them_all_on_rerun(
    dags_folder: Path,
    no_retries: None,
    fast_sensors: None,  # noqa: F811 (the fixture)
    bucket: str,
    exports: dict[str, bytes],
    remote_dir: Path,
    s3: Any,
) -> None:
    dag = load_dag(dags_folder, PREFIX_DAG_ID)
    conf = {"bucket": bucket, "prefix": "feeds", "target_dir": str(remote_dir / "out")}

    dag_run, xcoms = run(dag, conf)

    assert dag_run.state == "success"
    day = remote_dir / "out" / DS
    expected = {}
    for relative, data in exports.items():
        name = relative.rsplit("/", 1)[-1]
        expected[relative] = data
        expected[f"{relative}.sha256"] = f"{sha256(data)}  {name}\n".encode()
        expected[f"{relative}.done"] = b""
    landed = tree(day)
    # Exactly the CSVs, nested one at its relative path, each with sidecar and marker; nothing else
    # (no README.txt, no other day, no temp file).
    assert sorted(landed) == sorted(expected)
    for relative, data in expected.items():
        assert sha256(landed[relative]) == sha256(data), relative
    first = xcoms[("deliver", -1)]
    assert (first["count"], first["transferred"], first["skipped"]) == (3, 3, 0)
    assert first["bytes"] == sum(len(data) for data in exports.values())
    assert first["failed"] == [] and first["failed_count"] == 0
    assert first["report"].startswith(f"s3://{bucket}/reports/{PREFIX_DAG_ID}/")
    first_records = read_report(s3, bucket, first["report"].split("/", 3)[3])
    assert {record["s3_uri"] for record in first_records} == {
        f"s3://{bucket}/feeds/{DS}/{relative}" for relative in exports
    }
    assert xcoms[("summarize", -1)] == {
        "count": 3,
        "transferred": 3,
        "skipped": 0,
        "bytes": first["bytes"],
        "files": sorted(str(day / relative) for relative in exports),
    }
    # One mapped sensor per delivered file, each proving the file reads back to the delivery's checksum.
    proved = {str(day / relative): f"sha256:{sha256(data)}" for relative, data in exports.items()}
    assert confirmed(dag_run, xcoms) == proved
    mtimes = {path: path.stat().st_mtime_ns for path in day.rglob("*")}

    dag_run, xcoms = run(dag, conf)

    assert dag_run.state == "success"
    summary = xcoms[("summarize", -1)]
    assert (summary["count"], summary["transferred"], summary["skipped"], summary["bytes"]) == (3, 0, 3, 0)
    second = xcoms[("deliver", -1)]
    assert second["report"] != first["report"]  # one report per run
    second_records = read_report(s3, bucket, second["report"].split("/", 3)[3])
    assert len(second_records) == 3 and all(record["skipped"] for record in second_records)
    assert {record["checksum"] for record in second_records} == {
        f"sha256:{sha256(data)}" for data in exports.values()
    }
    assert confirmed(dag_run, xcoms) == proved  # skipped files are identical, so they are proved too
    # Nothing was rewritten: same files, same bytes, same modification times.
    assert tree(day) == landed
    assert {path: path.stat().st_mtime_ns for path in day.rglob("*")} == mtimes


def test_mapped_dag_delivers_one_object_per_mapped_task_instance(
    dags_folder: Path, no_retries: None, bucket: str, exports: dict[str, bytes], remote_dir: Path
) -> None:
    dag = load_dag(dags_folder, MAPPED_DAG_ID)

    dag_run, xcoms = run(dag, {"bucket": bucket, "prefix": "feeds", "target_dir": str(remote_dir / "out")})

    assert dag_run.state == "success"
    keys = sorted(f"feeds/{DS}/{relative}" for relative in exports)
    assert xcoms[("list_keys", -1)] == keys
    instances = task_instances(dag_run, "deliver")
    assert [ti.map_index for ti in instances] == list(range(len(keys)))
    assert {ti.state for ti in instances} == {"success"}
    assert [ti.rendered_map_index for ti in instances] == keys
    records = [xcoms[("deliver", index)] for index in range(len(keys))]
    assert [record["s3_uri"] for record in records] == [f"s3://{bucket}/{key}" for key in keys]
    # One object per instance, each under its base name (the nested key too), with sidecar and marker.
    day = remote_dir / "out" / DS
    landed = tree(day)
    expected_names = set()
    for relative, data in exports.items():
        name = relative.rsplit("/", 1)[-1]
        expected_names |= {name, f"{name}.sha256", f"{name}.done"}
        assert sha256(landed[name]) == sha256(data), name
        assert landed[f"{name}.sha256"] == f"{sha256(data)}  {name}\n".encode()
        assert landed[f"{name}.done"] == b""
    assert set(landed) == expected_names
    assert xcoms[("report", -1)] == {
        "count": 3,
        "transferred": 3,
        "skipped": 0,
        "bytes": sum(len(data) for data in exports.values()),
        "files": sorted(str(day / relative.rsplit("/", 1)[-1]) for relative in exports),
    }
