# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The inbound asset example with ``dag.test()``: claimed files are taken, landed in S3 verified, archived.

``dag.test()`` runs no triggerer, so no event arrives: the run takes the files waiting in the claim
directory (the path a run also takes for events the scheduler left without a run). The whole chain with
a real triggerer and events is in tests/integration/deployment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.example_dags.conftest import dags_folder
from tests.integration.example_dags.test_example_dags import load_dag, run
from tests.integration.inbound.helpers import keys, open_uploads, s3_bytes, sha
from tests.integration.reports import read_report

__all__ = ["dags_folder"]


def test_claimed_files_land_in_s3_and_are_archived(
    dags_folder: Path, monkeypatch: pytest.MonkeyPatch, s3: Any, bucket: str, remote_dir: Path
) -> None:
    dirs = {name: remote_dir / name for name in ("inbound", "claimed", "processed", "archive")}
    for path in dirs.values():
        path.mkdir()
        os.chown(path, *(remote_dir.stat().st_uid, remote_dir.stat().st_gid))
    for name, path in dirs.items():
        monkeypatch.setenv(f"S3SFTP_INBOUND_{'CLAIM' if name == 'claimed' else name.upper()}_DIR", str(path))
    monkeypatch.setenv("S3SFTP_INBOUND_BUCKET", bucket)
    monkeypatch.setenv("S3SFTP_INBOUND_PREFIX", "partner/")
    files = {f"{n}.csv": os.urandom(1000 * n) for n in (1, 2, 3)}
    for name, data in files.items():
        (dirs["claimed"] / name).write_bytes(data)
    (dirs["claimed"] / ".partial.csv").write_bytes(b"not claimed by the trigger")

    dag_run, xcoms = run(load_dag(dags_folder, "example_sftp_inbound_asset"), {})

    assert dag_run.state == "success"
    report = xcoms["land"]["report"]
    assert report.startswith(f"s3://{bucket}/reports/example_sftp_inbound_asset/")
    assert keys(s3, bucket) == sorted([*(f"partner/{name}" for name in files), report.split("/", 3)[3]])
    assert xcoms["land"]["count"] == xcoms["land"]["transferred"] == len(files)
    records = read_report(s3, bucket, report.split("/", 3)[3])
    landed = {Path(record["sftp_path"]).name: record for record in records}
    assert len(records) == len(files)
    for name, data in files.items():
        assert s3_bytes(s3, bucket, f"partner/{name}") == data
        assert landed[name]["checksum"] == sha(data)
        assert landed[name]["moved_to"] == str(dirs["archive"] / name)
        assert (dirs["archive"] / name).read_bytes() == data
    assert sorted(p.name for p in dirs["claimed"].iterdir()) == [".partial.csv"]
    assert list(dirs["processed"].iterdir()) == []
    assert open_uploads(s3, bucket) == []
