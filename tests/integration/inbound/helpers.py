# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""What the inbound tests share: running the operator, reading S3 back, asserting nothing is left open."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from airflow_s3sftp.operators.sftp_to_s3 import SFTPToS3StreamOperator

MiB = 1024 * 1024
NO_CONTEXT: Any = {}
SMALL_PARTS = {"part_size": 5 * MiB, "connection_retry_delay": 0.1}


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def bring_in(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("tuning", SMALL_PARTS)
    op = SFTPToS3StreamOperator(task_id="inbound", **kwargs)
    return op.execute(context=NO_CONTEXT)  # type: ignore[no-any-return]


def write_file(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    path.write_bytes(data)
    if owner is not None:
        os.chown(path, *owner)


def s3_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[no-any-return]


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
