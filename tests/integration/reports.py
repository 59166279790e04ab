# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Read the JSON Lines reports that ``report=`` writes into S3."""

from __future__ import annotations

import json
from typing import Any


def read_report(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """Return the records of the JSON Lines report ``s3://bucket/key``, one per line."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in body.splitlines()]
