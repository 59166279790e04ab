# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The operator's surface: explicit decisions, one ``tuning`` dict checked at parse time, ``manifest``."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_s3sftp.core.manifest import check_file, parse_manifest
from airflow_s3sftp.core.options import TUNING, DeliveryOptions
from airflow_s3sftp.exceptions import ArgumentTypeError, S3SFTPDeprecationWarning
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator

MiB = 1024 * 1024
WHERE = {"s3_key": "s3://b/k", "sftp_path": "/in/k"}

#: What users decide: the operator's explicit parameters (plus BaseOperator's own).
SURFACE = {
    "sftp_path",
    "s3_key",
    "s3_bucket",
    "s3_prefix",
    "s3_keys",
    "s3_glob",
    "s3_regex",
    "max_concurrency",
    "max_connections",
    "allow_empty",
    "aws_conn_id",
    "sftp_conn_id",
    "atomic",
    "checksum",
    "verify",
    "if_exists",
    "skip_identical_by",
    "create_dirs",
    "file_mode",
    "sidecar",
    "done_marker",
    "manifest",
    "report",
    "shard",
    "tuning",
}


def operator(**kwargs: Any) -> S3ToSFTPStreamOperator:
    return S3ToSFTPStreamOperator(task_id="t", **{**WHERE, **kwargs})


def test_the_signature_lists_the_decisions_and_one_tuning_dict() -> None:
    parameters = inspect.signature(S3ToSFTPStreamOperator.__init__).parameters
    named = {name for name, p in parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    assert named == SURFACE
    assert not named & set(TUNING)


def test_tuning_is_not_templated() -> None:
    assert "tuning" not in S3ToSFTPStreamOperator.template_fields


def test_tuning_reaches_the_delivery_options() -> None:
    op = operator(atomic=False, manifest=True, tuning={"chunk_size": 4 * MiB, "connection_retries": 9})
    assert op.delivery_options() == DeliveryOptions.build(
        atomic=False, manifest=True, tuning={"chunk_size": 4 * MiB, "connection_retries": 9}
    )


@pytest.mark.parametrize(
    ("tuning", "error", "message"),
    [
        ({"chunksize": MiB}, ValueError, r"tuning has an unknown key 'chunksize'; valid keys: channels, "),
        ({"atomic": False}, ValueError, r"'atomic' \(atomic is a parameter of its own"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be at least 1"),
        ({"connection_retry_delay": "1s"}, ArgumentTypeError, r"connection_retry_delay must be a number"),
        ("chunk_size=1", ArgumentTypeError, r"tuning must be a dict"),
    ],
)
def test_bad_tuning_fails_when_the_dag_is_parsed(tuning: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        operator(tuning=tuning)


class TestFormerKeywordArguments:
    """Each former tuning keyword argument still works for one release, warning where it went."""

    @pytest.mark.parametrize("name", sorted(TUNING))
    def test_every_former_keyword_lands_in_tuning_with_a_warning(self, name: str) -> None:
        value = DeliveryOptions.build(tuning={})  # the default of each key, a valid value
        group, field = TUNING[name]
        default = getattr(getattr(value, group), field)
        with pytest.warns(S3SFTPDeprecationWarning, match=rf"\({name}=\.\.\.\) is deprecated: pass tuning="):
            op = operator(**{name: default})
        assert op.tuning == {name: default}

    def test_the_value_is_kept_and_merged_with_tuning(self) -> None:
        with pytest.warns(S3SFTPDeprecationWarning, match=r"pass tuning=\{'chunk_size': 4194304\}"):
            op = operator(chunk_size=4 * MiB, tuning={"io_timeout": 5})
        options = op.delivery_options()
        assert (options.streaming.chunk_size, options.streaming.io_timeout) == (4 * MiB, 5)

    def test_a_bad_former_keyword_still_fails_at_parse_time(self) -> None:
        with pytest.warns(S3SFTPDeprecationWarning), pytest.raises(ValueError, match="chunk_size must be at"):
            operator(chunk_size=0)

    def test_the_same_knob_both_ways_is_refused(self) -> None:
        with (
            pytest.warns(S3SFTPDeprecationWarning),
            pytest.raises(ValueError, match="chunk_size given both as a keyword argument and in tuning"),
        ):
            operator(chunk_size=MiB, tuning={"chunk_size": 2 * MiB})

    def test_an_unknown_keyword_is_still_airflows_error(self) -> None:
        with pytest.raises(TypeError, match="chunksize"):
            operator(chunksize=MiB)


def test_manifest_true_writes_a_manifest_that_proves_the_file(s3: Any, bucket: str, remote_dir: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    s3.put_object(Bucket=bucket, Key="report.csv", Body=data)

    record = operator(
        s3_key="report.csv",
        s3_bucket=bucket,
        sftp_path=f"{remote_dir}/",
        manifest=True,
        done_marker=".done",
        tuning={"range_size": MiB},
    ).execute(context={})  # type: ignore[arg-type]

    final = remote_dir / "report.csv"
    assert final.read_bytes() == data
    assert record["checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
    manifest = parse_manifest((remote_dir / "report.csv.manifest").read_text())
    assert (manifest.size, manifest.range_size, len(manifest.ranges)) == (len(data), MiB, 4)
    with final.open("rb") as handle:
        assert check_file(handle, manifest) == []
    assert (remote_dir / "report.csv.done").exists()
