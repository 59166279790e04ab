# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""``python -m demo --serve``: its printed exports deliver a file, and a signal stops it cleanly."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from tests.integration.test_demo import listening, session_members

REPO = Path(__file__).resolve().parents[2]
READY = "Serving until"


def read_until_ready(
    process: subprocess.Popen[str], timeout: float
) -> tuple[list[str], queue.Queue[str | None]]:
    """Return the lines printed up to the ready line, and the queue that receives the rest (None at EOF)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no {READY!r} line within {timeout} s; printed so far:\n" + "\n".join(seen))
        if line is None:
            pytest.fail("python -m demo --serve exited before it was ready:\n" + "\n".join(seen))
        seen.append(line)
        if READY in line:
            # The pump keeps draining the pipe, so the child never blocks on a full pipe.
            return seen, lines


def rest_of(lines: queue.Queue[str | None]) -> str:
    """Return what the child printed after its ready line, up to the end of its output."""
    rest = []
    while (line := lines.get(timeout=30)) is not None:
        rest.append(line)
    return "\n".join(rest)


def parse_exports(lines: list[str]) -> dict[str, str]:
    exported = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            exported[name] = value
    return exported


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_prints_exports_that_deliver_and_stops_cleanly_on_a_signal(
    stop_signal: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--serve"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines, more = read_until_ready(process, timeout=120)
        exported = parse_exports(lines)
        assert not [line for line in lines if "Warning" in line], lines  # nobody can act on them
        assert {"AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_SFTP_PARTNER", "AIRFLOW_CONN_SFTP_DEFAULT"} <= set(
            exported
        ), lines
        keys = [m.group(1) for line in lines if (m := re.search(r"s3://exports/(\S+\.csv\.gz)$", line))]
        root_match = next(m for line in lines if (m := re.search(r"serving (\S+) as /", line)))
        root = Path(root_match.group(1))
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "\n".join(lines[:-1]))]
        assert len(keys) == 1 and len(set(ports)) == 2, lines

        # Deliver the README's example object with nothing but the printed lines.
        for name, value in exported.items():
            monkeypatch.setenv(name, value)
        s3: Any = boto3.client(
            "s3",
            endpoint_url=exported["AWS_ENDPOINT_URL"],
            aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"],
            region_name=exported["AWS_DEFAULT_REGION"],
        )
        body = s3.get_object(Bucket="exports", Key=keys[0])["Body"].read()
        result = S3ToSFTPStreamOperator(
            task_id="deliver",
            s3_key=f"s3://exports/{keys[0]}",
            sftp_path="/inbound/",
            sftp_conn_id="sftp_partner",
        ).execute(context={})
        name = keys[0].rsplit("/", 1)[-1]
        assert result["sftp_path"] == f"/inbound/{name}"
        assert result["checksum"] == f"sha256:{hashlib.sha256(body).hexdigest()}"
        assert (root / "inbound" / name).read_bytes() == body
        assert all(listening(port) for port in ports)

        process.send_signal(stop_signal)
        process.wait(timeout=60)
        rest = rest_of(more)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, rest
    assert "Stopped" in rest
    assert not any(listening(port) for port in ports)
    assert not root.exists()
    assert session_members(process.pid) == []
