# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The many-object progress line: objects done of the total, bytes, MB/s, ETA, throttled."""

from __future__ import annotations

import logging
import re

import pytest

from airflow_s3sftp.core.batch import BatchProgress

LINE = re.compile(
    r"(\d+) of (\d+) objects done \((\d+) failed\), (\d+) bytes, [\d.]+ MB/s, [\d.]+ objects/s, ETA \d+s"
)


def lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    return [m for r in caplog.records if (m := LINE.fullmatch(r.getMessage()))]


def test_every_finished_object_counts_and_the_last_one_leaves_the_line_to_the_summary(caplog):
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    progress = BatchProgress(total=3, interval=0.0)
    progress.finished(100)
    progress.finished(0, failed=True)
    progress.finished(50)
    assert [m.groups() for m in lines(caplog)] == [("1", "3", "0", "100"), ("2", "3", "1", "100")]


def test_lines_are_throttled(caplog):
    caplog.set_level(logging.INFO, logger="airflow_s3sftp")
    progress = BatchProgress(total=1000, interval=3600.0)
    for _ in range(999):
        progress.finished(10)
    assert lines(caplog) == []
